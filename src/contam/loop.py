"""Stage build_loop_manifest: the training data of generation g of the self-consuming loop.

Generation 0 is the generative model trained on real data (the contamination
study's ratio-0 unit). Generation g >= 1 is trained on a manifest built from the
real data and the samples of generations < g, as its regime says:

* ``replace`` (fully synthetic): every real training image is replaced by a
  sample of generation g-1 (Shumailov et al. 2024; Alemohammad et al. 2024's
  "fully synthetic loop").
* ``augment`` (synthetic plus the fixed real set): a share ``lambda`` of the real
  training images is replaced by samples of generation g-1; the rest stay
  (Bertrand et al. 2024's mixed retraining, at a constant dataset size).
* ``accumulate``: the real training images plus every sample of generations
  0..g-1; the data grows each generation (Gerstgrasser et al. 2024).
* ``fresh``: a fresh draw of real images each generation, from the pool of
  ``fresh_splits``, with a share ``lambda`` replaced by samples of generation g-1
  (Alemohammad et al. 2024's "fresh data loop").

Replacement goes through ``contam.mix.mix``, the classification study's mixing,
so class balance, nesting and byte-identity hold here too. Each manifest has the
classification manifest's columns plus ``generation``: the generation whose
model made the image (null for real images).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from contam.layout import BASELINE_SOURCE
from contam.mix import (
    MANIFEST_COLUMNS,
    REAL_ORIGIN,
    as_manifest,
    mix,
    rank_within_class,
    sorted_by_path,
)
from contam.seeds import rng

REGIMES = ("replace", "augment", "accumulate", "fresh")
LOOP_COLUMNS = [*MANIFEST_COLUMNS, "generation"]
GENERATED_ORIGIN = "generated"


def fresh_real_draw(pool: pd.DataFrame, class_sizes: np.ndarray, generation: int, seed: int) -> pd.DataFrame:
    """``class_sizes[c]`` real rows of each class c, drawn anew for each generation."""
    pool = sorted_by_path(pool)
    labels = pool["label"].to_numpy(np.int64)
    ranks = rank_within_class(labels, rng(seed, "fresh-real", generation).random(len(pool)))
    available = np.bincount(labels, minlength=len(class_sizes))[: len(class_sizes)]
    if np.any(available < class_sizes):
        c = int(np.argmax(available < class_sizes))
        raise ValueError(f"the fresh real pool has {int(available[c])} images of class {c}, fewer than the {int(class_sizes[c])} each generation needs")
    keep = ranks < class_sizes[np.minimum(labels, len(class_sizes) - 1)]
    return pool[keep].reset_index(drop=True)


def loop_manifest(
    regime: str,
    generation: int,
    real: pd.DataFrame,
    samples: dict[int, pd.DataFrame],
    lam: float,
    seed: int,
    fresh_splits: list[str] | tuple[str, ...] = ("train", "control"),
) -> pd.DataFrame:
    """The manifest of generation ``generation`` (>= 1) under ``regime``.

    ``real`` is the real index (with its ``split`` column); ``samples[k]`` is the
    samples index of generation k's model, for every k < ``generation`` that the
    regime uses. ``seed`` is the mixing seed.
    """
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; expected one of {', '.join(REGIMES)}")
    if generation < 1:
        raise ValueError(f"generation {generation}: generation 0 is trained on real data and needs no loop manifest")
    needed = range(generation) if regime == "accumulate" else [generation - 1]
    missing = [k for k in needed if k not in samples]
    if missing:
        raise ValueError(f"regime {regime!r} at generation {generation} needs the samples of generation(s) {missing}")
    train = real[real["split"] == "train"]
    previous = samples[generation - 1]
    if regime == "replace":
        frame = mix(train, previous, 1.0, seed, source=regime, origin=GENERATED_ORIGIN)
    elif regime == "augment":
        frame = mix(train, previous, lam, seed, source=regime, origin=GENERATED_ORIGIN)
    elif regime == "fresh":
        sizes = np.bincount(train["label"].to_numpy(np.int64))
        draw = fresh_real_draw(real[real["split"].isin(list(fresh_splits))], sizes, generation, seed)
        frame = mix(draw, previous, lam, seed, source=regime, origin=GENERATED_ORIGIN)
    else:
        parts = [as_manifest(sorted_by_path(train), origin=REAL_ORIGIN, source=BASELINE_SOURCE)]
        parts += [as_manifest(sorted_by_path(samples[k]), origin=GENERATED_ORIGIN, source=regime) for k in range(generation)]
        frame = pd.concat(parts, ignore_index=True)[MANIFEST_COLUMNS]
    return with_generations(frame, samples)


def with_generations(frame: pd.DataFrame, samples: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """``frame`` with the ``generation`` column: which generation made each image (null: real)."""
    made_by = pd.concat([pd.Series(k, index=pd.Index(s["path"].astype(str))) for k, s in samples.items()]) if samples else pd.Series(dtype=np.int64)
    generation = made_by.reindex(frame["path"].astype(str).to_numpy()).to_numpy()
    real = (frame["origin"] == REAL_ORIGIN).to_numpy()
    values = pd.array(np.where(real, np.nan, generation), dtype="Float64").astype("Int64")
    if pd.isna(values[~real]).any():
        raise ValueError("a generated row of the manifest is not among the samples it was drawn from")
    return frame.assign(generation=values)[LOOP_COLUMNS]


def composition(manifest: pd.DataFrame) -> dict:
    """What a generative model was trained on: image counts by origin and by generation."""
    by_origin = manifest["origin"].astype(str).value_counts().sort_index()
    result = {"images": len(manifest), "by_origin": {k: int(v) for k, v in by_origin.items()}}
    if "generation" in manifest:
        made = manifest["generation"].dropna().astype(int).value_counts().sort_index()
        result["by_generation"] = {str(k): int(v) for k, v in made.items()}
    else:
        result["by_generation"] = {}
    return result
