"""The generative study through Snakemake: its DAG, and a tiny study end to end."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, job_counts, run_snakemake, write_yaml

OUT = "results/gen-tiny"


def generation_config() -> dict:
    return copy.deepcopy(yaml.safe_load((REPO / "config" / "digits-generation.yaml").read_text()))


def fitted_levels(dry_run: str) -> dict[str, set[str]]:
    """{track: levels} of the unit jobs a dry run lists."""
    levels: dict[str, set[str]] = {}
    for block in dry_run.split("rule fit_and_score_generative_model:")[1:]:
        match = re.search(r"wildcards: track=(\w+), level=([\w.-]+), seed=(\d+)", block)
        levels.setdefault(match.group(1), set()).add(match.group(2))
    return levels


@pytest.mark.parametrize("regime, expected", [("replace", {"gen-1", "gen-2"}), ("accumulate", {"gen-1", "gen-2"})])
def test_generation_g_depends_only_on_earlier_generations(tmp_path, regime, expected):
    config = write_yaml(tmp_path / "config.yaml", generation_config())
    target = f"results/digits-generation/generative/{regime}/gen-2/seed-0/metrics.json"
    result = run_snakemake(target, "-n", "--configfile", str(config), cwd=tmp_path)
    levels = fitted_levels(result.stdout)
    # Generation 2 needs generations 0 (the real-only model) and 1 of its own regime, and nothing later.
    assert levels == {regime: expected, "real": {"ratio-0.0"}}
    counts = job_counts(result.stdout)
    assert counts["build_loop_manifest"] == 2 and counts["fit_and_score_generative_model"] == 3


def test_cluster_preset_plans_gpu_jobs_without_data(tmp_path):
    preset = str(REPO / "config" / "cifar10-generation.yaml")
    counts = job_counts(run_snakemake("-n", "--quiet", "rules", "--configfile", preset, cwd=tmp_path).stdout)
    units = 2 * (1 + 2 * 4 + 3 * 3)  # seeds x (real + arms x ratios + regimes x generations 1..3)
    assert counts["fit_and_score_generative_model"] == units
    assert counts["train"] == 1  # the judge only
    target = "results/cifar10-generation/generative/replace/gen-1/seed-0/metrics.json"
    plan = run_snakemake(target, "-n", "--profile", str(REPO / "slurm"), "--configfile", preset, cwd=tmp_path).stdout
    blocks = {block.split(":", 1)[0]: block for block in plan.split("\nrule ")[1:]}
    assert re.search(r"resources: .*\bgpu=1\b", blocks["fit_and_score_generative_model"]), blocks["fit_and_score_generative_model"]
    assert "recipe" in yaml.safe_load(Path(preset).read_text())["generative"]["model"]
    assert not (tmp_path / "results").exists()


def tiny_generation_config() -> dict:
    config = generation_config()
    config["experiment"] = "gen-tiny"
    config["real"]["split_fractions"] = {"train": 0.1, "control": 0.12, "validation": 0.05, "reference": 0.2, "test": 0.05}
    config["generators"]["digits_ddim"]["fit"].update(steps=30, block_channels=[8, 16])
    config["generators"]["digits_ddim"]["sample"]["steps"] = 3
    config["sources"] = {"generated": {**config["sources"]["generated"], "prompts": {"style": "plain", "template": "{name}", "images_per_class": 20}}}
    config["mixing"]["ratios"] = [0.0, 1.0]
    config["generative"]["model"]["fit"].update(steps=12, block_channels=[8, 16])
    config["generative"]["model"]["sample"]["steps"] = 3
    config["generative"].update(samples_per_class=20)
    config["generative"]["loop"].update(generations=2, regimes=["replace", "accumulate"], finetune_steps=4)
    config["training"]["epochs"] = 1
    config["models"]["resnet10t"]["image_size"] = 16
    config["seeds"] = [0]
    config["analysis"].update(bootstrap=5, max_per_class=20)
    return config


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("generative")
    config = write_yaml(workdir / "config.yaml", tiny_generation_config())
    run_snakemake("--cores", "2", "--configfile", str(config), cwd=workdir)
    return workdir


@pytest.mark.slow
def test_tiny_generative_study_runs_end_to_end(tiny_study):
    out = tiny_study / OUT
    units = ["real/ratio-0.0", "generated/ratio-1.0", "replace/gen-1", "accumulate/gen-1"]
    for unit in units:
        record = json.loads((out / "generative" / unit / "seed-0" / "metrics.json").read_text())
        whole = record["whole"]
        assert whole["fid"] >= 0 and 0 <= whole["recall"] <= 1 and 0 <= whole["tail_recall"] <= 1
        assert 0 <= record["class_accuracy"] <= 1 and record["samples"]["n"] == 200 and record["samples"]["dropped"] == 0
        assert record["unit"]["track"] == unit.split("/")[0]
    replace = json.loads((out / "generative/replace/gen-1/seed-0/metrics.json").read_text())
    assert replace["training_data"]["by_origin"] == {"generated": replace["training_data"]["images"]}
    assert replace["training_data"]["by_generation"] == {"0": replace["training_data"]["images"]}
    manifest = pd.read_parquet(out / "generative/accumulate/gen-1/seed-0/manifest.parquet")
    samples = pd.read_parquet(out / "generative/real/ratio-0.0/seed-0/samples.parquet")
    assert set(manifest.loc[manifest["origin"] == "generated", "path"]) == set(samples["path"])
    floor = json.loads((out / "generative/real-vs-real.json").read_text())
    assert floor["unit"]["study"] == "floor" and floor["whole"]["recall"] > 0
    html = (out / "report/generative.html").read_text()
    assert "replace" in html and "accumulate" in html
    summary = pd.read_csv(out / "report/generative_summary.csv")
    assert {"real", "generated", "replace", "accumulate"} <= set(summary["track"])


@pytest.mark.slow
def test_one_unit_reruns_alone(tiny_study):
    config = str(tiny_study / "config.yaml")
    assert "Nothing to be done" in run_snakemake("-n", "--configfile", config, cwd=tiny_study).stdout
    unit = tiny_study / OUT / "generative/replace/gen-1/seed-0"
    record = json.loads((unit / "metrics.json").read_text())
    (unit / "metrics.json").unlink()
    counts = job_counts(run_snakemake("-n", "--configfile", config, cwd=tiny_study).stdout)
    assert counts == {"fit_and_score_generative_model": 1, "report_generative": 1, "all": 1, "total": 3}
    # The rerun rescores the kept fit: the same model and samples, the same numbers.
    run_snakemake("--cores", "2", "--configfile", config, cwd=tiny_study)
    assert "resuming from checkpoint at step 4 of 4" in (tiny_study / "logs/gen-tiny/fit_and_score_generative_model/replace/gen-1/seed-0.log").read_text()
    again = json.loads((unit / "metrics.json").read_text())
    assert again["whole"] == record["whole"] and again["class_accuracy"] == record["class_accuracy"]
    target = f"{OUT}/generative/accumulate/gen-1/seed-0/metrics.json"
    counts = job_counts(run_snakemake(target, "-n", "--forcerun", "fit_and_score_generative_model", "--configfile", config, cwd=tiny_study).stdout)
    # Refitting generation 0 would remake its samples, so generation 1's manifest and model follow.
    assert counts["fit_and_score_generative_model"] == 2 and counts["build_loop_manifest"] == 1
