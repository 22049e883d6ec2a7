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

from contam.layout import BASELINE_SOURCE
from contam.seeds import rng

# The origin of real rows; the baseline source names where they sit in results/.
REAL_ORIGIN = "real"

MANIFEST_COLUMNS = ["path", "label", "class_name", "origin", "source", "prompt", "seed", "generator", "replaces"]


class NotEnoughImages(ValueError):
    pass


def replaced_per_class(class_sizes: np.ndarray, ratio: float) -> np.ndarray:
    """k_c = floor(r * n_c + 1/2): exact, monotone in r, so choices nest."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio {ratio} is outside [0, 1]")
    return np.floor(ratio * class_sizes + 0.5).astype(np.int64)


def rank_within_class(labels: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Position of each item among its class when sorted by key (0 = smallest).

    Keys lie in [0, 1), so ``label + key`` sorts by class, then key, in one argsort.
    """
    order = np.argsort(labels.astype(np.float64) + keys)
    sorted_labels = labels[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_labels)) + 1]
    run_lengths = np.diff(np.r_[starts, len(labels)])
    ranks = np.empty(len(labels), dtype=np.int64)
    ranks[order] = np.arange(len(labels)) - np.repeat(starts, run_lengths)
    return ranks


def as_manifest(frame: pd.DataFrame, origin: str, source: str) -> pd.DataFrame:
    """``frame``'s rows with the manifest's columns and types (no Python objects per row)."""
    n = len(frame)

    zeros = np.zeros(n, dtype=np.intp)

    def text(column: str, constant: str | None = None) -> pd.Series:
        # Columns stay Arrow strings end to end: a Python object per row would
        # cost seconds and gigabytes at ImageNet scale.
        if constant is not None or column not in frame:
            return pd.Series(pd.array([constant], dtype="str")).take(zeros).reset_index(drop=True)
        return frame[column].astype("str").reset_index(drop=True)

    seeds = frame["seed"].to_numpy() if "seed" in frame else np.full(n, pd.NA)
    return pd.DataFrame(
        {
            "path": text("path"),
            "label": frame["label"].to_numpy(np.int64),
            "class_name": text("class_name"),
            "origin": text("origin", origin),
            "source": text("source", source),
            "prompt": text("prompt"),
            "seed": pd.array(seeds, dtype="Int64"),
            "generator": text("generator"),
            "replaces": text("replaces"),
        }
    )


def sorted_by_path(frame: pd.DataFrame) -> pd.DataFrame:
    # Indexes are written sorted by path; checking is cheaper than re-sorting.
    if frame["path"].is_monotonic_increasing:
        return frame.reset_index(drop=True)
    return frame.sort_values("path", ignore_index=True)


def mix(
    real_train: pd.DataFrame,
    contaminant: pd.DataFrame | None,
    ratio: float,
    seed: int,
    source: str,
    origin: str,
) -> pd.DataFrame:
    """The manifest for one (source, ratio). ``contaminant`` may be None at ratio 0.

    Rows keep the order of the real images sorted by path; each replaced real
    image's row holds its replacement.
    """
    real = sorted_by_path(real_train)
    labels = real["label"].to_numpy(np.int64)
    num_labels = int(labels.max()) + 1 if len(labels) else 0
    real_rank = rank_within_class(labels, rng(seed, "mix", "real").random(len(real)))
    sizes = np.bincount(labels, minlength=num_labels)
    k = replaced_per_class(sizes, ratio)
    replace = real_rank < k[labels]
    if not replace.any():
        return as_manifest(real, origin=REAL_ORIGIN, source=BASELINE_SOURCE)[MANIFEST_COLUMNS]
    if contaminant is None or contaminant.empty:
        raise NotEnoughImages(f"source {source!r} has no images, but ratio {ratio} replaces {int(replace.sum())}")

    pool = sorted_by_path(contaminant)
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
    in_range = pool_labels < num_labels
    wanted = in_range & (pool_rank < k[np.where(in_range, pool_labels, 0)])
    chosen = np.flatnonzero(wanted)
    replaced = np.flatnonzero(replace)
    # Both sides hold exactly the (class, rank) pairs rank < k_c, so sorting each
    # by (class, rank) pairs the r-th replaced image of c with the r-th chosen one.
    chosen = chosen[np.lexsort((pool_rank[chosen], pool_labels[chosen]))]
    replaced = replaced[np.lexsort((real_rank[replaced], labels[replaced]))]
    kept = np.flatnonzero(~replace)
    incoming = pool.iloc[chosen].reset_index(drop=True).assign(replaces=real["path"].to_numpy()[replaced])
    parts = [
        as_manifest(real.iloc[kept], origin=REAL_ORIGIN, source=BASELINE_SOURCE),
        as_manifest(incoming, origin=origin, source=source),
    ]
    out = pd.concat(parts, ignore_index=True)
    position = np.concatenate([kept, replaced])
    return out.take(np.argsort(position, kind="stable")).reset_index(drop=True)[MANIFEST_COLUMNS]
