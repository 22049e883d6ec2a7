"""Glue for rule report: see contam.report."""

import json
from pathlib import Path

from contam import report
from contam import logs
from contam.evaluate import software_versions
from contam.io import read_parquet, write_text

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
out_dir = Path(sm.output.html).parent
settings = sm.params.report
tidy = report.tidy_metrics(sm.input.metrics)
summary = report.summarise(report.with_shared_baseline(tidy, sm.params.arms))
write_text(tidy.drop(columns="metrics_file").to_csv(index=False), sm.output.summary)
report.plot_accuracy(summary, Path(sm.output.accuracy), settings.get("paper_reference", True))
figures = {"accuracy": sm.output.accuracy}
real = read_parquet(sm.input.real)
for path in sm.input.generated:
    name = Path(path).stem
    grid = out_dir / "figures" / f"samples-{name}.png"
    report.sample_grid(real[real["split"] == "train"], read_parquet(path), grid, settings.get("samples_per_class", 8), settings.get("max_classes_shown", 10), sm.params.seed, name)
    figures[f"samples:{name}"] = str(grid)
quality = {"real": json.loads(Path(sm.input.real_quality).read_text())}
quality.update({Path(p).stem: json.loads(Path(p).read_text()) for p in sm.input.generated_counts})
report.write_html(out_dir, sm.config, summary, tidy, figures, quality, missing=[], versions=software_versions())
log.info("report written to %s", sm.output.html)
