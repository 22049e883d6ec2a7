"""Glue for rule index_real: see contam.index_real."""

from contam import index_real, logs
from contam.io import write_json, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
real = sm.params.real
if real["kind"] == "digits":
    index = index_real.export_digits(sm.params.images, real["image_size"], real["split_fractions"], sm.params.seed)
    quality = {"found": len(index), "indexed": len(index), "skipped": 0}
else:
    index, quality = index_real.index_real_folders(real, workers=max(4, 2 * sm.threads))
log.info("indexed %d real images: %s", len(index), index.groupby("split").size().to_dict())
write_json(quality, sm.output.quality)
write_parquet(index, sm.output.index)
