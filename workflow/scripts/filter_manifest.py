"""Glue for rule filter_manifest: see contam.remedies.filter_by_scores and oracle_filter."""

import json
from pathlib import Path

from contam import detect, logs, remedies
from contam.io import read_parquet, write_json, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
settings = sm.params.settings
manifest = read_parquet(sm.input.manifest)
if settings["filter"] == remedies.ORACLE:
    filtered, summary = remedies.oracle_filter(manifest)
else:
    detector = json.loads(Path(sm.input.detector).read_text())
    threshold = detector["thresholds"][detect.budget_key(settings["fpr_budget"])]
    filtered, summary = remedies.filter_by_scores(manifest, read_parquet(sm.input.scores), threshold, settings)
summary.update(source=sm.wildcards.source, ratio=float(sm.wildcards.ratio))
log.info("%s: %s", settings["filter"], summary)
write_parquet(filtered, sm.output.manifest, metadata=summary)
write_json(summary, sm.output.summary)
