"""Glue for rule gather_generated: see contam.gather."""

from contam import gather, logs
from contam.io import write_json, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
index, totals = gather.gather(sm.input.indexes, sm.input.counts)
log.info("%s: %s", sm.wildcards.generated_source, totals)
write_json(totals, sm.output.counts)
write_parquet(index, sm.output.index)
