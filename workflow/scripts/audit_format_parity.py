"""Glue for rule audit_format_parity: see contam.remedies.audit_format_parity."""

from contam import logs, remedies
from contam.io import read_parquet, write_json

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
result = remedies.audit_format_parity(read_parquet(sm.input[0]), sm.params.seed, sm.params.bootstrap, sm.params.near_chance)
log.info("format-only AUROC %.3f (near chance up to %.2f): trustworthy=%s", result["auroc"]["estimate"], sm.params.near_chance, result["trustworthy"])
write_json(result, sm.output[0])
