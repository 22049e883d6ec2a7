"""Glue for rule build_loop_manifest: see contam.loop."""

from contam import logs, loop
from contam.io import read_parquet, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
settings = sm.params.settings
samples = {g: read_parquet(path) for g, path in zip(settings["sample_generations"], sm.input.samples)}
manifest = loop.loop_manifest(
    settings["regime"],
    settings["generation"],
    read_parquet(sm.input.real),
    samples,
    lam=settings["lambda"],
    seed=settings["seed"],
    fresh_splits=settings["fresh_splits"],
)
log.info("%s generation %d: %s", settings["regime"], settings["generation"], loop.composition(manifest))
write_parquet(manifest, sm.output[0])
