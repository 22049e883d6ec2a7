import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from contam import report_generative as rg
from contam.io import write_parquet

ARMS = ["generated", "control"]
ORIGINS = {"generated": "generated", "control": "control"}
REGIMES = ["replace", "accumulate"]
RATIOS = [0.0, 0.5, 1.0]
CLASSES = ["cat", "dog", "fox"]

# recall, coverage, tail recall per unit and seed (seed 0, seed 1). Against the
# real-only unit: generated at 100 % and replace at generation 2 drop clearly;
# control at 100 % and accumulate at generation 2 move both ways (interval spans 0).
DIVERSITY = {
    ("real", 0.0): (0.80, 0.82),
    ("generated", 0.5): (0.70, 0.70),
    ("generated", 1.0): (0.50, 0.54),
    ("control", 0.5): (0.80, 0.80),
    ("control", 1.0): (0.85, 0.75),
    ("replace", 1): (0.60, 0.62),
    ("replace", 2): (0.40, 0.43),
    ("accumulate", 1): (0.80, 0.80),
    ("accumulate", 2): (0.86, 0.74),
}
FID = {("generated", 0.5): (20.0, 24.0)}
FLOOR = {"fid": (1.2345, 1.0, 1.5), "recall": (0.777, 0.75, 0.80)}


def unit_record(study, track, level, seed, diversity, fid=10.0, arm=None, origin=None, ratio=None, regime=None, generation=None, drop=()):
    whole = {
        "fid": fid, "kid": 0.01, "precision": 0.7, "recall": diversity, "density": 1.0, "coverage": diversity, "tail_recall": diversity,
        "n_reference": 30, "n_other": 24, "diversity_ratio": 1.0, "class_mean_precision": 0.7, "class_mean_recall": diversity,
    }
    whole.update({f"{k}_ci95": [whole[k] - 0.05, whole[k] + 0.05] for k in ("fid", "precision", "recall", "density", "coverage")})
    for key in drop:
        whole.pop(key)
    return {
        "unit": {"study": study, "track": track, "level": level, "seed": seed, "arm": arm, "origin": origin, "ratio": ratio, "regime": regime, "generation": generation},
        "samples": {"n": 6, "per_class": 2, "index": "samples.parquet"},
        "class_accuracy": 0.9,
        "class_accuracy_per_class": [{"label": i, "accuracy": 0.9 - 0.1 * i, "n": 2} for i in range(3)],
        "whole": whole,
        "per_class": [{"label": i, "precision": 0.7, "recall": diversity - 0.05 * i, "density": 1.0, "coverage": diversity, "diversity_ratio": 1.0} for i in range(3)],
        "training_data": {"images": 60, "by_origin": {"real": 60}, "by_generation": {"0": 60}},
        "fit": {"steps": 10, "final_loss": 0.1, "init": "scratch"},
        "reference": {"n_per_class": 10, "classes": 3},
        "tail_fraction": 0.2,
    }


def write_png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def write_samples(root, key, shade):
    """Two 8x8 images per class and their index; returns the index path."""
    folder = root / "samples" / key
    rows = []
    for label in range(len(CLASSES)):
        for i in range(2):
            path = folder / f"{label}-{i}.png"
            write_png(path, (shade + 40 * label + i) % 256)
            rows.append({"path": str(path), "label": label})
    index = folder / "samples.parquet"
    write_parquet(pd.DataFrame(rows), index)
    return str(index)


def make_study(root, seeds=(0, 1), loop=True, drop_kid_for=None):
    """Metric files, sample indexes and the floor of a small study under ``root``."""
    files, samples = [], {}

    def add(study, track, level, seed, value_key, **unit):
        diversity = DIVERSITY[value_key][seed]
        fid = FID.get(value_key, (10.0, 10.0))[seed]
        drop = ("kid",) if (track, level, seed) == drop_kid_for else ()
        path = root / "generative" / track / level / f"seed-{seed}" / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(unit_record(study, track, level, seed, diversity, fid, drop=drop, **unit)))
        files.append(path)
        key = f"{track}/{level}/seed-{seed}"
        samples[key] = write_samples(root, key, 20 * len(samples))

    for seed in seeds:
        add("contamination", "real", "ratio-0.0", seed, ("real", 0.0), arm="real", origin="real", ratio=0.0)
        for arm in ARMS:
            for ratio in (0.5, 1.0):
                add("contamination", arm, f"ratio-{ratio}", seed, (arm, ratio), arm=arm, origin=ORIGINS[arm], ratio=ratio)
        if loop:
            for regime in REGIMES:
                for generation in (1, 2):
                    add("loop", regime, f"gen-{generation}", seed, (regime, generation), regime=regime, generation=generation)
    floor = unit_record("floor", "real-vs-real", None, None, 0.7)
    for key, (value, low, high) in FLOOR.items():
        floor["whole"][key], floor["whole"][f"{key}_ci95"] = value, [low, high]
    floor_file = root / "generative" / "real-vs-real.json"
    floor_file.write_text(json.dumps(floor))
    return files, floor_file, samples


def real_index(root):
    rows = []
    for label, name in enumerate(CLASSES):
        for i, split in enumerate(["train", "train", "train", "test"]):
            path = root / "real" / name / f"{i}.png"
            write_png(path, 200 - 30 * label - i)
            rows.append({"path": str(path), "label": label, "split": split, "class_name": name})
    return pd.DataFrame(rows)


def build(root, files, floor_file, samples, regimes=REGIMES, benchmark_files=(), benchmark_root=None):
    return rg.build_generative_report(
        root / "report", experiment="demo", seed=7, metric_files=files, floor_file=floor_file, sample_indexes=samples,
        real_index=real_index(root), regimes=regimes, ratios=RATIOS, arms=ARMS, origins=ORIGINS,
        report_settings={"samples_per_class": 2, "max_classes_shown": 2}, benchmark_files=list(benchmark_files), benchmark_root=benchmark_root,
        versions={"python": "3"}, config_for_display={"generative": {"regimes": list(regimes)}},
    )


def t_interval(values):
    values = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return values.mean(), values.mean() - half, values.mean() + half


def headline_items(page):
    block = re.search(r"<ul class='headline'>(.*?)</ul>", page, re.DOTALL).group(1)
    return re.findall(r"<li>(.*?)</li>", block, re.DOTALL)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("generative")
    files, floor_file, samples = make_study(root, drop_kid_for=("generated", "ratio-0.5", 1))
    bench = root / "benchmarks"
    tsv = bench / "fit_and_score_generative_model" / "generated" / "ratio-0.5" / "seed-0.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("s\th:m:s\tmax_rss\tcpu_time\n12.5\t0:00:12\t300.0\t11.0\n")
    written = build(root, files, floor_file, samples, benchmark_files=[tsv], benchmark_root=bench)
    return root, written


def test_files_written(study):
    root, written = study
    out = root / "report"
    expected = {
        "html": out / "generative.html", "summary": out / "generative_summary.csv", "ratio_figure": out / "figures" / "generative_ratio.png",
        "loop_figure": out / "figures" / "generative_loop.png",
        "samples_replace": out / "figures" / "generative_samples_replace.png", "samples_accumulate": out / "figures" / "generative_samples_accumulate.png",
    }
    assert written == expected
    for path in expected.values():
        assert path.stat().st_size > 0
    assert not (out / "index.html").exists()  # the classification report's page is not touched
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left behind
    with Image.open(expected["samples_replace"]) as image:
        assert image.height > 100


def test_summary_rows_and_maths(study):
    root, _ = study
    summary = pd.read_csv(root / "report" / "generative_summary.csv")
    keys = list(zip(summary["study"], summary["track"], summary["level"].fillna("")))
    assert keys == [
        ("floor", "real-vs-real", ""), ("contamination", "real", "ratio-0.0"),
        ("contamination", "generated", "ratio-0.5"), ("contamination", "generated", "ratio-1.0"),
        ("contamination", "control", "ratio-0.5"), ("contamination", "control", "ratio-1.0"),
        ("loop", "replace", "gen-1"), ("loop", "replace", "gen-2"), ("loop", "accumulate", "gen-1"), ("loop", "accumulate", "gen-2"),
    ]
    row = summary.set_index(["track", "level"]).loc[("generated", "ratio-0.5")]
    mean, low, high = t_interval([20.0, 24.0])
    assert (row["fid_mean"], row["fid_low"], row["fid_high"], row["fid_n"]) == pytest.approx((mean, low, high, 2))
    assert row["seeds"] == 2 and row["n_reference"] == 30 and row["n_other"] == 24
    # A metric missing from one seed's file is NaN there: mean of the other seed, no interval.
    assert row["kid_n"] == 1 and row["kid_mean"] == pytest.approx(0.01) and np.isnan(row["kid_low"])
    floor = summary.iloc[0]
    assert floor["fid_mean"] == pytest.approx(1.2345) and floor["recall_mean"] == pytest.approx(0.777)
    assert (summary.loc[summary["study"] != "floor", "recall_n"] == 2).all()


def test_page_sections_floor_and_headline(study):
    root, _ = study
    page = (root / "report" / "generative.html").read_text()
    for title in ("Headline: diversity of the generative models", "What this measures", "Contamination: metrics against the share of training images replaced",
                  "Loop: metrics against model generation", "Numbers (mean [95 % t-interval over seeds]; floor first)", "Samples across generations",
                  "Compute spent per rule", "Settings"):
        assert html_escape(title) in page, title
    assert "0.777 [0.750, 0.800]" in page  # the floor's recall with its interval
    assert "1.23 [1.00, 1.50]" in page  # the floor's FID
    assert "fit_and_score_generative_model" in page and "bottom 20 %" in page
    assert "recall drop [95 % t-interval]" in page
    assert "figures/generative_ratio.png" in page and "figures/generative_samples_accumulate.png" in page

    items = headline_items(page)
    generated = next(i for i in items if i.startswith("generated (generated images), 100 %"))
    _, low, high = t_interval([0.50 - 0.80, 0.54 - 0.82])
    assert f"recall -0.290 [{low:+.3f}, {high:+.3f}]: lower" in generated
    control = next(i for i in items if i.startswith("control (control images), 100 %"))
    assert "recall -0.010" in control and "not resolved (the interval contains 0)" in control and "lower" not in control
    replace = next(i for i in items if i.startswith("Loop regime replace, generation 2"))
    assert "recall -0.395" in replace and ": lower" in replace and "not resolved" not in replace
    accumulate = next(i for i in items if i.startswith("Loop regime accumulate, generation 2"))
    assert "not resolved (the interval contains 0)" in accumulate
    contrast = next(i for i in items if i.startswith("generated (generated) minus control (control)"))
    assert "100 %" in contrast


def html_escape(text):
    import html

    return html.escape(text)


def test_single_seed_without_loop(tmp_path):
    files, floor_file, samples = make_study(tmp_path, seeds=(0,), loop=False)
    written = build(tmp_path, files, floor_file, samples, regimes=[])
    assert set(written) == {"html", "summary", "ratio_figure"}
    summary = pd.read_csv(written["summary"])
    assert list(summary["study"]) == ["floor"] + ["contamination"] * 5
    assert (summary["recall_n"] == 1).all() and summary["recall_low"].isna().all()
    page = written["html"].read_text()
    assert "(n=1)" in page and "Loop: metrics" not in page and "Samples across generations" not in page
    generated = next(i for i in headline_items(page) if i.startswith("generated (generated images)"))
    assert "recall -0.300: not resolved (n=1: no interval)" in generated


def test_without_floor_or_units(tmp_path):
    written = build(tmp_path, [], None, {}, regimes=REGIMES)
    assert set(written) == {"html", "summary"}
    assert "No paired change yet" in written["html"].read_text()


def test_refuses_undeclared_units(tmp_path):
    files, floor_file, samples = make_study(tmp_path, seeds=(0,), loop=True)
    with pytest.raises(ValueError, match="regime 'accumulate' is not one of"):
        build(tmp_path, files, floor_file, samples, regimes=["replace"])
    assert not (tmp_path / "report").exists()


def test_grid_is_reproducible(tmp_path):
    rows = [("real", pd.DataFrame({"path": [], "label": []}))]
    index = pd.read_parquet(write_samples(tmp_path, "a", 0))
    rows.append(("generation 1", index))
    names = {0: "cat", 1: "dog"}
    rg.generation_grid(rows, names, [0, 1], 1, 3, tmp_path / "one.png", "t")
    rg.generation_grid(rows, names, [0, 1], 1, 3, tmp_path / "two.png", "t")
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()
