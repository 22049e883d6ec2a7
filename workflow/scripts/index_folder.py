"""Glue for rules index_control and index_ood: an image folder (or a control source's file lists) in the real label space."""

from contam import index_real, logs
from contam.io import write_json, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
name = sm.wildcards.get("control_source") or sm.wildcards.get("ood_set")
origin = "control" if sm.rule == "index_control" else "ood"
classes = index_real.class_table(sm.params.real)
workers = max(4, 2 * sm.threads)
if sm.params.get("file_lists"):
    index, counts = index_real.index_file_lists(sm.params.root, sm.params.file_lists, classes, origin, workers=workers, source=name, origin=origin)
else:
    index, counts = index_real.index_image_folder(
        sm.params.root, classes, origin, sm.params.real.get("extensions", [".jpg", ".jpeg", ".png"]),
        workers=workers, source=name, origin=origin,
    )
log.info("indexed %d images of %s (%d skipped)", len(index), name, counts["skipped"])
write_json(counts, sm.output.quality)
write_parquet(index, sm.output.index)
