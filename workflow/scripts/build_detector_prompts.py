"""Glue for rule build_detector_prompts: see contam.remedies.detector_prompts."""

from contam import index_real, logs, prompts, remedies
from contam.io import read_parquet, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
new = prompts.build_prompts(sm.params.prompts, index_real.class_table(sm.params.real), sm.params.seed)
table = remedies.detector_prompts(read_parquet(sm.input.source_prompts), new, sm.params.seed)
log.info("%d detector prompts, rows %d-%d (after the source's own rows)", len(table), table["row"].min(), table["row"].max())
write_parquet(table, sm.output[0])
