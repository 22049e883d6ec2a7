"""The workflow as users run it: lint, dry runs, config errors, and a whole tiny study."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, job_counts, run_snakemake, write_yaml
from contam.analysis import read_comparison
from contam.evaluate import read_metrics
from contam.io import file_sha256, read_parquet

def snakemake(*args, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_snakemake(*args, cwd=cwd, check=check, env=env)


def test_lint_is_clean(repo):
    result = snakemake("--lint", cwd=repo)
    assert "Congratulations" in result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_snakefmt_is_clean(repo):
    subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/rules"], cwd=repo, check=True, capture_output=True)


def test_imagenet_config_plans_without_data(tmp_path):
    start = time.perf_counter()
    result = snakemake("-n", "--quiet", "rules", "--configfile", str(REPO / "config" / "imagenet.yaml"), cwd=tmp_path)
    seconds = time.perf_counter() - start
    counts = job_counts(result.stdout)
    print(f"imagenet dry run: {sum(counts.values())} jobs planned in {seconds:.1f} s")
    assert counts["generate_shard"] == 2 * 260
    assert counts["train"] == counts["evaluate"] == 3 * 2 * (1 + 4 * 3)  # models x seeds x (shared 0 + 4 ratios x 3 arms)
    assert counts["index_ood"] == 4 and counts["index_control"] == 1
    assert "fit_generator" not in counts  # a diffusers generator needs no training job
    assert not (tmp_path / "results").exists()


def test_coco_config_plans_generation_only(tmp_path):
    result = snakemake("-n", "--quiet", "rules", "--configfile", str(REPO / "config" / "coco.yaml"), cwd=tmp_path)
    assert job_counts(result.stdout) == {"build_prompts": 1, "generate_shard": 120, "gather_generated": 1, "all": 1, "total": 123}


def test_bad_config_fails_before_any_job(tmp_path, default_config):
    default_config["mixing"]["ratios"] = [0.0, 1.5]
    config = write_yaml(tmp_path / "bad.yaml", default_config)
    result = snakemake("--cores", "1", "--configfile", str(config), cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "ratios" in result.stderr and "1.5" in result.stderr
    assert not (tmp_path / "results").exists()


def test_missing_data_path_fails_before_any_job(tmp_path):
    config = yaml.safe_load((REPO / "config" / "imagenet.yaml").read_text())
    config["real"]["root"] = str(tmp_path / "no-such-imagenet")
    path = write_yaml(tmp_path / "imagenet.yaml", config)
    result = snakemake("--cores", "1", "--configfile", str(path), cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "real.root" in result.stderr and "no-such-imagenet" in result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_changed_real_data_regenerates_every_image(tiny_study, tmp_path):
    """The embedded generator is refitted when the real data change; its images must be too.

    It works on a copy of the tiny study (outputs, logs and Snakemake's records),
    whose run already fitted the generator and made its images: making them a
    second time here would only repeat that run.
    """
    study, study_config = tiny_study
    shutil.copytree(study, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("again", "backup-run"))
    path = tmp_path / study_config.name
    config = yaml.safe_load(path.read_text())
    counts_file, index_file = tmp_path / "results/tiny/generated/generated.json", tmp_path / "results/tiny/generated/generated.parquet"
    targets = [str(f.relative_to(tmp_path)) for f in (index_file, counts_file)]
    # The study's caller did not set HF_HUB_OFFLINE: the workflow itself does, for every job.
    assert "HF_HUB_OFFLINE=1" in (tmp_path / "logs/tiny/fit_generator/digits_ddim.log").read_text()
    first = read_parquet(index_file)
    assert json.loads(counts_file.read_text())["generated"] == len(first) == 220

    # (That a speed-only knob replans nothing is test_partial_reruns's; that a rerun
    # shard keeps its images whatever the batch size, test_generate.py's.)
    config["real"]["split_fractions"]["train"] = 0.12
    write_yaml(path, config)
    snakemake(*targets, "--cores", "2", "--configfile", str(path), cwd=tmp_path)
    counts = json.loads(counts_file.read_text())
    assert counts["resumed"] == 0 and counts["generated"] == 220
    assert set(read_parquet(index_file)["settings_id"]).isdisjoint(first["settings_id"])


@pytest.mark.slow
def test_whole_study_on_a_tiny_config(tiny_study):
    tmp_path, config = tiny_study
    out = tmp_path / "results" / "tiny"

    # Manifests: same size as the real train split, exact class-balanced shares.
    real = read_parquet(out / "real" / "index.parquet")
    train = real[real["split"] == "train"]
    for source in ("generated", "control"):
        for ratio in (0.5, 1.0):
            manifest = read_parquet(out / "manifests" / source / f"ratio-{ratio}.parquet")
            assert len(manifest) == len(train)
            replaced = (manifest["origin"] != "real").groupby(manifest["label"]).sum()
            expected = (train.groupby("label").size() * ratio + 0.5).astype(int)
            assert (replaced == expected).all()
    generated = read_parquet(out / "generated" / "generated.parquet")
    assert len(generated) == 10 * 22 and generated["path"].map(lambda p: (tmp_path / p).exists()).all()

    # Every run evaluated on the real test split; the report holds every run.
    runs = sorted(out.glob("runs/*/ratio-*/*/seed-*/metrics.json"))
    assert len(runs) == 1 + 2 * 1  # the shared real-only run, and each arm at its one ratio
    metrics = read_metrics(out / "runs/real/ratio-0.0/resnet10t/seed-0/metrics.json")
    assert metrics["test"]["n"] == (real["split"] == "test").sum()
    assert metrics["validation"]["n"] == (real["split"] == "validation").sum()
    assert metrics["test"]["top1"] > 0.2  # ten classes: chance is 0.1
    assert metrics["processes"] == 1 and metrics["fingerprint"] and metrics["versions"]["torch"]
    summary = pd.read_csv(out / "report" / "summary.csv")
    assert len(summary) == len(runs) * 2 * 2  # test and validation, top-1 and top-5
    page = (out / "report" / "index.html").read_text()
    assert "figures/accuracy.png" in page and "samples-generated.png" in page
    assert (out / "report" / "figures" / "samples-generated.png").exists()
    assert list(tmp_path.glob("logs/tiny/train/*/*/*/*.log")) and list(tmp_path.glob("benchmarks/tiny/train/*/*/*/*.tsv"))

    # The distribution analysis compared each source, and the real-vs-real floor,
    # with the reference split that no model saw, all at one sample size.
    sizes = set()
    for name in ("generated", "control", "real-vs-real"):
        analysis = read_comparison(out / "analysis" / f"{name}.json")
        whole = analysis["whole"]
        assert set(whole) >= {"fid", "fid_ci95", "kid", "precision", "recall_ci95", "density", "coverage_ci95", "diversity_ratio"}
        assert whole["fid_ci95"][0] <= whole["fid"] <= whole["fid_ci95"][1]
        assert len(analysis["per_class"]) == 10 and analysis["source"] == name
        sizes |= {whole["n_reference"], whole["n_other"]}
    assert len(sizes) == 1
    assert "real-vs-real" in page

    # A manifest is a pure function of (config, seed): rebuilt elsewhere, same bytes.
    other = tmp_path / "again"
    other.mkdir()
    target = "results/tiny/manifests/control/ratio-0.5.parquet"
    snakemake(target, "--cores", "2", "--configfile", str(config), cwd=other)
    assert file_sha256(other / target) == file_sha256(tmp_path / target)


@pytest.mark.slow
def test_partial_reruns(tiny_study):
    tmp_path, config = tiny_study
    out = tmp_path / "results" / "tiny"
    assert "Nothing to be done" in snakemake("-n", "--configfile", str(config), cwd=tmp_path).stdout

    # Changing a speed-only knob reruns nothing.
    plan = snakemake("-n", "--configfile", str(config), "--config", "execution={generate_batch_size: 7, eval_batch_size: 3}", cwd=tmp_path)
    assert "Nothing to be done" in plan.stdout
    # What the report shows is a param of it: editing it reruns the report alone.
    plan = snakemake("-n", "--configfile", str(config), "--config", "report={paper_reference: false}", cwd=tmp_path)
    assert job_counts(plan.stdout) == {"report": 1, "all": 1, "total": 2}

    # One run alone is rebuilt after its outputs go; a partial report names it.
    run_dir = out / "runs" / "generated" / "ratio-0.5" / "resnet10t" / "seed-0"
    backup = tmp_path / "backup-run"
    shutil.copytree(run_dir, backup)
    shutil.rmtree(run_dir)
    partial = snakemake("results/tiny/report/index.html", "--cores", "2", "--configfile", str(config), "--config", "report={allow_missing_runs: true}", cwd=tmp_path)
    page = (out / "report" / "index.html").read_text()
    assert "Incomplete study" in page and "runs/generated/ratio-0.5/resnet10t/seed-0/metrics.json" in page, partial.stdout
    target = str(run_dir.relative_to(tmp_path) / "metrics.json")
    plan = snakemake(target, "-n", "--configfile", str(config), cwd=tmp_path)
    assert job_counts(plan.stdout) == {"train": 1, "evaluate": 1, "total": 2}
    snakemake(target, "--cores", "2", "--configfile", str(config), cwd=tmp_path)
    assert json.loads((run_dir / "metrics.json").read_text())["test"] == json.loads((backup / "metrics.json").read_text())["test"]
    snakemake("--cores", "2", "--configfile", str(config), cwd=tmp_path)
    assert "Incomplete study" not in (out / "report" / "index.html").read_text()


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.mark.slow
def test_report_in_a_real_browser(tiny_study, tmp_path):
    """Open the report in headless Chromium as a reader would."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    study, _ = tiny_study
    page = study / "results" / "tiny" / "report" / "index.html"
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_window_size(1300, 1000)
        driver.get(page.as_uri())
        images = driver.execute_script("return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);")
        assert len(images) >= 2
        broken = [src for src, complete, width in images if not complete or width == 0]
        assert not broken, f"images that did not load: {broken}"
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
        cells = {cell.text.strip() for cell in driver.find_elements(By.TAG_NAME, "td")}
        summary = pd.read_csv(study / "results" / "tiny" / "report" / "summary.csv")
        for value in summary[(summary["test_set"] == "test") & (summary["metric"] == "top1")]["value"]:
            assert f"{100 * value:.2f}" in cells  # the Runs table holds every number of summary.csv
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1300, min(int(height) + 100, 12000))
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        shutil.copy(shot, study / "report-screenshot.png")
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()
