"""Stages fit_and_score_generative_model (its scoring half) and score_reference_floor: how good and how diverse samples are.

A unit's samples are compared with half A of the real reference split, which no
generator and no feature extractor has seen, on the features of the judge (the
classifier trained on real data only, ``analysis.classifier``):

* FID, KID, precision, recall, density, coverage, overall and per class, with
  bootstrap intervals (``contam.analysis.compare_to_reference``);
* tail recall: recall restricted to the reference points of lowest density
  (``analysis.tail_recall``);
* class accuracy: the share of samples the judge assigns to the class they were
  drawn for.

The floor is half B of the reference scored the same way (real-vs-real). Every
comparison uses the same number of images per class (``comparison_size``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from contam import analysis

log = logging.getLogger(__name__)


@torch.no_grad()
def judge_logits(judge: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    """Logits from pre-logits features: the judge's head only, so features are computed once."""
    head = judge.get_classifier()
    weight = next(head.parameters())
    return head(torch.as_tensor(features, dtype=weight.dtype, device=weight.device)).float().cpu().numpy()


def class_accuracy(logits: np.ndarray, labels: np.ndarray) -> dict:
    labels = np.asarray(labels, np.int64)
    right = logits.argmax(1) == labels
    per_class = [{"label": int(c), "accuracy": float(right[labels == c].mean()), "n": int((labels == c).sum())} for c in np.unique(labels)]
    return {"class_accuracy": float(right.mean()) if len(right) else float("nan"), "class_accuracy_per_class": per_class}


def record(unit: dict, labels: np.ndarray, logits: np.ndarray, other: dict | None, reference: dict, settings: dict, extra: dict) -> dict:
    """A metrics record (the report's input): ``labels``/``logits`` of the scored images, ``other`` their features (None: half B)."""
    comparison = analysis.compare_with_settings(reference, other, settings)
    counts = np.bincount(labels) if len(labels) else np.zeros(1, int)
    return {
        "unit": unit,
        **extra,
        "samples": {"n": len(labels), "per_class": int(counts.min()), **extra.get("samples", {})},
        **class_accuracy(logits, labels),
        **{key: comparison[key] for key in ("whole", "per_class", "reference", "bootstrap")},
        "tail_fraction": settings["tail_fraction"],
    }


def unit_record(unit: dict, samples: pd.DataFrame, features: np.ndarray, logits: np.ndarray, reference: dict, settings: dict, training_data: dict, counts: dict) -> dict:
    """The metrics record of one unit's samples."""
    labels = samples["label"].to_numpy(np.int64)
    fit = counts.get("fit", {})
    extra = {
        # Images not kept (flat or wrong-sized): a collapsed model's blanks are counted, not hidden.
        "samples": {"dropped": int(counts.get("dropped_invalid", 0)) + int(counts.get("dropped_unsafe", 0))},
        "training_data": training_data,
        "fit": {"steps": fit.get("steps"), "final_loss": fit.get("final_loss"), "init": counts.get("init"), "resumed_at": fit.get("resumed_at")},
    }
    return record(unit, labels, logits, {"features": features, "labels": labels}, reference, settings, extra)


def floor_record(reference: dict, logits: np.ndarray, settings: dict) -> dict:
    """Half B of the reference scored like samples: the floor of every metric."""
    labels = np.asarray(reference["labels"], np.int64)
    _, half_b = analysis.reference_halves(labels, settings["seed"])
    unit = {"study": "floor", "track": "real-vs-real", "level": None, "seed": None, "arm": None, "origin": "real", "ratio": None, "regime": None, "generation": None}
    extra = {"samples": {"dropped": 0}, "training_data": {}, "fit": {}}
    return record(unit, labels[half_b], logits[half_b], None, reference, settings, extra)


def write_record(record: dict, path: str | Path) -> None:
    from contam.io import write_json

    missing = {"unit", "samples", "class_accuracy", "whole", "per_class"} - set(record)
    if missing:
        raise ValueError(f"generative metrics record lacks {sorted(missing)}")
    write_json(record, path)


def read_record(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def load_judge(weights, model_config: dict, num_classes: int, execution: dict, gpus: int):
    from contam.devices import job_device
    from contam.evaluate import load_classifier

    device = job_device(execution, gpus)
    return load_classifier(weights, model_config, num_classes, device), device


def score_unit(unit_block: dict, samples: pd.DataFrame, manifest: pd.DataFrame, counts: dict, reference: dict, judge_weights, settings: dict, execution: dict, gpus: int) -> dict:
    """A unit job's scoring: the judge's features of the samples, then every metric."""
    from contam.loop import composition

    model = settings["judge_model"]
    judge, device = load_judge(judge_weights, model, settings["num_classes"], execution, gpus)
    paths = samples["path"].astype(str).tolist()
    features = analysis.classifier_features(judge, paths, model["image_size"], settings["crop_ratio"], device, execution["eval_batch_size"], 0)
    record = unit_record(unit_block, samples, features, judge_logits(judge, features), reference, settings, composition(manifest), counts)
    log.info("%s: class accuracy %.3f; %s", unit_block["track"], record["class_accuracy"], {k: round(v, 4) for k, v in record["whole"].items() if isinstance(v, float)})
    return record


def score_floor(reference: dict, judge_weights, settings: dict, execution: dict, gpus: int) -> dict:
    """One score_reference_floor job: half B of the reference, scored like samples."""
    judge, _ = load_judge(judge_weights, settings["judge_model"], settings["num_classes"], execution, gpus)
    record = floor_record(reference, judge_logits(judge, reference["features"]), settings)
    log.info("real-vs-real floor: class accuracy %.3f; %s", record["class_accuracy"], {k: round(v, 4) for k, v in record["whole"].items() if isinstance(v, float)})
    return record
