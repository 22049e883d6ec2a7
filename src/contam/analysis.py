"""Stages extract_features and compare_distributions: how generated images differ.

The paper's explanation of the accuracy drop is that generated images are less
diverse: in precision/recall terms they cover only a sub-region of the real
distribution. We measure, for each contaminant source against the real training
images, on the whole set and class by class:

* FID and KID (clean-fid's ``frechet_distance`` and ``kernel_distance`` on features);
* precision, recall, density and coverage (Kynkäänniemi et al. 2019; Naeem et
  al. 2020) with the ``prdc`` package;
* diversity: the mean pairwise feature distance within a class, relative to the
  real images of that class (1.0 = as diverse as real data).

Features come from a configurable extractor: clean-fid's Inception (from an
explicit local weights file; nothing is downloaded) or, offline, the penultimate
layer of a classifier the workflow trained on real data only (the ratio-0 run).
"""

from __future__ import annotations

import contextlib
import io
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


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    from cleanfid.fid import frechet_distance as fd

    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(fd(mu_a, sigma_a, mu_b, sigma_b))


def kernel_distance(a: np.ndarray, b: np.ndarray, subsets: int, subset_size: int, seed: int) -> float:
    """KID (x1000 is common; we report the raw value) with clean-fid's estimator."""
    from cleanfid.fid import kernel_distance as kd

    state = np.random.get_state()
    np.random.seed(seed % 2**32)  # clean-fid draws its subsets from numpy's global RNG
    try:
        return float(kd(a, b, num_subsets=subsets, max_subset_size=min(subset_size, len(a), len(b))))
    finally:
        np.random.set_state(state)


def prdc(real: np.ndarray, fake: np.ndarray, nearest_k: int) -> dict:
    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints sizes on every call
        result = compute_prdc(real_features=real, fake_features=fake, nearest_k=nearest_k)
    return {k: float(v) for k, v in result.items()}


def mean_pairwise_distance(x: np.ndarray) -> float:
    if len(x) < 2:
        return float("nan")
    squared = (x * x).sum(1)
    d2 = np.maximum(squared[:, None] + squared[None, :] - 2 * x @ x.T, 0)
    return float(np.sqrt(d2)[np.triu_indices(len(x), 1)].mean())


def compare(real: np.ndarray, real_labels: np.ndarray, other: np.ndarray, other_labels: np.ndarray, nearest_k: int = 5, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0) -> dict:
    """Whole-set and per-class distances between real features and another set's."""
    real = real.astype(np.float64)
    other = other.astype(np.float64)
    whole = {
        "n_real": int(len(real)),
        "n_other": int(len(other)),
        "fid": frechet_distance(real, other),
        "kid": kernel_distance(real, other, kid_subsets, kid_subset_size, seed),
        **prdc(real, other, nearest_k),
    }
    per_class = []
    diversity_ratios = []
    for label in np.intersect1d(np.unique(real_labels), np.unique(other_labels)):
        r, o = real[real_labels == label], other[other_labels == label]
        k = min(nearest_k, len(r) - 1, len(o) - 1)
        row = {"label": int(label), "n_real": int(len(r)), "n_other": int(len(o))}
        if k >= 1:
            row.update(prdc(r, o, k))
        div_real, div_other = mean_pairwise_distance(r), mean_pairwise_distance(o)
        row.update(diversity_real=div_real, diversity_other=div_other, diversity_ratio=div_other / div_real if div_real else float("nan"))
        diversity_ratios.append(row["diversity_ratio"])
        per_class.append(row)
    whole["diversity_ratio"] = float(np.nanmean(diversity_ratios)) if diversity_ratios else float("nan")
    for key in ("precision", "recall", "density", "coverage"):
        values = [row[key] for row in per_class if key in row]
        whole[f"class_mean_{key}"] = float(np.mean(values)) if values else float("nan")
    return {"whole": whole, "per_class": per_class}
