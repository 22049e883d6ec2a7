import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from contam import report
from contam.analysis import write_comparison
from contam.evaluate import write_metrics as write_record

ARMS = ["generated", "control"]
ORIGINS = {"generated": "generated", "control": "control"}


def write_metrics(tmp_path, source, ratio, model, seed, top1, processes=1, per_class=None):
    path = tmp_path / "runs" / f"{source}-{ratio}-{model}-{seed}" / "metrics.json"
    test = {"n": 100, "top1": top1, "top5": 1.0, "per_class_top1": per_class or {}}
    record = {"run": {"source": source, "ratio": str(ratio), "model": model, "seed": seed}, "processes": processes, "device": "cpu", "test": test, "ood": {}}
    write_record(record, path)
    return path


@pytest.fixture
def metric_files(tmp_path):
    files = []
    for seed, (base, gen, ctl) in enumerate([(0.90, 0.70, 0.88), (0.94, 0.74, 0.90)]):
        files.append(write_metrics(tmp_path, "real", 0.0, "m", seed, base))
        files.append(write_metrics(tmp_path, "generated", 1.0, "m", seed, gen))
        files.append(write_metrics(tmp_path, "control", 1.0, "m", seed, ctl))
    return files


def tidy_of(files):
    return report.tidy_metrics(report.read_metrics(files))


def comparison(source, n=400, **metrics):
    """A distribution-analysis record; metrics maps name -> (value, low, high)."""
    values = {"fid": (5.0, 4.0, 6.0), "precision": (0.7, 0.65, 0.75), "recall": (0.7, 0.65, 0.75), "density": (1.0, 0.9, 1.1), "coverage": (0.8, 0.75, 0.85), **metrics}
    whole = {"n_reference": n, "n_other": n, "kid": 0.01, "diversity_ratio": 1.0}
    for key, (value, low, high) in values.items():
        whole.update({key: value, f"{key}_ci95": [low, high]})
    whole.update({f"class_mean_{k}": values[k][0] for k in ("precision", "recall", "density", "coverage")})
    return {"source": source, "feature_extractor": "classifier", "reference": {"n_per_class": 40, "classes": 10}, "whole": whole, "per_class": [], "bootstrap": {"resamples": 200, "method": "percentile"}}


@pytest.fixture
def analysis_files(tmp_path):
    records = {
        "real-vs-real": comparison("real-vs-real"),
        # recall and coverage intervals wholly below the floor's
        "generated": comparison("generated", recall=(0.40, 0.35, 0.45), coverage=(0.50, 0.45, 0.55), fid=(20.0, 18.0, 22.0)),
        # point estimates below the floor, intervals overlapping it: no claim allowed
        "control": comparison("control", recall=(0.66, 0.60, 0.71), coverage=(0.78, 0.70, 0.83)),
    }
    files = []
    for name in ("generated", "control", "real-vs-real"):  # the floor is not first on purpose
        path = tmp_path / "analysis" / f"{name}.json"
        write_comparison(records[name], path)
        files.append(path)
    return files


def test_summary_maths(metric_files):
    tidy = tidy_of(metric_files)
    assert len(tidy) == 6 * 2  # top1 and top5 per run
    assert set(tidy["processes"]) == {1}
    summary = report.summarise(report.with_shared_baseline(tidy, ARMS))
    top1 = summary[(summary["metric"] == "top1")].set_index(["source", "ratio"])
    assert top1.loc[("generated", 1.0), "mean"] == pytest.approx(0.72)
    assert top1.loc[("generated", 1.0), "std"] == pytest.approx(np.std([0.70, 0.74], ddof=1))
    assert top1.loc[("generated", 1.0), "seeds"] == 2
    # The shared baseline appears in both arms, identically.
    assert top1.loc[("generated", 0.0), "mean"] == top1.loc[("control", 0.0), "mean"] == pytest.approx(0.92)
    assert "real" not in set(summary["source"])


def test_single_seed_has_no_spread(tmp_path):
    summary = report.summarise(tidy_of([write_metrics(tmp_path, "real", 0.0, "m", 0, 0.5)]))
    assert summary["std"].isna().all() and summary["seeds"].tolist() == [1, 1]
    assert report.mean_cell(0.5, float("nan"), 1) == "50.0 (n=1)"
    assert report.mean_cell(0.5, 0.0, 1) == "50.0 (n=1)"  # never "± 0.0"
    assert report.mean_cell(0.5, 0.02, 3) == "50.0 ± 2.0 (n=3)"


def test_accuracy_table_layout(metric_files):
    summary = report.summarise(report.with_shared_baseline(tidy_of(metric_files), ARMS))
    table = report.accuracy_table(summary)
    assert list(table.columns) == ["model", "source", "0 %", "100 %"]
    row = table[table["source"] == "generated"].iloc[0]
    assert row["100 %"] == "72.0 ± 2.8 (n=2)"


def test_accuracy_table_single_seed(tmp_path):
    files = [write_metrics(tmp_path, "real", 0.0, "m", 0, 0.9), write_metrics(tmp_path, "generated", 1.0, "m", 0, 0.7)]
    table = report.accuracy_table(report.summarise(report.with_shared_baseline(tidy_of(files), ["generated"])))
    assert table.iloc[0]["0 %"] == "90.0 (n=1)" and table.iloc[0]["100 %"] == "70.0 (n=1)"


def test_paper_reference_is_shipped():
    ref = report.paper_reference()
    assert list(ref["contamination_pct"]) == [0, 20, 40, 80, 100]
    assert ref["sd_imagenet_top1"].iloc[-1] == pytest.approx(15.7)


def test_paired_differences_with_interval(metric_files):
    diffs = report.paired_differences(tidy_of(metric_files), ARMS).set_index("source")
    # generated - baseline per seed: 0.70-0.90 = -0.20 and 0.74-0.94 = -0.20
    assert diffs.loc["generated", "difference"] == pytest.approx(-0.20)
    assert diffs.loc["generated", "ci95_low"] == pytest.approx(-0.20)  # no spread, zero width
    # control: -0.02 and -0.04 -> mean -0.03, t(0.975, 1) * sd / sqrt(2)
    half = 12.7062047 * np.std([-0.02, -0.04], ddof=1) / np.sqrt(2)
    assert diffs.loc["control", "difference"] == pytest.approx(-0.03)
    assert diffs.loc["control", "ci95_high"] == pytest.approx(-0.03 + half, rel=1e-5)


def test_generated_minus_control(metric_files, tmp_path):
    # A second generated source at 0.5 with one seed, and a third seed of control alone (unpaired).
    extra = [write_metrics(tmp_path, "sd", 0.5, "m", 0, 0.80), write_metrics(tmp_path, "control", 0.5, "m", 0, 0.85), write_metrics(tmp_path, "control", 1.0, "m", 7, 0.1)]
    origins = {**ORIGINS, "sd": "generated"}
    contrasts = report.generated_minus_control(tidy_of(metric_files + extra), origins)
    assert set(zip(contrasts["generated"], contrasts["control"], contrasts["ratio"])) == {("generated", "control", 1.0), ("sd", "control", 0.5)}
    assert 0.0 not in set(contrasts["ratio"])  # the shared baseline is no contrast
    row = contrasts[contrasts["generated"] == "generated"].iloc[0]
    # per seed: 0.70-0.88 = -0.18 and 0.74-0.90 = -0.16; seed 7 has no generated partner
    half = 12.7062047 * np.std([-0.18, -0.16], ddof=1) / np.sqrt(2)
    assert row["seeds"] == 2 and row["difference"] == pytest.approx(-0.17)
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((-0.17 - half, -0.17 + half), rel=1e-5)
    single = contrasts[contrasts["generated"] == "sd"].iloc[0]
    assert single["seeds"] == 1 and single["difference"] == pytest.approx(-0.05) and np.isnan(single["ci95_low"])
    shown = report.contrast_display(contrasts)
    assert shown.loc[shown["generated"] == "sd", "95 % interval"].item() == "n/a"


def test_headline_statements(metric_files, tmp_path):
    contrasts = report.generated_minus_control(tidy_of(metric_files), ORIGINS)
    [statement] = report.headline_statements(contrasts)
    assert "100 %" in statement and "-17.0 points" in statement and "n=2 seeds" in statement
    assert "excludes zero" in statement and "lower" in statement
    # Seeds that disagree in sign: the interval includes zero, and no direction is claimed.
    noisy = contrasts.assign(difference=0.01, ci95_low=-0.2, ci95_high=0.22)
    [statement] = report.headline_statements(noisy)
    assert "includes zero" in statement and "lower" not in statement and "higher" not in statement
    one = report.generated_minus_control(tidy_of([write_metrics(tmp_path, "generated", 0.5, "m", 0, 0.7), write_metrics(tmp_path, "control", 0.5, "m", 0, 0.8)]), ORIGINS)
    [statement] = report.headline_statements(one)
    assert "n=1" in statement and "no interval" in statement and "excludes" not in statement and "±" not in statement


def test_headline_uses_the_largest_ratio_per_model(tmp_path):
    files = []
    for seed in (0, 1):
        files += [write_metrics(tmp_path, "generated", 0.5, "a", seed, 0.8), write_metrics(tmp_path, "control", 0.5, "a", seed, 0.8 + 0.01 * seed)]
        files += [write_metrics(tmp_path, "generated", 1.0, "a", seed, 0.5 + 0.01 * seed), write_metrics(tmp_path, "control", 1.0, "a", seed, 0.8)]
        files += [write_metrics(tmp_path, "generated", 0.5, "b", seed, 0.6), write_metrics(tmp_path, "control", 0.5, "b", seed, 0.6)]
    statements = report.headline_statements(report.generated_minus_control(tidy_of(files), ORIGINS))
    assert len(statements) == 2
    assert statements[0].startswith("a, 100 %") and statements[1].startswith("b, 50 %")


def test_different_process_counts_are_refused(tmp_path, metric_files):
    odd = write_metrics(tmp_path, "generated", 0.5, "m", 0, 0.8, processes=2)
    other_model = write_metrics(tmp_path, "real", 0.0, "n", 0, 0.8, processes=4)  # another model may differ
    report.check_processes(report.read_metrics(metric_files + [other_model]))
    with pytest.raises(ValueError) as error:
        report.check_processes(report.read_metrics(metric_files + [odd, other_model]))
    message = str(error.value)
    assert "model m" in message and "processes=1" in message and "processes=2" in message
    assert str(odd) in message and str(metric_files[0]) in message and "model n" not in message
    out = tmp_path / "report"
    with pytest.raises(ValueError, match="different numbers of processes"):
        build(out, metric_files + [odd])
    assert not (out / "summary.csv").exists()  # refused before writing anything


def test_metrics_without_processes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="processes"):
        report.check_processes({"x.json": {"run": {"source": "real", "ratio": "0.0", "model": "m", "seed": 0}, "test": {"top1": 1, "top5": 1}}})


def test_arms_need_an_origin(tmp_path, metric_files):
    with pytest.raises(ValueError, match="origin"):
        build(tmp_path / "report", metric_files, origins={"generated": "generated"})


def test_classes_hurt_most():
    per_class = pd.DataFrame(
        [("real", 0.0, "m", 0, 0, 0.9), ("real", 0.0, "m", 0, 1, 0.8), ("generated", 0.5, "m", 0, 0, 0.1), ("generated", 1.0, "m", 0, 0, 0.5), ("generated", 1.0, "m", 0, 1, 0.7), ("generated", 1.0, "m", 1, 0, 0.5)],
        columns=["source", "ratio", "model", "seed", "label", "top1"],
    )
    hurt = report.classes_hurt_most(per_class, {0: "zero", 1: "one"})
    assert list(hurt["class"]) == ["zero", "one"]  # at the largest ratio, 1.0
    assert hurt["drop"].tolist() == pytest.approx([0.4, 0.1])
    assert hurt["runs_at_0"].tolist() == [1, 1] and hurt["runs_at_ratio"].tolist() == [2, 1]


def write_benchmarks(root, entries):
    files = []
    for name, seconds in entries:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{seconds}\t0:00:10\t100.4\t{seconds / 2}\n")
        files.append(path)
    return files


def test_compute_per_rule(tmp_path):
    root = tmp_path / "benchmarks" / "x"
    files = write_benchmarks(root, [("train/a/s0.tsv", 10.04), ("train/b/s1.tsv", 5.0), ("index_real.tsv", 1.0)])
    write_benchmarks(root, [("stale/old.tsv", 1000.0)])  # not listed: not counted
    table = report.compute_per_rule(files, root).set_index("rule")
    assert set(table.index) == {"train", "index_real"}
    assert table.loc["train", "jobs"] == 2 and table.loc["train", "wall_s"] == pytest.approx(15.04)
    assert table.loc["index_real", "cpu_s"] == 0.5
    with pytest.raises(ValueError, match="not under"):
        report.compute_per_rule(files, tmp_path / "elsewhere")


def test_compute_display_rounds_and_totals(tmp_path):
    root = tmp_path / "b"
    files = write_benchmarks(root, [("train/a.tsv", 10.04), ("train/b.tsv", 5.0), ("index_real.tsv", 1.0)])
    shown = report.compute_display(report.compute_per_rule(files, root))
    assert shown["rule"].tolist() == ["train", "index_real", "total"]
    assert shown["wall (s)"].tolist() == ["15.0", "1.0", "16.0"]
    assert shown["CPU (s)"].tolist() == ["7.5", "0.5", "8.0"]
    assert shown["peak memory (MB)"].tolist() == ["100", "100", "100"] and shown["jobs"].tolist() == ["2", "1", "3"]


def test_analysis_table_puts_the_floor_first(analysis_files):
    table = report.analysis_table(analysis_files, ORIGINS)
    assert table["source"].tolist() == ["real-vs-real", "generated", "control"]
    assert table["role"].tolist() == ["floor", "generated", "control"]
    assert table.loc[1, "recall_low"] == 0.35 and table.loc[1, "recall_high"] == 0.45
    assert table.loc[0, "n_reference"] == 400


def test_floor_statements_follow_the_intervals(analysis_files):
    table = report.analysis_table(analysis_files, ORIGINS)
    floor = table.iloc[0]
    generated, control = table.iloc[1], table.iloc[2]
    assert report.against_floor(generated, floor, "recall") == "below"
    assert report.against_floor(generated, floor, "fid") == "above"
    assert report.against_floor(control, floor, "recall") == "overlaps"  # lower point estimate, overlapping intervals
    text = report._floor_statement(generated, floor)
    assert "recall, coverage: below the floor" in text and "covers less of the real distribution" in text
    text = report._floor_statement(control, floor)
    assert "below" not in text and "covers less" not in text
    assert report.against_floor(generated.copy().replace({0.45: np.nan}), floor, "recall") == "no interval"


def test_quality_tables():
    quality = {
        "real": {"train": {"split": "train", "root": "/r", "found": 10, "indexed": 9, "skipped": 1, "skipped_examples": [["a.jpg", "truncated"]], "unknown_folders": ["x", "y"], "empty_classes": 0}, "test": {"found": 5, "indexed": 5, "skipped": 0}},
        "generated:sd": {"shards": 2, "images": 8, "rows": 10, "resumed": 3, "generated": 5, "regenerated": 1, "flagged": 2, "dropped_unsafe": 1, "dropped_invalid": 1},
    }
    (t1, indexed), (t2, generated) = report.quality_tables(quality)
    assert t1 == "Indexed image folders" and indexed["source"].tolist() == ["real: train", "real: test"]
    assert list(indexed.columns) == ["source", "found", "indexed", "skipped", "unknown folders", "empty classes"]
    assert indexed.iloc[0].tolist() == ["real: train", 10, 9, 1, 2, 0]
    assert generated.iloc[0]["flagged"] == 2 and generated.iloc[0]["dropped unsafe"] == 1 and "resumed" in generated.columns
    heading, body = report.quality_section(quality)
    assert "<details>" in body and "truncated" in body.split("<details>")[1]  # examples only in the collapsed block
    assert "<table>" in body.split("<details>")[0]


def build(out, metric_files, **changes):
    real = pd.DataFrame({"path": ["a.png"], "label": [0], "class_name": ["zero"], "split": ["train"]})
    arguments = dict(
        experiment="x", seed=0, arms=ARMS, origins=ORIGINS, report_settings={}, metric_files=[str(p) for p in metric_files],
        missing_runs=[], real_index=real, generated={}, quality={"real": {"found": 3, "indexed": 1, "skipped": 2}}, analysis_files=[],
        benchmark_files=[], benchmark_root=None, versions={"torch": "1"}, config_for_display={"experiment": "x"},
    )
    return report.build_report(out, **{**arguments, **changes})


def test_build_report(metric_files, analysis_files, tmp_path):
    out = tmp_path / "report"
    root = tmp_path / "benchmarks" / "x"
    benchmarks = write_benchmarks(root, [("train/a.tsv", 12.345), ("report.tsv", 1.0)])
    written = build(out, metric_files, missing_runs=["runs/missing/metrics.json"], analysis_files=analysis_files, benchmark_files=benchmarks, benchmark_root=root)
    assert Image.open(written["accuracy"]).size[0] > 800
    svg = (out / "figures" / "accuracy.svg").read_text()
    assert svg.startswith("<?xml") and "digitising uncertainty" in svg and "std over seeds" in svg and "n=2" in svg
    page = (out / "index.html").read_text()
    assert "figures/accuracy.png" in page and "72.0 ± 2.8 (n=2)" in page and "± 0.0" not in page
    assert "Incomplete study" in page and "runs/missing/metrics.json" in page
    assert "-20.0" in page  # the paired difference of the generated arm against ratio 0
    assert page.index("Headline") < page.index("About") and "excludes zero" in page.split("About")[0]
    assert "Generated minus control" in page and "-17.0" in page
    assert "digitising uncertainty" in page
    analysis = page.split("How contaminant images differ")[1]
    assert analysis.index("real-vs-real (floor") < analysis.index("generated (generated)") < analysis.index("control (control)") and "0.400 [0.350, 0.450]" in analysis and "5.0 [4.0, 6.0]" in analysis
    assert "12.3" in page and "12.345" not in page and ">total<" in page
    assert "<pre>" + "{" not in page.split("Data quality")[1].split("<details>")[0]  # a table, not a JSON dump
    assert "http://" not in page and "https://" not in page  # no CDN or remote assets
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 12 and set(summary["source"]) == {"real", "generated", "control"}
    assert list(summary.columns) == ["source", "ratio", "model", "seed", "processes", "test_set", "metric", "value"]


def test_build_report_single_seed(tmp_path):
    files = [write_metrics(tmp_path, "real", 0.0, "m", 0, 0.9), write_metrics(tmp_path, "generated", 1.0, "m", 0, 0.7), write_metrics(tmp_path, "control", 1.0, "m", 0, 0.8)]
    build(tmp_path / "report", files)
    page = (tmp_path / "report" / "index.html").read_text()
    assert "70.0 (n=1)" in page and "±" not in page.split("Runs")[0].replace("mean ± std", "")
    assert "n=1 seed" in page and "n/a" in page


def test_settings_come_from_arguments(metric_files, tmp_path):
    generated = pd.DataFrame({"path": [str(tmp_path / "g.png")], "label": [0]})
    real = pd.DataFrame({"path": [str(tmp_path / "r.png")], "label": [0], "class_name": ["zero"], "split": ["train"]})
    for name in ("g", "r"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png")
    written = build(tmp_path / "a", metric_files, real_index=real, generated={"generated": generated}, report_settings={"paper_reference": False, "samples_per_class": 1})
    narrow = Image.open(written["samples-generated"]).size[0]
    page = (tmp_path / "a" / "index.html").read_text()
    assert "digitising" not in page and "Config (for display only)" in page
    written = build(tmp_path / "b", metric_files, real_index=real, generated={"generated": generated}, report_settings={"samples_per_class": 3})
    assert Image.open(written["samples-generated"]).size[0] > narrow
    assert "digitising" in (tmp_path / "b" / "index.html").read_text()


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def test_no_table_is_wider_than_the_page(tmp_path, analysis_files):
    """At 1280 px, every table fits inside the page's column (none needs its scroll container)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    # A study as wide as the paper's: three arms, five ratios, two models, long names.
    origins = {"stable-diffusion-v1-5": "generated", "latent-diffusion-xl": "generated", "webvision-real": "control"}
    files = [write_metrics(tmp_path, "real", 0.0, model, seed, 0.9) for model in ("resnet50", "vit_small_patch16_224") for seed in (0, 1)]
    files += [write_metrics(tmp_path, s, r, model, seed, 0.8 - 0.1 * r) for s in origins for r in (0.2, 0.4, 0.8, 1.0) for model in ("resnet50", "vit_small_patch16_224") for seed in (0, 1)]
    quality = {"real": {"train": {"found": 1281167, "indexed": 1281167, "skipped": 12, "unknown_folders": [], "empty_classes": 0}, "test": {"found": 50000, "indexed": 50000, "skipped": 0}},
               **{f"generated:{s}": {"shards": 64, "images": 1281167, "rows": 1281167, "resumed": 1000, "generated": 1280167, "regenerated": 120, "flagged": 130, "dropped_unsafe": 10, "dropped_invalid": 3} for s in origins}}
    root = tmp_path / "bench"
    benchmarks = write_benchmarks(root, [("generate_shard/stable-diffusion-v1-5/shard-0.tsv", 123456.78), ("train/a.tsv", 9999.0)])
    build(tmp_path / "report", files, arms=sorted(origins), origins=origins, quality=quality, analysis_files=analysis_files, benchmark_files=benchmarks, benchmark_root=root)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_window_size(1280, 1000)
        driver.get((tmp_path / "report" / "index.html").as_uri())
        overflow = driver.execute_script(
            "document.querySelectorAll('details').forEach(d => d.open = true);"
            "const body = document.body.getBoundingClientRect();"
            "return Array.from(document.querySelectorAll('table')).map(t => [t.closest('section').id, t.getBoundingClientRect().width, t.getBoundingClientRect().right, body.right, t.parentElement.scrollWidth - t.parentElement.clientWidth])"
            ".filter(([id, width, right, bodyRight, scroll]) => right > bodyRight + 0.5 || scroll > 0);"
        )
        assert driver.execute_script("return document.querySelectorAll('table').length") >= 8
        assert not overflow, f"tables wider than the page (section, width, right edge, page right edge, overflow): {overflow}"
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        driver.quit()
