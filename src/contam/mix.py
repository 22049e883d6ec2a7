"""Stage mix: replace a share r of the real training images with contaminant images.

A manifest has one row per training image (``path``, ``label``, ``origin``,
``source``, ``prompt``, ``seed``, ``generator``, ``replaces``). No image is copied.

Replacement is class by class: class c keeps ``n_c - k_c`` of its ``n_c`` real
images and gets ``k_c = floor(r * n_c + 1/2)`` contaminant images of class c, so
the dataset size and class balance stay those of the real data.

Which images go is decided by one random key per real image, drawn from the mix
seed alone: at every ratio the replaced images are those with the smallest keys
in their class. So the images replaced at 0.2 are a subset of those replaced at
0.4, every arm (generated, control) replaces the same real images, and a
manifest is a pure function of (real index, contaminant index, ratio, seed).
Contaminant images are chosen the same way, from a key per contaminant image.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from contam.seeds import rng

MANIFEST_COLUMNS = ["path", "label", "class_name", "origin", "source", "prompt", "seed", "generator", "replaces"]


class NotEnoughImages(ValueError):
    pass


def replaced_per_class(class_sizes: np.ndarray, ratio: float) -> np.ndarray:
    """k_c = floor(r * n_c + 1/2): exact, monotone in r, so choices nest."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio {ratio} is outside [0, 1]")
    return np.floor(ratio * class_sizes + 0.5).astype(np.int64)


def rank_within_class(labels: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Position of each item among its class when sorted by key (0 = smallest)."""
    order = np.lexsort((keys, labels))
    sorted_labels = labels[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_labels)) + 1]
    run_lengths = np.diff(np.r_[starts, len(labels)])
    ranks_sorted = np.arange(len(labels)) - np.repeat(starts, run_lengths)
    ranks = np.empty(len(labels), dtype=np.int64)
    ranks[order] = ranks_sorted
    return ranks


def _blank(frame: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"path": frame["path"].to_numpy(), "label": frame["label"].to_numpy(np.int64), "class_name": frame["class_name"].to_numpy()})
    out["origin"] = frame["origin"].to_numpy() if "origin" in frame else "real"
    out["source"] = frame["source"].to_numpy() if "source" in frame else "real"
    for column in ("prompt", "generator"):
        out[column] = frame[column].to_numpy() if column in frame else None
    out["seed"] = pd.array(frame["seed"].to_numpy() if "seed" in frame else [pd.NA] * len(frame), dtype="Int64")
    out["replaces"] = None
    return out


def mix(
    real_train: pd.DataFrame,
    contaminant: pd.DataFrame | None,
    ratio: float,
    seed: int,
    source: str,
    origin: str,
) -> pd.DataFrame:
    """The manifest for one (source, ratio). ``contaminant`` may be None at ratio 0."""
    real = real_train.sort_values("path", ignore_index=True)
    labels = real["label"].to_numpy(np.int64)
    num_labels = int(labels.max()) + 1 if len(labels) else 0
    real_rank = rank_within_class(labels, rng(seed, "mix", "real").random(len(real)))
    sizes = np.bincount(labels, minlength=num_labels)
    k = replaced_per_class(sizes, ratio)
    manifest = _blank(real)
    replace = real_rank < k[labels]
    if not replace.any():
        return manifest[MANIFEST_COLUMNS]
    if contaminant is None or contaminant.empty:
        raise NotEnoughImages(f"source {source!r} has no images, but ratio {ratio} replaces {int(replace.sum())}")

    pool = contaminant.sort_values("path", ignore_index=True)
    pool_labels = pool["label"].to_numpy(np.int64)
    available = np.bincount(pool_labels, minlength=num_labels)[:num_labels]
    short = np.flatnonzero(available < k)
    if len(short):
        c = int(short[0])
        raise NotEnoughImages(
            f"source {source!r} has {int(available[c])} images of class {c} but ratio {ratio} "
            f"replaces {int(k[c])} of its {int(sizes[c])} real images ({len(short)} classes short); "
            "generate more images per class or lower the ratio"
        )
    pool_rank = rank_within_class(pool_labels, rng(seed, "mix", source).random(len(pool)))
    wanted = pool_rank < k[np.minimum(pool_labels, max(num_labels - 1, 0))]
    wanted &= pool_labels < num_labels
    chosen = np.flatnonzero(wanted)
    replaced = np.flatnonzero(replace)
    # Both sides hold exactly the (class, rank) pairs rank < k_c, so sorting each
    # by (class, rank) pairs the r-th replaced image of c with the r-th chosen one.
    chosen = chosen[np.lexsort((pool_rank[chosen], pool_labels[chosen]))]
    replaced = replaced[np.lexsort((real_rank[replaced], labels[replaced]))]
    incoming = _blank(pool.iloc[chosen])
    incoming["origin"] = origin
    incoming["source"] = source
    incoming["replaces"] = real["path"].to_numpy()[replaced]
    columns = {}
    for column in MANIFEST_COLUMNS:
        values = manifest[column].to_numpy(dtype=object, copy=True)
        values[replaced] = incoming[column].to_numpy(dtype=object)
        columns[column] = values
    out = pd.DataFrame(columns)
    out["label"] = out["label"].astype(np.int64)
    out["seed"] = pd.array(out["seed"], dtype="Int64")
    for column in ("path", "class_name", "origin", "source", "prompt", "generator", "replaces"):
        out[column] = out[column].astype(object).where(out[column].notna(), None)
    return out[MANIFEST_COLUMNS]
