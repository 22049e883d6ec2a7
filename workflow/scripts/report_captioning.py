"""Glue for rule report_captioning: see contam.report_captioning."""

from pathlib import Path

from contam import logs, report_captioning
from contam.evaluate import software_versions
from contam.io import read_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])


def paths(name: str) -> list[str]:
    """A named input as a list of paths (a single path, or none when the input list was empty)."""
    value = getattr(sm.input, name, [])
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]


arms = list(sm.params.arms)
pool_files = paths("pools")
if len(pool_files) != len(arms):
    raise ValueError(f"rule report_captioning: {len(pool_files)} twin pools for {len(arms)} arms {arms}")
meteor = paths("meteor")
if len(meteor) > 1:
    raise ValueError(f"rule report_captioning: at most one meteor.json, got {meteor}")
written = report_captioning.build_captioning_report(
    Path(sm.output.html).parent,
    experiment=sm.params.experiment,
    seed=sm.params.seed,
    metric_files=paths("metrics"),
    prediction_files=paths("predictions"),
    meteor_file=meteor[0] if meteor else None,
    captioned=read_parquet(sm.input.captioned),
    pools={arm: read_parquet(path) for arm, path in zip(arms, pool_files)},
    ratios=list(sm.params.ratios),
    arms=arms,
    origins=dict(sm.params.origins),
    settings=dict(sm.params.settings),
    slots=bool(sm.params.slots),
    benchmark_files=paths("benchmarks"),
    benchmark_root=sm.params.benchmark_root,
    versions=software_versions(),
    # Shown only; what changes a number reaches the report as a param or input.
    config_for_display=sm.config,
)
if Path(written["summary"]).resolve() != Path(sm.output.summary).resolve():
    raise ValueError(f"the summary was written to {written['summary']}, but the rule declares {sm.output.summary}")
log.info("captioning report written: %s", {k: str(v) for k, v in written.items()})
