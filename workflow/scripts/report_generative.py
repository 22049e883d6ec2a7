"""Glue for rule report_generative: see contam.report_generative."""

from pathlib import Path

from contam import logs, report_generative
from contam.evaluate import software_versions
from contam.io import read_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
written = report_generative.build_generative_report(
    Path(sm.output.html).parent,
    experiment=sm.params.experiment,
    seed=sm.params.seed,
    metric_files=list(sm.input.metrics),
    floor_file=sm.input.floor,
    sample_indexes=sm.params.sample_indexes,
    real_index=read_parquet(sm.input.real),
    regimes=sm.params.regimes,
    ratios=sm.params.ratios,
    arms=sm.params.arms,
    origins=sm.params.origins,
    report_settings=sm.params.settings,
    benchmark_files=list(sm.input.benchmarks),
    benchmark_root=sm.params.benchmark_root,
    versions=software_versions(),
    # Shown only; what changes a number reaches the report as a param or input.
    config_for_display=sm.config,
)
log.info("generative report written: %s", {k: str(v) for k, v in written.items()})
