"""Glue for rule report: see contam.report."""

import json
from pathlib import Path

from contam import logs, report
from contam.evaluate import software_versions
from contam.io import read_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
quality = {"real": json.loads(Path(sm.input.real_quality).read_text())}
quality.update({f"generated:{Path(p).stem}": json.loads(Path(p).read_text()) for p in sm.input.generated_counts})
written = report.build_report(
    out_dir=Path(sm.output.html).parent,
    config=sm.config,
    metric_files=list(sm.input.metrics),
    missing_runs=sm.params.missing_runs,
    arms=sm.params.arms,
    real_index=read_parquet(sm.input.real),
    generated={Path(p).stem: read_parquet(p) for p in sm.input.generated},
    quality=quality,
    analysis_files=list(sm.input.analysis),
    benchmark_dir=sm.params.benchmark_dir,
    versions=software_versions(),
)
log.info("report written: %s", {k: str(v) for k, v in written.items()})
