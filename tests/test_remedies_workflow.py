"""The remedies, end to end, on a copy of the session's tiny study (its generator, mixes and runs are reused)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import job_counts, run_snakemake, write_yaml
from contam import remedies
from contam.io import file_sha256, parquet_metadata, read_parquet, write_parquet

OUT = "results/tiny"
FILTERS = {("generated", "spectral-fpr0.2"), ("generated", "oracle"), ("control", "spectral-fpr0.2")}


def tiny_remedies() -> dict:
    """Every remedy on the tiny study, each as small as it runs: two detectors (the cnn's fit is
    test_detect.py's; its job is the spectral one's), a filter and the oracle, SSL."""
    return {
        "enabled": True,
        "ratios": [0.5],
        "detectors": ["spectral", "probe"],
        "fpr_budgets": [0.05, 0.2],
        "filter": {"detectors": ["spectral"], "fpr_budget": 0.2, "oracle": True},
        "detector_data": {"real_split": "reference", "real_per_class": 10, "generated_per_class": 10},
        "spectral": {"size": 8},
        "bootstrap": 20,
        "ssl": {"ratios": [0.0, 0.5], "arch": "resnet10t", "image_size": 16, "epochs": 2, "batch_size": 32},
    }


@pytest.fixture(scope="module")
def remedies_study(tiny_study, tmp_path_factory):
    root, config_path = tiny_study
    work = tmp_path_factory.mktemp("remedies")
    # The study's whole state: copy2 keeps modification times, so nothing upstream
    # looks newer than its outputs, and with Snakemake's records the report sees
    # its new input (the remedies' summary), as in a user's own results folder.
    for part in ("results", "benchmarks", "logs", ".snakemake/metadata"):
        shutil.copytree(root / part, work / part)
    config = yaml.safe_load(config_path.read_text())
    config["remedies"] = tiny_remedies()
    path = write_yaml(work / "tiny.yaml", config)
    plan = job_counts(run_snakemake("-n", "--configfile", str(path), cwd=work).stdout)
    run_snakemake("--cores", "2", "--configfile", str(path), cwd=work)
    return work, path, plan


def test_remedies_reuse_the_study_and_add_only_their_jobs(remedies_study):
    _, _, plan = remedies_study
    assert plan["fit_detector"] == 2 and plan["train_filtered"] == 3 and plan["pretrain_and_probe_ssl"] == 3
    assert plan["filter_manifest"] == 3
    # The tiny study's generator, images, mixes and runs are reused as they are;
    # only its report is redrawn, with the remedies' sections.
    for rule in ("fit_generator", "generate_shard", "mix", "train", "evaluate"):
        assert rule not in plan, plan
    assert plan["report"] == 1


def test_detector_data_is_disjoint_from_the_mixes_and_the_test_split(remedies_study):
    work, _, _ = remedies_study
    out = work / OUT
    labelled = read_parquet(out / "remedies/detector-data/labelled.parquet")
    assert set(labelled["split"]) == {"train", "validation", "test"} and labelled["generated"].any() and (~labelled["generated"]).any()
    real = read_parquet(out / "real/index.parquet")
    assert not set(labelled["path"]) & set(real.loc[real["split"] == "test", "path"])
    assert set(labelled.loc[~labelled["generated"], "path"]) <= set(real.loc[real["split"] == "reference", "path"])
    generated_in_mixes = set()
    for manifest in out.glob("manifests/*/ratio-*.parquet"):
        frame = read_parquet(manifest)
        generated_in_mixes |= set(frame.loc[frame["origin"] == "generated", "path"])
    assert generated_in_mixes and not set(labelled["path"]) & generated_in_mixes
    # The detector's images come from rows after the source's own, with their own seeds.
    prompts = read_parquet(out / "prompts/generated.parquet")
    detector_prompts = read_parquet(out / "remedies/detector-data/prompts/generated.parquet")
    assert detector_prompts["row"].min() > prompts["row"].max()
    assert not set(detector_prompts["seed"]) & set(prompts["seed"])


def test_filtered_manifests_drop_exactly_the_flagged_rows(remedies_study, tmp_path):
    work, _, _ = remedies_study
    out = work / OUT
    scores = read_parquet(out / "remedies/detectors/spectral/scores.parquet")
    detector = json.loads((out / "remedies/detectors/spectral/metrics.json").read_text())
    threshold = detector["thresholds"]["0.2"]
    score_of = scores.set_index("path")["score"]
    for source, name in FILTERS:
        manifest = read_parquet(out / f"manifests/{source}/ratio-0.5.parquet")
        filtered_path = out / f"remedies/manifests/{source}/ratio-0.5/{name}.parquet"
        filtered = read_parquet(filtered_path)
        if name == "oracle":
            kept = manifest[manifest["origin"] != "generated"]
            again, summary = remedies.oracle_filter(manifest)
        else:
            kept = manifest[manifest["path"].map(score_of) <= threshold]
            settings = {"filter": name, "detector": "spectral", "fpr_budget": 0.2}
            again, summary = remedies.filter_by_scores(manifest, scores, threshold, settings)
        assert list(filtered["path"]) == list(kept["path"]), (source, name)
        record = parquet_metadata(filtered_path)
        assert record["filter"] == name and record["rows_after"] == len(filtered)
        if name != "oracle":
            assert record["detector"] == "spectral" and record["fpr_budget"] == 0.2 and record["threshold"] == threshold
        # A rerun writes the same bytes: the same function of the same inputs.
        write_parquet(again, tmp_path / "again.parquet", metadata={**summary, "source": source, "ratio": 0.5})
        assert file_sha256(tmp_path / "again.parquet") == file_sha256(filtered_path), (source, name)


def test_remedies_are_measured_and_reported(remedies_study):
    work, _, _ = remedies_study
    out = work / OUT
    summary = json.loads((out / "remedies/summary.json").read_text())
    assert set(summary["detectors"]) == {"spectral", "probe"}
    for metrics in summary["detectors"].values():
        auroc = metrics["auroc"]
        assert 0 <= auroc["interval"][0] <= auroc["estimate"] <= auroc["interval"][1] <= 1
        assert set(metrics["tpr_at_fpr"]) == {"0.05", "0.2"} and set(metrics["thresholds"]) == {"0.05", "0.2"}
    # Real and generated digits are stored alike: storage alone cannot tell them apart.
    assert summary["audit"]["trustworthy"], summary["audit"]
    recovery = pd.DataFrame(summary["recovery"])
    assert set(zip(recovery["source"], recovery["filter"])) == FILTERS
    oracle = recovery[recovery["filter"] == "oracle"].iloc[0]
    assert oracle["real_dropped"] == 0 and oracle["generated_dropped"] == oracle["generated_before"] > 0
    ssl = pd.DataFrame(summary["ssl"])
    assert set(ssl["source"]) == {"generated", "control"} and np.isfinite(ssl["ssl_drop"]).all()
    for run in out.glob("remedies/ssl/*/ratio-*/simsiam/seed-0/metrics.json"):
        assert 0 <= json.loads(run.read_text())["sets"]["test"]["top1"] <= 1
    html = (out / "report/index.html").read_text()
    for heading in ("Remedies: detecting generated images", "Remedies: filtering and recovery", "Remedies: self-supervised pretraining", "Format-parity audit"):
        assert heading in html
    assert (out / "report/figures/remedies_roc.png").exists() and (out / "report/figures/remedies_recovery.png").exists()
