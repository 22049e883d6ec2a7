"""Glue for rule index_coco_captions: see contam.caption_data.index_coco."""

from contam import caption_data, logs
from contam.io import write_json, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
captioned, quality = caption_data.index_coco(sm.params.real, workers=max(4, 2 * sm.threads))
log.info("COCO captioned images: %s", quality)
write_json(quality, sm.output.quality)
write_parquet(captioned, sm.output.captioned)
