"""Glue for rule generate_shard: see contam.generate."""

from contam import generate, logs
from contam.io import read_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
generate.run_shard(
    settings=sm.params.settings,
    prompts=read_parquet(sm.input.prompts),
    shards=sm.params.shards,
    shard=int(sm.wildcards.shard),
    model_dir=sm.input.model,
    images_root=sm.params.images_root,
    execution=sm.config["execution"],
    gpus=sm.resources.get("gpu", 0),
    threads=sm.threads,
    index_path=sm.output.index,
    counts_path=sm.output.counts,
)
