"""Stage extract_features: features of one image set for the distribution analysis.

A feature set is the real reference split (never seen by the extractor or any
generator) or a contaminant source's pool, sampled reproducibly per class. The
extractor is the real-only classifier's pre-logits layer or clean-fid's
Inception (``contam.analysis`` computes both and owns the .npz format).
"""

from __future__ import annotations

import logging

import pandas as pd

from contam import analysis
from contam.devices import job_device

log = logging.getLogger(__name__)


def extract_feature_set(index: pd.DataFrame, settings: dict, extractor_weights, execution: dict, gpus: int, threads: int, out_path) -> None:
    device = job_device(execution, gpus)
    # clean-fid would default to 12 workers; use what the job was given.
    workers = min(execution["num_workers"], max(threads - 1, 0))
    batch_size = execution["eval_batch_size"]
    if settings["split"]:
        index = index[index["split"] == settings["split"]]
    index = analysis.sample_per_class(index, settings["max_per_class"], settings["seed"])
    paths = index["path"].astype(str).tolist()
    if settings["extractor"] == "classifier":
        from contam.evaluate import load_classifier

        model = load_classifier(extractor_weights, settings["model"], settings["num_classes"], device)
        features = analysis.classifier_features(model, paths, settings["model"]["image_size"], settings["crop_ratio"], device, batch_size, workers)
    else:
        features = analysis.inception_features(settings["inception_weights"], paths, device, batch_size, workers)
    log.info("%s: %d features of dimension %d", settings["feature_set"], *features.shape)
    analysis.write_features(out_path, features, index["label"].to_numpy(), paths)
