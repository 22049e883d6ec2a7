import copy

import numpy as np
import pandas as pd
import pytest
import yaml
from snakemake.exceptions import WorkflowError

from conftest import REPO, validated
from contam import config_checks, remedies, report_remedies
from contam.io import file_sha256, parquet_metadata, read_parquet, write_parquet
from contam.mix import mix
from contam.prompts import plain_prompts
from contam.seeds import image_seeds


@pytest.fixture
def remedies_config() -> dict:
    return copy.deepcopy(yaml.safe_load((REPO / "config" / "digits-remedies.yaml").read_text()))


def classes(n=3):
    return pd.DataFrame({"label": np.arange(n), "names": [f"c{i}" for i in range(n)]})


def real_index(per_class=12, n_classes=3):
    splits = ["train", "train", "train", "train", "reference", "reference", "reference", "reference", "test", "test", "control", "control"]
    rows = [
        {"path": f"real/{c}/{i:02d}.png", "label": c, "class_name": f"c{c}", "split": splits[i % len(splits)]}
        for c in range(n_classes)
        for i in range(per_class)
    ]
    return pd.DataFrame(rows)


def generated_pool(prefix, rows, n_classes=3):
    return pd.DataFrame(
        {
            "path": [f"gen/{prefix}-{r:04d}.png" for r in rows],
            "label": [r % n_classes for r in rows],
            "class_name": [f"c{r % n_classes}" for r in rows],
            "row": rows,
        }
    )


def test_detector_prompts_follow_every_row_of_the_source():
    source = plain_prompts(classes(), "photo of {name}", 5, base_seed=7)
    new = plain_prompts(classes(), "photo of {name}", 2, base_seed=7)
    table = remedies.detector_prompts(source, new, base_seed=7)
    assert table["row"].min() == source["row"].max() + 1
    assert table["row"].is_unique and len(table) == 6
    # Seeds are those of the new rows, so no detector image repeats a mixed image's noise.
    assert np.array_equal(table["seed"], image_seeds(7, table["row"].to_numpy()))
    assert not set(table["seed"]) & set(source["seed"])
    assert list(table["prompt"]) == list(new["prompt"])


def test_detector_data_is_stratified_deterministic_and_disjoint():
    real = real_index()
    generated = {"gen": generated_pool("det", list(range(100, 124)))}
    fractions = {"train": 0.5, "validation": 0.25, "test": 0.25}
    first = remedies.detector_data(real, "reference", 10, generated, fractions, seed=3)
    again = remedies.detector_data(real, "reference", 10, generated, fractions, seed=3)
    pd.testing.assert_frame_equal(first, again)
    assert set(first.loc[~first["generated"], "path"]) <= set(real.loc[real["split"] == "reference", "path"])
    # Every stratum (origin x class) is cut by the fractions.
    counts = first.groupby(["generated", "label", "split"]).size().unstack("split")
    assert (counts["train"] == 2 * counts["test"]).all() and (counts["validation"] == counts["test"]).all()

    # The mixes hold other generated rows: nothing shared, so the check passes.
    pool = generated_pool("mix", list(range(0, 24)))
    manifest = mix(real[real["split"] == "train"], pool, 1.0, seed=0, source="gen", origin="generated")
    remedies.check_disjoint(first, [manifest], real.loc[real["split"] == "test", "path"])
    # A detector image inside a mix, or a test image among the detector's, is refused.
    leaky = manifest.copy()
    leaky.loc[0, "path"] = first.loc[first["generated"], "path"].iloc[0]
    with pytest.raises(ValueError, match="also in a mix"):
        remedies.check_disjoint(first, [leaky], real.loc[real["split"] == "test", "path"])
    with pytest.raises(ValueError, match="test split"):
        remedies.check_disjoint(first, [manifest], pd.Series([first["path"].iloc[0]]))


def manifest_with_origins():
    real = real_index()
    pool = generated_pool("mix", list(range(0, 24)))
    return mix(real[real["split"] == "train"], pool, 0.5, seed=0, source="gen", origin="generated")


def test_filter_drops_exactly_the_flagged_rows_and_records_why(tmp_path):
    manifest = manifest_with_origins()
    rng = np.random.default_rng(0)
    scores = pd.DataFrame({"path": manifest["path"], "score": rng.random(len(manifest))})
    info = {"filter": "cnn-fpr0.05", "detector": "cnn", "fpr_budget": 0.05}
    filtered, summary = remedies.filter_by_scores(manifest, scores, 0.6, info)
    flagged = set(scores.loc[scores["score"] > 0.6, "path"])
    assert set(filtered["path"]) == set(manifest["path"]) - flagged
    assert list(filtered.columns) == list(manifest.columns)
    generated = manifest["origin"] == "generated"
    assert summary["generated_dropped"] == int((generated & manifest["path"].isin(flagged)).sum())
    assert summary["real_dropped"] == int((~generated & manifest["path"].isin(flagged)).sum())
    assert summary["rows_after"] == len(filtered) and summary["threshold"] == 0.6
    assert summary["detector"] == "cnn" and summary["fpr_budget"] == 0.05

    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    for path in paths:
        again, again_summary = remedies.filter_by_scores(manifest, scores, 0.6, info)
        write_parquet(again, path, metadata=again_summary)
    assert file_sha256(paths[0]) == file_sha256(paths[1])
    assert parquet_metadata(paths[0]) == summary
    assert list(read_parquet(paths[0])["path"]) == list(filtered["path"])

    with pytest.raises(ValueError, match="no detector score"):
        remedies.filter_by_scores(manifest, scores.iloc[1:], 0.6, info)


def test_oracle_drops_exactly_the_generated_rows():
    manifest = manifest_with_origins()
    filtered, summary = remedies.oracle_filter(manifest)
    assert (filtered["origin"] != "generated").all()
    assert len(filtered) == (manifest["origin"] != "generated").sum()
    assert summary["real_dropped"] == 0 and summary["generated_caught_share"] == 1.0
    # A control arm has nothing generated: its oracle twin would be itself, so it gets none.
    cfg = {"filter": {"detectors": ["cnn"], "fpr_budget": 0.05, "oracle": True}}
    assert remedies.filters(cfg, "generated") == ["cnn-fpr0.05", "oracle"]
    assert remedies.filters(cfg, "control") == ["cnn-fpr0.05"]


def tidy(rows):
    return pd.DataFrame(
        [
            {"source": s, "ratio": r, "model": "m", "seed": k, "processes": 1, "test_set": "test", "metric": "top1", "value": v, "metrics_file": f"{s}{r}{k}"}
            for s, r, k, v in rows
        ]
    )


def test_recovery_share_and_its_paired_interval():
    supervised = tidy([("real", 0.0, 0, 0.90), ("real", 0.0, 1, 0.92), ("real", 0.0, 2, 0.91),
                       ("gen", 1.0, 0, 0.70), ("gen", 1.0, 1, 0.74), ("gen", 1.0, 2, 0.71),
                       ("ctl", 1.0, 0, 0.90), ("ctl", 1.0, 1, 0.92), ("ctl", 1.0, 2, 0.91)])
    filtered = tidy([("gen", 1.0, 0, 0.80), ("gen", 1.0, 1, 0.83), ("gen", 1.0, 2, 0.81),
                     ("ctl", 1.0, 0, 0.89), ("ctl", 1.0, 1, 0.92), ("ctl", 1.0, 2, 0.90)]).assign(filter="cnn-fpr0.05")
    lost = {"rows_after": 5, "real_dropped": 1, "real_before": 10, "real_lost_share": 0.1, "generated_dropped": 8, "generated_before": 10, "threshold": 0.5}
    summaries = [{"source": "gen", "ratio": 1.0, "filter": "cnn-fpr0.05", **lost}, {"source": "ctl", "ratio": 1.0, "filter": "cnn-fpr0.05", **lost}]
    table = report_remedies.recovery_table(supervised, filtered, summaries, "m", {"gen": "generated", "ctl": "control"}).set_index("source")
    gen = table.loc["gen"]
    shares = np.array([0.10 / 0.20, 0.09 / 0.18, 0.10 / 0.20])
    assert gen["has_gap"] and gen["gap_resolved"] and gen["share_closed"] == pytest.approx(shares.mean())
    assert gen["share_low"] < gen["share_closed"] < gen["share_high"]
    assert gen["gain"] == pytest.approx(np.mean([0.10, 0.09, 0.10]))
    # The control arm has no gap: the share is undefined, and what filtering cost is its gain.
    assert not table.loc["ctl", "has_gap"] and np.isnan(table.loc["ctl", "share_closed"])
    assert table.loc["ctl", "gain"] == pytest.approx(-0.02 / 3)


def test_ssl_drop_is_paired_with_its_own_clean_run():
    supervised = tidy([("real", 0.0, 0, 0.90), ("real", 0.0, 1, 0.92), ("gen", 1.0, 0, 0.70), ("gen", 1.0, 1, 0.74)])
    records = [
        {"run": {"source": s, "ratio": str(r), "method": "simsiam", "seed": k}, "sets": {"test": {"top1": v}}}
        for s, r, k, v in [("real", 0.0, 0, 0.80), ("real", 0.0, 1, 0.82), ("gen", 1.0, 0, 0.75), ("gen", 1.0, 1, 0.79)]
    ]
    table = report_remedies.ssl_comparison(report_remedies.ssl_tidy(records), supervised, "m", ["gen"])
    row = table.iloc[0]
    assert row["ssl_drop"] == pytest.approx(-0.04) and row["supervised_drop"] == pytest.approx(-0.19)
    assert row["difference"] == pytest.approx(0.15) and row["seeds"] == 2


def test_remedies_config_is_valid(remedies_config):
    validated(remedies_config)
    assert remedies_config["remedies"]["ssl"]["method"] == "simsiam"


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda r: r.update(fpr_budgets=[0.05, 1.0]), "fpr_budgets"),
        (lambda r: r.update(fpr_budgets=[0.0]), "fpr_budgets"),
        (lambda r: r.update(detectors=["spectral", "watermark"]), "detectors"),
        (lambda r: r["ssl"].update(method="moco"), "method"),
        (lambda r: r.update(ratios=[0.4, 0.8]), "remedies.ratios"),
        (lambda r: r["filter"].update(detectors=["probe"]) or r.update(detectors=["cnn"]), "remedies.filter.detectors"),
        (lambda r: r["filter"].update(fpr_budget=0.1), "remedies.filter.fpr_budget"),
        (lambda r: r["detector_data"].update(real_split="test"), "remedies.detector_data.real_split"),
        (lambda r: r["ssl"].update(ratios=[1.0]), "remedies.ssl.ratios"),
        (lambda r: r.update(model="vit_giant"), "remedies.model"),
    ],
)
def test_bad_remedies_config_fails_naming_the_key(remedies_config, mutate, key):
    mutate(remedies_config["remedies"])
    with pytest.raises((WorkflowError, config_checks.ConfigError)) as error:
        validated(remedies_config)
    assert key in str(error.value)


def test_generated_digits_stored_like_real_ones_pass_the_format_audit(tmp_path):
    """The embedded world's parity: samples stored by digits_storage pass; samples on a coarser value grid fail."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from contam import detect
    from contam.index_real import digit_image, stored_like_a_digit

    digits = load_digits()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        real = np.asarray(digit_image(digits.images[i], 16))
        # A stand-in sample: a real digit, shifted, blurred and noisy, with every grey level.
        raw = np.clip(np.roll(real.astype(float), 1, axis=1) * 0.9 + rng.normal(0, 12, real.shape).mean(-1, keepdims=True), 0, 255).astype(np.uint8)
        for kind, pixels in (("real", real), ("stored", stored_like_a_digit(raw)), ("coarse", raw // 8 * 8)):
            path = tmp_path / f"{kind}-{i}.png"
            Image.fromarray(pixels).save(path)
            rows.append((str(path), kind, "train" if i % 2 else "test"))
    frame = pd.DataFrame(rows, columns=["path", "kind", "split"])
    features = detect.format_features(frame["path"].tolist())

    def audit(kind):
        part = frame["kind"].isin(["real", kind]).to_numpy()
        return detect.format_audit(features[part], (frame["kind"][part] == kind).to_numpy(), frame["split"][part].to_numpy(), seed=0, resamples=50)

    assert audit("stored")["trustworthy"], audit("stored")["auroc"]
    assert not audit("coarse")["trustworthy"], audit("coarse")["auroc"]


def test_imagenet_preset_plans_the_remedies_when_turned_on():
    """The paper-scale grid: every arm and seed at 0.4 and 1.0, filtered by cnn, the oracle for the generated arms; SSL at 0 and 1.0."""
    from collections import Counter

    from contam import plan

    config, jobs = plan.dag_jobs([REPO / "config" / "imagenet.yaml"], overrides={"remedies": {"enabled": True}})
    counts = Counter(job.rule for job in jobs)
    generated = [s for s, spec in config["sources"].items() if spec["origin"] == "generated"]
    seeds = len(config["seeds"])
    assert counts["fit_detector"] == 3 and counts["generate_detector_images"] == len(generated)
    assert counts["train_filtered"] == counts["evaluate_filtered"] == 2 * seeds * (len(config["sources"]) + len(generated))
    assert counts["pretrain_and_probe_ssl"] == seeds * (1 + len(config["sources"]))
    # The remedies' real images come from train (ImageNet has no spare split), never from test.
    assert config["remedies"]["detector_data"]["real_split"] == "train" and config["remedies"]["model"] == "resnet50"
