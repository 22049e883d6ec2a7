"""Stage evaluate: top-1/top-5 and per-class accuracy on real test sets.

Out-of-distribution sets (ImageNet-A, -R, ...) may cover only some classes; their
logits are restricted to the classes present, so a model is never marked wrong
for a class the set cannot contain.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from contam.io import write_json
from contam.models import ManifestDataset, create_model, decode_device, eval_transform

log = logging.getLogger(__name__)


def load_classifier(weights: str | Path, model_config: dict, num_classes: int, device: torch.device) -> torch.nn.Module:
    model = create_model(model_config["arch"], num_classes, model_config.get("kwargs"))
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval()


@torch.no_grad()
def predict(model: torch.nn.Module, index: pd.DataFrame, image_size: int, crop_ratio: float, device: torch.device, batch_size: int, num_workers: int, decode: str = "cpu") -> np.ndarray:
    dataset = ManifestDataset(index, eval_transform(image_size, crop_ratio), decode=decode_device(decode, torch.device(device)))
    workers = dataset.loader_options(num_workers, pin_memory=False)["num_workers"]
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    chunks = [model(images.to(device)).float().cpu() for images, _ in tqdm(loader, desc="evaluate", mininterval=10)]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)


def accuracy(logits: np.ndarray, labels: np.ndarray, num_classes: int, classes: np.ndarray | None = None) -> dict:
    """Top-1, top-5 and per-class top-1; ``classes`` restricts the logits to a subset."""
    if classes is not None:
        logits = logits[:, classes]
        lookup = {int(c): i for i, c in enumerate(classes)}
        targets = np.array([lookup[int(l)] for l in labels])
    else:
        targets = labels
    k = min(5, logits.shape[1])
    topk = np.argsort(-logits, axis=1)[:, :k]
    top1 = topk[:, 0] == targets
    top5 = (topk == targets[:, None]).any(axis=1)
    per_class = {}
    for c in np.unique(labels):
        mask = labels == c
        per_class[str(int(c))] = float(top1[mask].mean())
    return {"n": int(len(labels)), "top1": float(top1.mean()), "top5": float(top5.mean()), "per_class_top1": per_class}


def evaluate_sets(model, model_config: dict, sets: dict[str, pd.DataFrame], num_classes: int, crop_ratio: float, device, batch_size: int, num_workers: int, restrict: set[str], decode: str = "cpu") -> dict:
    results = {}
    for name, index in sets.items():
        logits = predict(model, index, model_config["image_size"], crop_ratio, device, batch_size, num_workers, decode)
        labels = index["label"].to_numpy(np.int64)
        classes = np.unique(labels) if name in restrict else None
        results[name] = accuracy(logits, labels, num_classes, classes)
        if classes is not None:
            results[name]["classes"] = int(len(classes))
        log.info("%s: top-1 %.4f top-5 %.4f on %d images", name, results[name]["top1"], results[name]["top5"], len(labels))
    return results


def software_versions() -> dict:
    """Installed versions, read from package metadata (importing diffusers costs seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "timm", "diffusers", "transformers", "accelerate", "numpy", "pandas", "snakemake"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


# ---- metrics.json: its one writer and its one reader -------------------------
#
# {"run": {"source", "ratio", "model", "seed"}, "processes": training processes
#  (the effective batch is batch_size x processes), "device": what evaluated,
#  "test": accuracy, "validation": accuracy (when the real index has that split),
#  "ood": {name: accuracy}, "fingerprint": the training run's fingerprint,
#  "manifest_sha256", "versions"}


def metrics_record(run: dict, processes: int, device: str, results: dict[str, dict], fingerprint: str, manifest_sha256: str, versions: dict) -> dict:
    """The metrics.json record of one run from :func:`evaluate_sets`' ``results``.

    ``results`` must hold "test"; "validation" is kept apart when present, and
    every other set counts as out-of-distribution.
    """
    if "test" not in results:
        raise ValueError(f"results lack the test set (they hold {sorted(results)})")
    record = {"run": run, "processes": int(processes), "device": str(device), "test": results["test"]}
    if "validation" in results:
        record["validation"] = results["validation"]
    record["ood"] = {name: result for name, result in results.items() if name not in ("test", "validation")}
    record.update(fingerprint=fingerprint, manifest_sha256=manifest_sha256, versions=versions)
    return record


def write_metrics(record: dict, path: str | Path) -> None:
    missing = {"run", "processes", "test"} - set(record)
    if missing:
        raise ValueError(f"metrics record lacks {sorted(missing)}")
    write_json(record, path)


def read_metrics(path: str | Path) -> dict:
    import json

    return json.loads(Path(path).read_text())
