"""Glue for rule evaluate: see contam.evaluate."""

from contam import evaluate, logs
from contam.devices import pick_device
from contam.io import file_sha256, read_parquet, stable_hash, write_json

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
settings = sm.params.settings
execution = sm.config.get("execution", {})
device = pick_device(execution.get("device", "auto"))
log.info("device: %s", device)
model = evaluate.load_classifier(sm.input.weights, settings["model"], settings["num_classes"], device)
real = read_parquet(sm.input.real)
sets = {"test": real[real["split"] == "test"]}
sets.update({name: read_parquet(path) for name, path in zip(sm.params.ood_sets, sm.input.ood)})
results = evaluate.evaluate_sets(
    model, settings["model"], sets, settings["num_classes"], sm.params.crop_ratio, device,
    execution.get("eval_batch_size", 256), execution.get("num_workers", 0), restrict=set(sm.params.ood_sets),
)
write_json(
    {
        "run": {**dict(sm.wildcards.items()), "seed": int(sm.wildcards.seed)},
        "test": results.pop("test"),
        "ood": results,
        "config_hash": stable_hash(settings),
        "manifest_sha256": file_sha256(sm.input.manifest),
        "versions": evaluate.software_versions(),
    },
    sm.output[0],
)
