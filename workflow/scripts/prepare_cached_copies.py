"""Glue for rule prepare_cached_copies: see contam.prepare."""

from contam import logs, prepare
from contam.io import read_parquet, write_json, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
settings = prepare.Settings(**sm.params.settings)
index = read_parquet(sm.input.index)
records, counts = prepare.prepare_index(index, sm.params.images, settings, workers=sm.threads)
log.info("%s: %s", sm.wildcards.collection, {k: v for k, v in counts.items() if k != "skipped_examples"})
write_json(counts, sm.output.counts)
write_parquet(records, sm.output.records)
