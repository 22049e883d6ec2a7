"""What names an image folder and fingerprints a run, built and hashed in one place.

Each rule's ``params`` are built here from the config, holding exactly what
changes that rule's output: Snakemake reruns a job when they change, and the
hashes below decide which finished files (generated images, a training
checkpoint) may be reused. Speed-only settings (batch sizes, devices, worker
counts, the shard count) are never part of them.

* A generated image is reused only if its folder id (generator settings plus a
  fingerprint of the generator's weight files) and its file name (prompt row
  plus a key of that row's prompt, label and seed) both match.
* A training checkpoint is resumed only if its fingerprint matches: the run's
  settings (model, recipe, seed, processes), the manifest, and the indexes its
  rows come from (which change when the images they list change).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from contam import config as contam_config
from contam.io import file_sha256, stable_hash
from contam.mix import REAL_ORIGIN
from contam.resources import resource_set

# Keys that decide only what happens to flagged images, or whether a hub may be
# asked for the weights: changing them must not move the finished images.
POLICY_KEYS = ("on_unsafe", "max_regenerations", "allow_download")
# Files in a model folder that describe a fit but do not change what it generates.
NOT_WEIGHTS = {"fit_log.csv", "fit_summary.json", "README.md"}


# ---- rule params ------------------------------------------------------------


def generation_settings(config: dict, source: str) -> dict:
    """Everything that changes a shard's images or index, and nothing else."""
    name = config["sources"][source]["generator"]
    return {
        "generator_name": name,
        "generator": config["generators"][name],
        "prompts": config["sources"][source].get("prompts", {}),
    }


def embedded_settings(config: dict, generator: str) -> dict:
    """The embedded generator is fitted on the real train split, so the real data settings count."""
    return {"generator": config["generators"][generator], "real": config["real"], "seed": config["seed"]}


def mix_settings(config: dict, source: str, ratio: str) -> dict:
    spec = config["sources"].get(source, {})
    return {
        "source": source,
        "origin": spec.get("origin", REAL_ORIGIN),
        "real_split": spec.get("real_split"),
        "ratio": float(ratio),
        "seed": config["seed"],
    }


def training_processes(config: dict) -> int:
    """One training process per GPU of the job; the effective batch grows with it."""
    return max(1, int(resource_set(config, "train")["gpu"]))


def run_settings(config: dict, model: str, seed: int | str) -> dict:
    return {
        "model": config["models"][model],
        "recipe": contam_config.training_recipe(config, model),
        "num_classes": contam_config.num_classes(config),
        "seed": int(seed),
        "processes": training_processes(config),
    }


# ---- hashes -----------------------------------------------------------------


def weights_fingerprint(model: str | Path) -> str:
    """A hash of every file of a model folder that changes what it generates.

    A hub id (no such folder) is fingerprinted by its name: its files are known
    only after the hub has been asked, and hub downloads are opt-in.
    """
    root = Path(model).expanduser()
    if not root.is_dir():
        return stable_hash({"hub_id": str(model)})
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.name not in NOT_WEIGHTS and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise FileNotFoundError(f"model folder {root} holds no files")
    return stable_hash({str(p.relative_to(root)): file_sha256(p) for p in files})


def settings_id(settings: dict, weights: str) -> str:
    """Id of an image folder: the generator's settings and its weights' fingerprint.

    The prompt rows are not part of it: each image's file name carries its own
    row key, so a folder is shared by every shard count and prompt table.
    """
    generator = {k: v for k, v in settings["generator"].items() if k not in POLICY_KEYS}
    return stable_hash({"generator": generator, "weights": weights})


def row_keys(rows: pd.DataFrame) -> list[str]:
    """Per prompt row, a short key of what decides its image and label: prompt, label, seed."""
    keys = []
    for prompt, label, seed in zip(rows["prompt"], rows["label"], rows["seed"]):
        label_text = "" if pd.isna(label) else str(int(label))
        text = f"{prompt}\x1f{label_text}\x1f{int(seed)}"
        keys.append(hashlib.blake2b(text.encode(), digest_size=5).hexdigest())
    return keys


def run_fingerprint(settings: dict, manifest: str | Path, indexes: list[str | Path]) -> str:
    """Fingerprint of a training run's inputs: settings, manifest and the indexes behind it.

    A manifest lists paths, not pixels; the indexes record what each image is
    (a content id for real images, the settings id and row key in a generated
    image's path), so images remade under the same paths change this too.
    """
    return stable_hash(
        {
            "settings": settings,
            "manifest": file_sha256(manifest),
            "indexes": sorted(file_sha256(p) for p in indexes),
        }
    )


def content_ids(paths: list[str | Path]) -> np.ndarray:
    """Cheap identities of image files: size and modification time (no read)."""
    out = []
    for path in paths:
        stat = Path(path).stat()
        out.append(f"{stat.st_size}:{stat.st_mtime_ns}")
    return np.array(out, dtype=object)
