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
    Path(sm.output.html).parent,
    experiment=sm.params.experiment,
    seed=sm.params.seed,
    arms=sm.params.arms,
    origins=sm.params.origins,
    report_settings=sm.params.settings,
    metric_files=list(sm.input.metrics),
    missing_runs=sm.params.missing_runs,
    real_index=read_parquet(sm.input.real),
    generated={Path(p).stem: read_parquet(p) for p in sm.input.generated},
    quality=quality,
    analysis_files=list(sm.input.analysis),
    benchmark_files=list(sm.input.benchmarks),
    benchmark_root=sm.params.benchmark_root,
    versions=software_versions(),
    # Shown only; what changes a number reaches the report as a param or input.
    config_for_display=sm.config,
    remedies=json.loads(Path(sm.input.remedies[0]).read_text()) if sm.input.remedies else None,
)
log.info("report written: %s", {k: str(v) for k, v in written.items()})
