"""Glue for rule train: see contam.train (one process) and contam.train_cli (several GPUs)."""

import sys

from contam import logs, train, train_cli
from contam.devices import pick_device
from contam.io import file_sha256, read_parquet, stable_hash

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
settings = sm.params.settings
execution = sm.config.get("execution", {})
fingerprint = stable_hash({"settings": settings, "manifest": file_sha256(sm.input.manifest)})
out_dir = str(sm.output.weights).rsplit("/", 1)[0]
device = pick_device(execution.get("device", "auto"))
log.info("device: %s", device)
num_workers = execution.get("num_workers", 0)
gpus = int(sm.resources.get("gpu", 0) or 0)
if gpus > 1:
    # One process per GPU of this node, through accelerate.
    job = {
        "manifest": str(sm.input.manifest),
        "model": settings["model"],
        "recipe": settings["recipe"],
        "num_classes": settings["num_classes"],
        "seed": settings["seed"],
        "out_dir": out_dir,
        "fingerprint": fingerprint,
        "device": str(device),
        "num_workers": num_workers,
    }
    rc = train_cli.launch(job, gpus, threads=sm.threads, stream=sys.stderr)
    if rc != 0:
        sys.exit(f"training on {gpus} processes failed or was preempted (exit status {rc}); see {sm.log[0]}")
    log.info("trained on %d processes", gpus)
else:
    summary = train.train(
        read_parquet(sm.input.manifest),
        settings["model"],
        settings["recipe"],
        settings["num_classes"],
        settings["seed"],
        out_dir=out_dir,
        fingerprint=fingerprint,
        device=device,
        num_workers=num_workers,
    )
    log.info("trained: %s", summary)
