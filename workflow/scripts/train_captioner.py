"""Glue for rule train_captioner: see contam.captioner (one process) and contam.train_cli (several GPUs)."""

import sys
from pathlib import Path

from contam import captioner, identity, logs, train_cli
from contam.devices import describe, pick_device
from contam.io import read_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
settings = sm.params.settings
execution = sm.config["execution"]
fingerprint = identity.run_fingerprint(settings, sm.input.manifest, [sm.input.captioned])
out_dir = str(Path(sm.output.weights).parent)
device = pick_device(execution["device"], gpus=sm.resources.get("gpu", 0), allow_cpu_fallback=execution["allow_cpu_fallback"])
log.info("device: %s; %d training process(es)", describe(device), settings["processes"])
if settings["processes"] > 1:
    job = {
        "task": "captioning",
        "manifest": str(sm.input.manifest),
        "captioner": settings["captioner"],
        "recipe": settings["recipe"],
        "seed": settings["seed"],
        "out_dir": out_dir,
        "fingerprint": fingerprint,
        "device": str(device),
        "processes": settings["processes"],
        "num_workers": execution["num_workers"],
    }
    rc = train_cli.launch(job, settings["processes"], threads=sm.threads, stream=sys.stderr)
    if rc != 0:
        sys.exit(f"training on {settings['processes']} processes failed or was preempted (exit status {rc}); see {sm.log[0]}")
else:
    summary = captioner.train_captioner(
        read_parquet(sm.input.manifest),
        settings["captioner"],
        settings["recipe"],
        settings["seed"],
        out_dir=out_dir,
        fingerprint=fingerprint,
        device=device,
        processes=settings["processes"],
        num_workers=execution["num_workers"],
    )
    log.info("trained: %s", summary)
