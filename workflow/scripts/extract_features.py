"""Glue for rule extract_features: see contam.analysis."""

import numpy as np

from contam import analysis, logs
from contam.devices import pick_device
from contam.io import atomic_path, read_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
settings = sm.params.settings
execution = sm.config.get("execution", {})
device = pick_device(execution.get("device", "auto"))
# clean-fid would default to cuda and 12 workers; use what the job was given.
workers = min(execution.get("num_workers", 0), max(sm.threads - 1, 0))
batch_size = execution.get("eval_batch_size", 256)
index = read_parquet(sm.input.index)
if settings["split"]:
    index = index[index["split"] == settings["split"]]
index = analysis.sample_per_class(index, settings["max_per_class"], settings["seed"])
paths = index["path"].astype(str).tolist()
if settings["extractor"] == "classifier":
    from contam.evaluate import load_classifier

    model = load_classifier(sm.input.extractor, settings["model"], settings["num_classes"], device)
    features = analysis.classifier_features(model, paths, settings["model"]["image_size"], settings["crop_ratio"], device, batch_size, workers)
else:
    features = analysis.inception_features(settings["inception_weights"], paths, device, batch_size, workers)
log.info("%s: %d features of dimension %d", settings["feature_set"], *features.shape)
with atomic_path(sm.output[0]) as tmp, open(tmp, "wb") as handle:
    np.savez(handle, features=features, labels=index["label"].to_numpy(np.int64), paths=np.array(paths))
