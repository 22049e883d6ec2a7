"""Glue for rule build_prompts: see contam.prompts."""

from contam import index_real, logs, prompts
from contam.io import write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
style = sm.params.prompts.get("style", "plain")
classes = None if style == "coco" else index_real.class_table(sm.params.real)
table = prompts.build_prompts(sm.params.prompts, classes, sm.params.seed)
log.info("%d %s prompts, e.g. %r", len(table), style, table["prompt"].iloc[0] if len(table) else None)
write_parquet(table, sm.output[0])
