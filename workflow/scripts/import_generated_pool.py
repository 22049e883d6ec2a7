"""Glue for rule import_generated_pool: see contam.caption_data.generated_pool."""

from contam import caption_data, logs
from contam.io import read_parquet, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
captioned = read_parquet(sm.input.captioned)
train_ids = set(captioned.loc[captioned["split"] == "train", "image_id"].astype(int))
pool = caption_data.generated_pool(read_parquet(sm.params.index), train_ids)
log.info("%s: generated twins for %d of %d training images", sm.wildcards.generated_source, len(pool), len(train_ids))
write_parquet(pool, sm.output[0])
