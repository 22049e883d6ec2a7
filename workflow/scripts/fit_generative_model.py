"""Glue for rule fit_generative_model: see contam.generative."""

from contam import generative, identity, logs
from contam.io import read_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
settings = sm.params.settings
generative.fit_and_sample(
    read_parquet(sm.input.manifest),
    settings,
    unit_name=f"{sm.wildcards.track}/{sm.wildcards.level}/seed-{sm.wildcards.seed}",
    model_dir=sm.output.model,
    samples_path=sm.output.samples,
    counts_path=sm.output.counts,
    # A killed fit resumes only with the same settings, data and starting weights.
    fingerprint=identity.run_fingerprint({**settings, "init": [identity.weights_fingerprint(p) for p in sm.input.init]}, sm.input.manifest, sm.input.indexes),
    init_from=sm.input.init[0] if sm.input.init else None,
    execution=sm.config["execution"],
    gpus=sm.resources.get("gpu", 0),
    threads=sm.threads,
)
