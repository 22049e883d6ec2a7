"""The workflow as users run it: lint, dry runs, config errors, and a whole tiny study."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, snakemake_env, write_yaml
from contam.io import file_sha256, read_parquet

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def snakemake(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, env=snakemake_env(), capture_output=True, text=True, timeout=1200)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def job_counts(dry_run_output: str) -> dict[str, int]:
    counts, in_table = {}, False
    for line in dry_run_output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table, counts = True, {}
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
            elif counts:
                in_table = False
    return counts


def tiny_config(default: dict) -> dict:
    config = yaml.safe_load(yaml.safe_dump(default))
    config["experiment"] = "tiny"
    config["real"]["image_size"] = 8
    config["real"]["split_fractions"] = {"train": 0.1, "control": 0.12, "test": 0.1}
    config["generators"]["digits_ddim"]["image_size"] = 8
    config["generators"]["digits_ddim"]["fit"].update(steps=30, block_channels=[16, 32])
    config["generators"]["digits_ddim"]["sample"]["steps"] = 4
    config["sources"]["generated"]["shards"] = 2
    config["sources"]["generated"]["prompts"]["images_per_class"] = 22
    config["mixing"]["ratios"] = [0.0, 0.5, 1.0]
    config["training"]["epochs"] = 2
    config["models"] = {"resnet10t": {"arch": "resnet10t", "image_size": 16}}
    config["seeds"] = [0]
    return config


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
def test_whole_study_on_a_tiny_config(tmp_path, default_config):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(default_config))
    snakemake("--cores", "2", "--configfile", str(config), cwd=tmp_path)
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
    assert len(runs) == 1 + 2 * 2
    metrics = json.loads(runs[0].read_text())
    assert 0.0 <= metrics["test"]["top1"] <= 1.0 and metrics["test"]["n"] == (real["split"] == "test").sum()
    assert metrics["manifest_sha256"] and metrics["versions"]["torch"]
    summary = pd.read_csv(out / "report" / "summary.csv")
    assert len(summary) == len(runs) * 2
    page = (out / "report" / "index.html").read_text()
    assert "figures/accuracy.png" in page and "samples-generated.png" in page
    assert (out / "report" / "figures" / "samples-generated.png").exists()
    assert list(tmp_path.glob("logs/tiny/train/*/*/*/*.log")) and list(tmp_path.glob("benchmarks/tiny/train/*/*/*/*.tsv"))

    # A manifest is a pure function of (config, seed): rebuilt elsewhere, same bytes.
    other = tmp_path / "again"
    other.mkdir()
    target = "results/tiny/manifests/control/ratio-0.5.parquet"
    snakemake(target, "--cores", "2", "--configfile", str(config), cwd=other)
    assert file_sha256(other / target) == file_sha256(tmp_path / target)

    # Nothing left to do; then one run alone is rebuilt after its outputs go.
    assert "Nothing to be done" in snakemake("-n", "--configfile", str(config), cwd=tmp_path).stdout
    run_dir = out / "runs" / "generated" / "ratio-0.5" / "resnet10t" / "seed-0"
    shutil.rmtree(run_dir)
    plan = snakemake(str(run_dir.relative_to(tmp_path) / "metrics.json"), "-n", "--configfile", str(config), cwd=tmp_path)
    assert job_counts(plan.stdout) == {"train": 1, "evaluate": 1, "total": 2}
    snakemake(str(run_dir.relative_to(tmp_path) / "metrics.json"), "--cores", "2", "--configfile", str(config), cwd=tmp_path)
    assert (run_dir / "metrics.json").exists()

    # Changing a speed-only knob reruns nothing.
    plan = snakemake("-n", "--configfile", str(config), "--config", "execution={generate_batch_size: 7, eval_batch_size: 3}", cwd=tmp_path, check=False)
    assert "train" not in job_counts(plan.stdout) and "generate_shard" not in job_counts(plan.stdout)
