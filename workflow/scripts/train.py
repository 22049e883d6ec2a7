"""Glue for rule train: see contam.train."""

from contam import logs, train
from contam.devices import pick_device
from contam.io import file_sha256, read_parquet, stable_hash

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
settings = sm.params.settings
execution = sm.config.get("execution", {})
fingerprint = stable_hash({"settings": settings, "manifest": file_sha256(sm.input.manifest)})
summary = train.train(
    read_parquet(sm.input.manifest),
    settings["model"],
    settings["recipe"],
    settings["num_classes"],
    settings["seed"],
    out_dir=str(sm.output.weights).rsplit("/", 1)[0],
    fingerprint=fingerprint,
    device=pick_device(execution.get("device", "auto")),
    num_workers=execution.get("num_workers", 0),
)
log.info("trained: %s", summary)
