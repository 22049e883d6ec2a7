"""Glue for rule mix: see contam.mix."""

from contam import logs, mix
from contam.io import read_parquet, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
settings = sm.params.settings
real = read_parquet(sm.input.real)
train = real[real["split"] == "train"]
pool = None
if sm.input.contaminant:
    pool = read_parquet(sm.input.contaminant)
    if settings["real_split"]:
        pool = pool[pool["split"] == settings["real_split"]]
manifest = mix.mix(train, pool, settings["ratio"], settings["seed"], settings["source"], settings["origin"])
log.info("manifest %s ratio %s: %s", settings["source"], settings["ratio"], manifest["origin"].value_counts().to_dict())
write_parquet(manifest, sm.output[0])
