"""Stage remedies: detect generated images and drop them, and self-supervised pretraining, measured.

Detect-and-filter, end to end:

* **Detector data.** Generated images from new prompt rows of each generated
  source (numbered after the source's own rows, so their seeds differ from
  every image a mix can hold), and real images of one split that is never the
  test split. The labelled set is split (stratified by origin, source and
  class) into train (fits the detectors), validation (chooses each
  threshold at a false-positive budget) and test (AUROC, AP, TPR).
* **Filtering.** Each contaminated manifest gets filtered twins: the rows a
  detector flags are dropped (a flagged real row is collateral damage), and
  the oracle twin drops exactly the generated rows. A twin is a manifest like
  any other, so train and evaluate run on it unchanged.
* **Recovery.** Per arm, ratio and seed: the share of the gap closed,
  (filtered - unfiltered) / (clean - unfiltered), with a paired t-interval
  over seeds, beside the oracle's and the real images lost.

Self-supervised pretraining (``contam.ssl``) is compared with supervised
training on the same mixes: the drop from ratio 0 to each contaminated ratio,
paired by seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from contam.layout import BASELINE_SOURCE, ORACLE_FILTER
from contam.seeds import derive_seed, image_seeds

ORACLE = ORACLE_FILTER
DETECTOR_SPLITS = ("train", "validation", "test")
GENERATED_ORIGIN = "generated"
LABELLED_COLUMNS = ["path", "label", "class_name", "generated", "source", "split"]


def filter_name(detector: str, fpr_budget: float) -> str:
    """The name of a detector's filtered twin in paths: ``cnn-fpr0.05``."""
    return f"{detector}-fpr{float(fpr_budget):g}"


def filter_detector(name: str) -> str | None:
    """The detector of a filter's name (``cnn-fpr0.05`` -> ``cnn``); None for the oracle."""
    return None if name == ORACLE else name.split("-fpr")[0]


def filters(remedies: dict, origin: str) -> list[str]:
    """The filtered twins of one arm's manifests; the oracle only where there is something to find."""
    names = [filter_name(d, remedies["filter"]["fpr_budget"]) for d in remedies["filter"]["detectors"]]
    if remedies["filter"]["oracle"] and origin == GENERATED_ORIGIN:
        names.append(ORACLE)
    return names


# ---- detector data -------------------------------------------------------------------


def detector_prompts(source_prompts: pd.DataFrame, new_prompts: pd.DataFrame, base_seed: int) -> pd.DataFrame:
    """``new_prompts`` renumbered after every row of ``source_prompts``, with the seeds of those rows.

    An image's seed is f(generator seed, row), so rows no mix has give images no
    mix has: the detectors never see an image they will later be asked about.
    """
    first = int(source_prompts["row"].max()) + 1 if len(source_prompts) else 0
    rows = np.arange(first, first + len(new_prompts), dtype=np.int64)
    return new_prompts.assign(row=rows, seed=image_seeds(base_seed, rows)).reset_index(drop=True)


def detector_data(
    real_index: pd.DataFrame,
    real_split: str,
    real_per_class: int,
    generated: dict[str, pd.DataFrame],
    fractions: dict[str, float],
    seed: int,
) -> pd.DataFrame:
    """The labelled real-vs-generated set, with its detector split; rows beyond the fractions are left out."""
    from contam.analysis import sample_per_class
    from contam.index_real import UNUSED, stratified_split

    real = real_index[real_index["split"] == real_split]
    if real.empty:
        raise ValueError(f"the real index has no images of split {real_split!r} for the detectors")
    real = sample_per_class(real, real_per_class, seed)
    parts = [real.assign(generated=False, source=BASELINE_SOURCE)]
    for source, index in sorted(generated.items()):
        if index.empty:
            raise ValueError(f"source {source!r} has no detector images")
        parts.append(index.assign(generated=True, source=source))
    table = pd.concat([p[["path", "label", "class_name", "generated", "source"]] for p in parts], ignore_index=True)
    table["label"] = table["label"].astype(np.int64)
    table["class_name"] = table["class_name"].astype(str)
    table = table.sort_values("path", ignore_index=True)
    # The real data's own split, stratified by (source, class) instead of class.
    strata, _ = pd.factorize(table["source"] + ":" + table["label"].astype(str), sort=True)
    ordered = {name: fractions[name] for name in DETECTOR_SPLITS}
    table["split"] = stratified_split(strata, ordered, derive_seed(seed, "detector-split"))
    return table[table["split"] != UNUSED].reset_index(drop=True)[LABELLED_COLUMNS]


def check_disjoint(labelled: pd.DataFrame, manifests: list[pd.DataFrame], test_paths: pd.Series) -> None:
    """Refuse detector data that shares an image with a mix's generated rows or with the test split."""
    generated = set(labelled.loc[labelled["generated"], "path"])
    for manifest in manifests:
        shared = generated & set(manifest.loc[manifest["origin"] == GENERATED_ORIGIN, "path"])
        if shared:
            raise ValueError(f"{len(shared)} generated detector images are also in a mix, e.g. {sorted(shared)[0]}")
    shared = set(labelled["path"]) & set(test_paths)
    if shared:
        raise ValueError(f"{len(shared)} detector images are in the test split, e.g. {sorted(shared)[0]}")


# ---- filtering -----------------------------------------------------------------------


def _summary(manifest: pd.DataFrame, dropped: np.ndarray, info: dict) -> dict:
    generated = (manifest["origin"] == GENERATED_ORIGIN).to_numpy()
    real = ~generated
    return {
        **info,
        "rows_before": int(len(manifest)),
        "rows_after": int((~dropped).sum()),
        "generated_before": int(generated.sum()),
        "generated_dropped": int((dropped & generated).sum()),
        # Control rows are real images too: dropping them is collateral damage as well.
        "real_before": int(real.sum()),
        "real_dropped": int((dropped & real).sum()),
        "real_lost_share": float((dropped & real).sum() / real.sum()) if real.any() else 0.0,
        "generated_caught_share": float((dropped & generated).sum() / generated.sum()) if generated.any() else None,
    }


def filter_by_scores(manifest: pd.DataFrame, scores: pd.DataFrame, threshold: float, info: dict) -> tuple[pd.DataFrame, dict]:
    """Drop the rows whose image scores above ``threshold``; every row must have a score."""
    lookup = scores.drop_duplicates("path").set_index("path")["score"]
    row_scores = manifest["path"].map(lookup)
    if row_scores.isna().any():
        missing = manifest.loc[row_scores.isna(), "path"]
        raise ValueError(f"{len(missing)} manifest rows have no detector score, e.g. {missing.iloc[0]}")
    dropped = (row_scores.to_numpy(float) > float(threshold))
    summary = _summary(manifest, dropped, {**info, "threshold": float(threshold)})
    return manifest[~dropped].reset_index(drop=True), summary


def oracle_filter(manifest: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Drop exactly the generated rows: the ceiling of filtering at the same dataset size."""
    dropped = (manifest["origin"] == GENERATED_ORIGIN).to_numpy()
    summary = _summary(manifest, dropped, {"filter": ORACLE, "detector": None, "fpr_budget": None, "threshold": None})
    return manifest[~dropped].reset_index(drop=True), summary


# ---- the jobs --------------------------------------------------------------------------


def scored_paths(manifests: list[pd.DataFrame]) -> pd.Series:
    """Every image a filtered manifest can hold: the union of the manifests it filters, sorted."""
    if not manifests:
        return pd.Series([], dtype=str, name="path")
    paths = pd.concat([m["path"].astype(str) for m in manifests], ignore_index=True)
    return paths.drop_duplicates().sort_values(ignore_index=True).rename("path")


def fit_and_score_detector(
    kind: str,
    labelled: pd.DataFrame,
    to_score: pd.Series,
    settings: dict,
    budgets: list[float],
    resamples: int,
    seed: int,
    device="cpu",
    extractor=None,
):
    """One fit_detector job: fit on train, thresholds on validation, metrics on test, scores for the filters.

    Returns (detector, metrics, scores frame).
    """
    from contam import detect

    parts = {name: labelled[labelled["split"] == name] for name in DETECTOR_SPLITS}
    for name, part in parts.items():
        if part["generated"].nunique() < 2:
            raise ValueError(f"the detector's {name} split needs real and generated images; it has {part['generated'].value_counts().to_dict()}")
    detector = detect.fit_detector(kind, parts["train"][["path", "generated"]], settings, seed, device=device, extractor=extractor)
    validation = parts["validation"]
    validation_scores = detector.scores(validation["path"].tolist())
    real_validation = validation_scores[~validation["generated"].to_numpy(bool)]
    thresholds = {float(b): detect.threshold_at_fpr(real_validation, float(b)) for b in budgets}
    test = parts["test"]
    test_scores = detector.scores(test["path"].tolist())
    metrics = detect.detector_metrics(test_scores, test["generated"].to_numpy(bool), budgets, thresholds, resamples, seed)
    from sklearn.metrics import roc_auc_score

    metrics.update(
        kind=kind,
        # What a choice among detectors may look at (the test figures may not).
        validation_auroc=float(roc_auc_score(validation["generated"].to_numpy(bool), validation_scores)),
        thresholds={detect.budget_key(b): t for b, t in thresholds.items()},
        images={name: {"real": int((~part["generated"]).sum()), "generated": int(part["generated"].sum())} for name, part in parts.items()},
    )
    scores = pd.DataFrame({"path": to_score.astype(str).to_numpy(), "score": detector.scores(to_score.tolist()) if len(to_score) else np.zeros(0)})
    return detector, metrics, scores


def audit_format_parity(labelled: pd.DataFrame, seed: int, resamples: int, near_chance: float) -> dict:
    """The format-only detector on the labelled set: train on its train split, measure on test."""
    from contam import detect

    part = labelled[labelled["split"].isin(["train", "test"])]
    features = detect.format_features(part["path"].tolist())
    result = detect.format_audit(features, part["generated"].to_numpy(bool), part["split"].to_numpy(), seed, resamples, near_chance)
    result["images"] = {"train": int((part["split"] == "train").sum()), "test": int((part["split"] == "test").sum())}
    return result
