"""Glue for rule score_generative_model: see contam.score_samples."""

import json
from pathlib import Path

from contam import analysis, logs, score_samples
from contam.io import read_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
record = score_samples.score_unit(
    sm.params.unit,
    samples=read_parquet(sm.input.samples),
    manifest=read_parquet(sm.input.manifest),
    counts=json.loads(Path(sm.input.counts).read_text()),
    reference=analysis.read_features(sm.input.reference),
    judge_weights=sm.input.judge,
    settings=sm.params.settings,
    execution=sm.config["execution"],
    gpus=sm.resources.get("gpu", 0),
)
score_samples.write_record(record, sm.output[0])
