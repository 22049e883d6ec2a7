"""Glue for rule train: see contam.train (one process) and contam.train_cli (several GPUs)."""

import sys

from contam import identity, logs, prepare, train, train_cli
from contam.devices import describe, pick_device
from contam.io import read_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
settings = sm.params.settings
execution = sm.config["execution"]
# prepare.enabled: the cached copies' records are inputs too (their folder names the settings).
cached = list(sm.input.cached)
fingerprint = identity.run_fingerprint(settings, sm.input.manifest, list(sm.input.indexes) + cached)
out_dir = str(sm.output.weights).rsplit("/", 1)[0]
device = pick_device(execution["device"], gpus=sm.resources.get("gpu", 0), allow_cpu_fallback=execution["allow_cpu_fallback"])
log.info("device: %s; %d training process(es)", describe(device), settings["processes"])
job = {
    "model": settings["model"],
    "recipe": settings["recipe"],
    "num_classes": settings["num_classes"],
    "seed": settings["seed"],
    "out_dir": out_dir,
    "fingerprint": fingerprint,
    "num_workers": execution["num_workers"],
    "processes": settings["processes"],
    "decode": execution["decode"],
    "cached": cached,
}
if settings["processes"] > 1:
    # One process per GPU of this node, through accelerate.
    job.update(manifest=str(sm.input.manifest), device=str(device))
    rc = train_cli.launch(job, settings["processes"], threads=sm.threads, stream=sys.stderr)
    if rc != 0:
        sys.exit(f"training on {settings['processes']} processes failed or was preempted (exit status {rc}); see {sm.log[0]}")
    log.info("trained on %d processes", settings["processes"])
else:
    manifest = read_parquet(sm.input.manifest)
    if cached:
        manifest = prepare.cached_paths(manifest, [read_parquet(path) for path in cached])
        log.info("reading the cached copies (prepare.enabled)")
    summary = train.train(
        manifest,
        settings["model"],
        settings["recipe"],
        settings["num_classes"],
        settings["seed"],
        out_dir=out_dir,
        fingerprint=fingerprint,
        device=device,
        num_workers=execution["num_workers"],
        processes=settings["processes"],
        decode=execution["decode"],
    )
    log.info("trained: %s", summary)
