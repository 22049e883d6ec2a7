"""Glue for rule fit_and_score_generative_model: see contam.generative and contam.score_samples."""

from contam import analysis, generative, identity, logs, score_samples
from contam.io import read_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
settings = sm.params.settings
manifest = read_parquet(sm.input.manifest)
execution, gpus = sm.config["execution"], sm.resources.get("gpu", 0)
samples, counts = generative.fit_and_sample(
    manifest,
    settings,
    unit_name=f"{sm.wildcards.track}/{sm.wildcards.level}/seed-{sm.wildcards.seed}",
    model_dir=sm.output.model,
    samples_path=sm.output.samples,
    counts_path=sm.output.counts,
    # A killed fit resumes only with the same settings, data and starting weights.
    fingerprint=identity.run_fingerprint({**settings, "init": [identity.weights_fingerprint(p) for p in sm.input.init]}, sm.input.manifest, sm.input.indexes),
    init_from=sm.input.init[0] if sm.input.init else None,
    execution=execution,
    gpus=gpus,
    threads=sm.threads,
)
record = score_samples.score_unit(
    sm.params.unit,
    samples=samples,
    manifest=manifest,
    counts=counts,
    reference=analysis.read_features(sm.input.reference),
    judge_weights=sm.input.judge,
    settings=sm.params.score,
    execution=execution,
    gpus=gpus,
)
score_samples.write_record(record, sm.output.metrics)
