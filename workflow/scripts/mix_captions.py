"""Glue for rule mix_captions: see contam.caption_data.caption_mix."""

from contam import caption_data, logs
from contam.io import read_parquet, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
settings = sm.params.settings
captioned = read_parquet(sm.input.captioned)
pool = read_parquet(sm.input.pool) if sm.input.pool else None
train = captioned[captioned["split"] == "train"]
manifest = caption_data.caption_mix(train, pool, settings["ratio"], settings["seed"], settings["origin"])
log.info("manifest %s ratio %s: %s", sm.wildcards.source, settings["ratio"], manifest["origin"].value_counts().to_dict())
write_parquet(manifest, sm.output[0])
