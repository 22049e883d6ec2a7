"""Glue for rule generate_shard: see contam.generate."""

from contam import generate, logs
from contam.io import read_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
generate.run_shard(
    settings=sm.params.settings,
    prompts=read_parquet(sm.input.prompts),
    shards=sm.params.shards,
    # generate_detector_images is one job with no shard wildcard: its shard 0 of 1.
    shard=int(sm.wildcards.get("shard", 0)),
    model_dir=sm.input.model,
    images_root=sm.params.images_root,
    execution=sm.config["execution"],
    gpus=sm.resources.get("gpu", 0),
    threads=sm.threads,
    index_path=sm.output.index,
    counts_path=sm.output.counts,
)
