"""Glue for rule summarise_remedies: see contam.report_remedies.summarise."""

import json
from pathlib import Path

from contam import logs, report_remedies
from contam.evaluate import read_metrics
from contam.io import write_json

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])


def read_all(paths):
    return {str(p): read_metrics(p) for p in paths}


summary = report_remedies.summarise(
    supervised=read_all(sm.input.supervised),
    filtered=read_all(sm.input.filtered),
    filter_summaries=[json.loads(Path(p).read_text()) for p in sm.input.summaries],
    detectors={Path(p).parent.name: json.loads(Path(p).read_text()) for p in sm.input.detectors},
    audit=json.loads(Path(sm.input.audit).read_text()),
    ssl_records=[json.loads(Path(p).read_text()) for p in sm.input.ssl],
    model=sm.params.model,
    origins=sm.params.origins,
    settings=sm.params.settings,
)
log.info("remedies: %d recovery rows, %d SSL rows", len(summary["recovery"]), len(summary["ssl"]))
write_json(summary, sm.output[0])
