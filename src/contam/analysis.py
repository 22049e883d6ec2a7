"""Stages extract_features and compare_distributions: how generated images differ.

The paper's explanation of the accuracy drop is that generated images are less
diverse: in precision/recall terms they cover only a sub-region of the real
distribution. We measure, for each contaminant source, on the whole set and
class by class:

* FID (exact, see ``frechet_distance``) and KID (clean-fid's ``kernel_distance``);
* precision, recall, density and coverage (Kynkäänniemi et al. 2019; Naeem et
  al. 2020), computed here (``prdc``; equal to the ``prdc`` package's values)
  so that resamples can be weighted;
* diversity: the mean pairwise feature distance within a class, relative to the
  real images of that class (1.0 = as diverse as real data).

Every set is compared with half A of a real *reference* split that neither the
feature extractor nor any generator has seen (a classifier's features of its own
training images would mix in its generalisation gap). Half B against half A is
the real-vs-real floor. All comparisons use the same number of images per class
(``comparison_size``), since FID and the k-NN metrics depend on the sample size,
and carry bootstrap intervals (``compare_to_reference``).

Features come from a configurable extractor: clean-fid's Inception (from an
explicit local weights file; nothing is downloaded) or, offline, the penultimate
layer of a classifier the workflow trained on real data only (the ratio-0 run).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from contam.seeds import rng

log = logging.getLogger(__name__)

INCEPTION_FILE = "inception-2015-12-05.pt"


def sample_per_class(index: pd.DataFrame, max_per_class: int, seed: int) -> pd.DataFrame:
    """At most ``max_per_class`` rows of each class, chosen reproducibly."""
    ordered = index.sort_values("path", ignore_index=True)
    keys = rng(seed, "analysis-sample").random(len(ordered))
    ordered = ordered.assign(_key=keys).sort_values(["label", "_key"])
    picked = ordered.groupby("label", group_keys=False).head(max_per_class)
    return picked.drop(columns="_key").sort_values("path", ignore_index=True)


@torch.no_grad()
def classifier_features(model: torch.nn.Module, paths: list[str], image_size: int, crop_ratio: float, device, batch_size: int, num_workers: int) -> np.ndarray:
    """Penultimate-layer (pre-logits) features of a timm classifier."""
    from torch.utils.data import DataLoader

    from contam.models import ManifestDataset, eval_transform

    table = pd.DataFrame({"path": paths, "label": 0})
    loader = DataLoader(ManifestDataset(table, eval_transform(image_size, crop_ratio)), batch_size=batch_size, num_workers=num_workers)
    chunks = []
    for images, _ in tqdm(loader, desc="features", mininterval=10):
        x = model.forward_features(images.to(device))
        chunks.append(model.forward_head(x, pre_logits=True).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def inception_features(weights: str | Path, paths: list[str], device, batch_size: int, num_workers: int) -> np.ndarray:
    """clean-fid's Inception features ("clean" resizing) from a local weights file."""
    from cleanfid.features import get_files_features
    from cleanfid.inception_torchscript import InceptionV3W

    weights = Path(weights)
    if weights.name != INCEPTION_FILE or not weights.exists():
        raise FileNotFoundError(f"analysis.inception_weights must point at an existing {INCEPTION_FILE}, got {weights}")
    model = InceptionV3W(str(weights.parent), download=False).to(device).eval()
    return get_files_features(paths, model=lambda x: model(x), num_workers=num_workers, batch_size=batch_size, device=device, mode="clean", verbose=True)


# ---- comparing a feature set with the held-out real reference split --------

PRDC_KEYS = ("precision", "recall", "density", "coverage")
BOOTSTRAP_METHOD = (
    "stratified resampling of both sets with replacement; k-NN radii skip a point's own copies and count "
    "other points' copies; 95 % percentile interval of the replicates, shifted so their median is the estimate"
)
RANGES = {"fid": (0, np.inf), "precision": (0, 1), "recall": (0, 1), "density": (0, np.inf), "coverage": (0, 1)}
NEIGHBOURS_KEPT = 64  # nearest neighbours listed per point; a resampled k-NN radius lies among them
_BLOCK = 2**22  # distance-matrix entries computed at a time (32 MiB of float64)


def reference_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves (A, B) of the reference split, stratified by class: sorted index arrays.

    Every member gets a seeded random key; within each class the members with the
    smaller keys form half A. An odd member goes to A, the half every source is
    compared with; B serves only as the real-vs-real floor.
    """
    labels = np.asarray(labels)
    keys = rng(seed, "reference-halves").random(len(labels))
    half_a, half_b = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[np.argsort(keys[members], kind="stable")]
        half_a.append(members[: (len(members) + 1) // 2])
        half_b.append(members[(len(members) + 1) // 2 :])
    return np.sort(np.concatenate(half_a)), np.sort(np.concatenate(half_b))


def comparison_size(reference_labels: np.ndarray, max_per_class: int, seed: int) -> int:
    """Images per class in every comparison: max_per_class, or fewer if a reference half has fewer."""
    labels = np.asarray(reference_labels)
    classes = np.unique(labels)
    size = max_per_class
    for name, half in zip("AB", reference_halves(labels, seed)):
        counts = np.array([np.sum(labels[half] == label) for label in classes])
        if counts.min() < 2:
            raise ValueError(f"reference split: half {name} has {counts.min()} image(s) of class {classes[counts.argmin()]}; every class needs at least 4 reference images")
        size = min(size, int(counts.min()))
    return size


def stratified_subsample(labels: np.ndarray, classes: np.ndarray, n_per_class: int, generator: np.random.Generator, what: str) -> np.ndarray:
    """Indices of exactly ``n_per_class`` members of each class, drawn without replacement, grouped by class."""
    labels = np.asarray(labels)
    extra = np.setdiff1d(np.unique(labels), classes)
    if len(extra):
        raise ValueError(f"{what} has classes the reference split lacks: {extra.tolist()}")
    picked = []
    for label in classes:
        members = np.flatnonzero(labels == label)
        if len(members) < n_per_class:
            raise ValueError(f"{what} has {len(members)} images of class {label}, fewer than the {n_per_class} per class that every comparison uses")
        picked.append(np.sort(generator.choice(members, n_per_class, replace=False)))
    return np.concatenate(picked)


def pairwise_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    squared = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return np.sqrt(np.maximum(squared, 0))


def nearest_neighbours(x: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances to and indices of each point's ``size`` nearest other points, nearest first."""
    n = len(x)
    size = min(size, n - 1)
    dist, index = np.empty((n, size)), np.empty((n, size), np.int64)
    step = max(1, _BLOCK // n)
    for start in range(0, n, step):
        d = pairwise_distances(x[start : start + step], x)
        rows = np.arange(len(d))
        d[rows, start + rows] = np.inf  # not its own neighbour
        part = np.argpartition(d, size - 1, axis=1)[:, :size]
        near = np.take_along_axis(d, part, 1)
        order = np.argsort(near, axis=1, kind="stable")
        dist[start : start + step] = np.take_along_axis(near, order, 1)
        index[start : start + step] = np.take_along_axis(part, order, 1)
    return dist, index


def manifolds(real: np.ndarray, fake: np.ndarray, nearest_k: int) -> dict:
    """What precision/recall/density/coverage need, for the full sets and any resample of them.

    Each point's nearest neighbours within its set, and every real-fake pair that
    is closer than the largest k-NN radius either point can have in a resample.
    """
    if min(len(real), len(fake)) <= nearest_k:
        raise ValueError(f"precision/recall with nearest_k={nearest_k} need more than {nearest_k} images per set, got {len(real)} and {len(fake)}")
    result = {"k": nearest_k, "real": nearest_neighbours(real, NEIGHBOURS_KEPT), "fake": nearest_neighbours(fake, NEIGHBOURS_KEPT)}
    real_limit, fake_limit = largest_radius(result["real"][0]), largest_radius(result["fake"][0])
    pairs = []
    step = max(1, _BLOCK // len(fake))
    for start in range(0, len(real), step):
        d = pairwise_distances(real[start : start + step], fake)
        i, j = np.nonzero((d < real_limit[start : start + step, None]) | (d < fake_limit[None, :]))
        pairs.append((start + i, j, d[i, j]))
    result["pairs"] = tuple(np.concatenate(p) for p in zip(*pairs))
    return result


def largest_radius(dist: np.ndarray) -> np.ndarray:
    """Bound on each point's k-NN radius in any resample (see knn_radii)."""
    if dist.shape[1] == len(dist) - 1:  # every other point listed: a resample may leave fewer than k
        return np.full(len(dist), np.inf)
    return dist[:, -1]


def knn_radii(neighbours: tuple[np.ndarray, np.ndarray], weights: np.ndarray, k: int) -> np.ndarray:
    """Distance to the k-th nearest other point, counting each point ``weights`` times.

    A point's own copies in a resample are not its neighbours, so no radius is 0
    merely because a point was drawn twice; other points count with their
    multiplicity, so a resample of n points has the radii of n points, not of
    its ~0.63 n distinct ones.
    """
    dist, index = neighbours
    cumulative = np.cumsum(weights[index], axis=1)
    enough = cumulative[:, -1] >= k
    radii = dist[np.arange(len(dist)), np.argmax(cumulative >= k, axis=1)]
    if dist.shape[1] == len(dist) - 1:
        radii[~enough] = np.inf
    elif np.any(~enough & (weights > 0)):
        raise RuntimeError(f"a resampled point has fewer than {k} neighbours among its {dist.shape[1]} nearest; raise NEIGHBOURS_KEPT")
    return radii


def prdc(m: dict, real_weights: np.ndarray | None = None, fake_weights: np.ndarray | None = None) -> dict:
    """Precision, recall, density and coverage (Naeem et al. 2020) of a weighted resample.

    Weights are multiplicities (all 1: the ``prdc`` package's values).
    """
    k, (i, j, d) = m["k"], m["pairs"]
    wr = np.ones(len(m["real"][0])) if real_weights is None else np.asarray(real_weights, float)
    wf = np.ones(len(m["fake"][0])) if fake_weights is None else np.asarray(fake_weights, float)
    live = (wr[i] > 0) & (wf[j] > 0)
    in_real_ball = live & (d < knn_radii(m["real"], wr, k)[i])
    in_fake_ball = live & (d < knn_radii(m["fake"], wf, k)[j])
    return {
        "precision": float(wf[np.unique(j[in_real_ball])].sum() / wf.sum()),
        "recall": float(wr[np.unique(i[in_fake_ball])].sum() / wr.sum()),
        "density": float((wr[i] * wf[j])[in_real_ball].sum() / (k * wf.sum())),
        "coverage": float(wr[np.unique(i[in_real_ball])].sum() / wr.sum()),
    }


def tail_recall(m: dict, fraction: float) -> dict:
    """Recall restricted to the real points of lowest density: do the tails survive?

    The tail is the ``fraction`` of real points with the largest k-NN radius
    among the real points (at least one point); a tail point counts as recalled
    when it lies in some other-set point's k-NN ball, as in ``prdc``'s recall.
    """
    k, (i, j, d) = m["k"], m["pairs"]
    n_real, n_fake = len(m["real"][0]), len(m["fake"][0])
    real_radii = knn_radii(m["real"], np.ones(n_real), k)
    size = max(1, int(np.ceil(fraction * n_real)))
    tail = np.argsort(-real_radii, kind="stable")[:size]
    recalled = np.zeros(n_real, bool)
    recalled[np.unique(i[d < knn_radii(m["fake"], np.ones(n_fake), k)[j]])] = True
    return {"tail_recall": float(recalled[tail].mean()), "tail_size": int(size)}


def covariance_factor(x: np.ndarray) -> np.ndarray:
    """F with F @ F.T == np.cov(x, rowvar=False), d x min(n, d)."""
    centred = x - x.mean(0)
    if len(x) <= x.shape[1]:
        return centred.T / np.sqrt(len(x) - 1)
    values, vectors = np.linalg.eigh(centred.T @ centred / (len(x) - 1))
    return vectors * np.sqrt(np.clip(values, 0, None))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID of two feature sets, without a d x d matrix square root.

    For any factors cov_a = Fa Fa.T and cov_b = Fb Fb.T, the nonzero eigenvalues
    of cov_a cov_b are the squared singular values of Fa.T Fb, so tr sqrtm(cov_a
    cov_b) is their sum. This equals clean-fid's frechet_distance (scipy sqrtm)
    to rounding where the covariances have full rank, and stays exact when n <= d
    makes them singular; with n <= d it costs an n x n SVD.
    """
    fa, fb = covariance_factor(a), covariance_factor(b)
    diff = a.mean(0) - b.mean(0)
    root_trace = np.linalg.svd(fa.T @ fb, compute_uv=False).sum()
    return float(diff @ diff + (fa * fa).sum() + (fb * fb).sum() - 2 * root_trace)


def kernel_distance(a: np.ndarray, b: np.ndarray, subsets: int, subset_size: int, seed: int) -> float:
    """KID (x1000 is common; we report the raw value) with clean-fid's estimator."""
    from cleanfid.fid import kernel_distance as kd

    size = min(subset_size, len(a), len(b))
    if size == len(a) == len(b):
        # Every subset is then a permutation of both whole sets, and the estimate
        # is invariant to order: one subset gives the value of any number.
        subsets = 1
    state = np.random.get_state()
    np.random.seed(seed % 2**32)  # clean-fid draws its subsets from numpy's global RNG
    try:
        return float(kd(a, b, num_subsets=subsets, max_subset_size=size))
    finally:
        np.random.set_state(state)


def mean_pairwise_distance(x: np.ndarray) -> float:
    if len(x) < 2:
        return float("nan")
    return float(pairwise_distances(x, x)[np.triu_indices(len(x), 1)].mean())


def bootstrap_replicates(reference: np.ndarray, other: np.ndarray, classes: int, m: dict, resamples: int, generator: np.random.Generator) -> dict:
    """FID and PRDC of ``resamples`` resamples; both sets are grouped by class in equal blocks.

    Each set is resampled independently, with replacement within each class
    (stratified), and PRDC counts multiplicities as ``knn_radii`` explains.
    """
    n = len(reference)
    offsets = np.repeat(np.arange(classes) * (n // classes), n // classes)
    out = {key: np.empty(resamples) for key in ("fid", *PRDC_KEYS)}
    for b in range(resamples):
        pick_ref = offsets + generator.integers(0, n // classes, n)
        pick_other = offsets + generator.integers(0, n // classes, n)
        out["fid"][b] = frechet_distance(reference[pick_ref], other[pick_other])
        values = prdc(m, np.bincount(pick_ref, minlength=n), np.bincount(pick_other, minlength=n))
        for key in PRDC_KEYS:
            out[key][b] = values[key]
    return out


def interval(estimate: float, replicates: np.ndarray, bounds: tuple[float, float]) -> list[float]:
    """95 % percentile interval of the replicates, shifted so that their median is ``estimate``.

    The replicates are off-centre, so their plain percentiles would be too:
    resampled FID carries about the estimator's finite-sample bias a second time
    (plain intervals missed the expected FID in every simulated trial), and a
    resample holds only ~63 % distinct points, which lowers precision and coverage
    (unions of balls). Their spread is sound; the shift removes the offset. The
    interval is clipped to the metric's range ``bounds``.
    """
    low, high = np.clip(estimate + np.percentile(replicates - np.median(replicates), [2.5, 97.5]), *bounds)
    return [float(low), float(high)]


def per_class_rows(reference: np.ndarray, other: np.ndarray, labels: np.ndarray, nearest_k: int) -> list[dict]:
    """PRDC and diversity of each class; both sets hold the same classes and counts (``labels``)."""
    rows = []
    for label in np.unique(labels):
        r, o = reference[labels == label], other[labels == label]
        row = {"label": int(label), "n_reference": len(r), "n_other": len(o), **prdc(manifolds(r, o, min(nearest_k, len(r) - 1)))}
        div_ref, div_other = mean_pairwise_distance(r), mean_pairwise_distance(o)
        row.update(diversity_reference=div_ref, diversity_other=div_other, diversity_ratio=div_other / div_ref if div_ref else float("nan"))
        rows.append(row)
    return rows


def compare_to_reference(
    reference: dict, other: dict | None, *, max_per_class: int, nearest_k: int, kid_subsets: int, kid_subset_size: int, bootstrap: int, seed: int, tail_fraction: float = 0.1
) -> dict:
    """Distances between a feature set and half A of the reference split, with bootstrap intervals.

    ``reference`` and ``other`` are dicts as read_features returns; ``other=None``
    compares half B with half A (the real-vs-real floor). Both sides are
    subsampled (seeded, stratified) to comparison_size images per class, so every
    metric of every comparison has the same sample size; half A's subsample is
    the same for every source.

    Bootstrap (``bootstrap`` resamples; BOOTSTRAP_METHOD): each set is resampled
    with replacement within each class, independently. A plain resample would
    put a point's copies into its own k-NN ball at distance 0, shrinking radii
    and biasing precision/recall/density/coverage; ``knn_radii`` skips a point's
    own copies and counts other points with their multiplicity, so a resample of
    n points keeps the radii of n points. ``tail_recall`` (a point estimate)
    restricts recall to half A's ``tail_fraction`` of lowest density. Resampling still shifts these
    statistics and FID (see ``interval``), so the 95 % percentile interval is
    re-centred on the estimate. In simulations (10 Gaussian classes of 20, d=64,
    k=5; same, narrowed and shifted distributions; 60 trials of B=100) these
    intervals held the expected value in 95-100 % of trials for every metric,
    while plain percentile intervals held FID's in none and coverage's in ~20 %,
    and half-sampling without replacement (m = n/2) reached only 33-92 %.
    """
    labels = np.asarray(reference["labels"])
    classes = np.unique(labels)
    n_per_class = comparison_size(labels, max_per_class, seed)
    half_a, half_b = reference_halves(labels, seed)
    what = "the compared set"
    if other is None:
        other, what = {key: np.asarray(reference[key])[half_b] for key in ("features", "labels")}, "half B of the reference split"
    pick_ref = half_a[stratified_subsample(labels[half_a], classes, n_per_class, rng(seed, "reference-subsample"), "half A of the reference split")]
    pick_other = stratified_subsample(np.asarray(other["labels"]), classes, n_per_class, rng(seed, "compared-subsample"), what)
    ref = np.asarray(reference["features"], np.float64)[pick_ref]
    oth = np.asarray(other["features"], np.float64)[pick_other]
    m = manifolds(ref, oth, nearest_k)
    whole = {"n_reference": len(ref), "n_other": len(oth), "fid": frechet_distance(ref, oth), "kid": kernel_distance(ref, oth, kid_subsets, kid_subset_size, seed), "kid_subset_size": min(kid_subset_size, len(ref)), **prdc(m), **tail_recall(m, tail_fraction)}
    replicates = bootstrap_replicates(ref, oth, len(classes), m, bootstrap, rng(seed, "bootstrap"))
    for key, values in replicates.items():
        whole[f"{key}_ci95"] = interval(whole[key], values, RANGES[key]) if bootstrap else None
    per_class = per_class_rows(ref, oth, labels[pick_ref], nearest_k)
    whole["diversity_ratio"] = float(np.nanmean([row["diversity_ratio"] for row in per_class]))
    for key in PRDC_KEYS:
        whole[f"class_mean_{key}"] = float(np.mean([row[key] for row in per_class]))
    return {"reference": {"n_per_class": n_per_class, "classes": len(classes)}, "whole": whole, "per_class": per_class, "bootstrap": {"resamples": bootstrap, "method": BOOTSTRAP_METHOD}}


def compare_with_settings(reference: dict, other: dict | None, settings: dict) -> dict:
    """``compare_to_reference`` with its options from a rule's settings (a comparison's or a unit's)."""
    return compare_to_reference(
        reference,
        other,
        max_per_class=settings["max_per_class"],
        nearest_k=settings["nearest_k"],
        kid_subsets=settings["kid_subsets"],
        kid_subset_size=settings["kid_subset_size"],
        bootstrap=settings["bootstrap"],
        seed=settings["seed"],
        tail_fraction=settings.get("tail_fraction", 0.1),
    )


# ---- file formats: each has its one writer and its one reader here ----------


def write_features(path: str | Path, features: np.ndarray, labels: np.ndarray, paths: list[str]) -> None:
    from contam.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, features=features, labels=np.asarray(labels, np.int64), paths=np.array(paths))


def read_features(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in ("features", "labels", "paths")}


def write_comparison(result: dict, path: str | Path) -> None:
    from contam.io import write_json

    write_json(result, path)


def read_comparison(path: str | Path) -> dict:
    import json

    return json.loads(Path(path).read_text())
