"""Glue for rule score_reference_floor: see contam.score_samples."""

from contam import analysis, logs, score_samples

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
record = score_samples.score_floor(
    analysis.read_features(sm.input.reference),
    judge_weights=sm.input.judge,
    settings=sm.params.settings,
    execution=sm.config["execution"],
    gpus=0,
)
score_samples.write_record(record, sm.output[0])
