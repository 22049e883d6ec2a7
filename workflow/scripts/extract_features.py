"""Glue for rule extract_features: see contam.features."""

from contam import features, logs
from contam.io import read_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
features.extract_feature_set(
    index=read_parquet(sm.input.index),
    settings=sm.params.settings,
    extractor_weights=sm.input.extractor,
    execution=sm.config["execution"],
    gpus=sm.resources.get("gpu", 0),
    threads=sm.threads,
    out_path=sm.output[0],
)
