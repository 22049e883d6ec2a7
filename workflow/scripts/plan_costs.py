"""Glue for rule plan_costs: see contam.plan."""

from pathlib import Path

from contam import logs, plan

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
# The DAG is rebuilt from the run's final config, every --config applied.
the_plan = plan.plan_of_config(dict(sm.config))
plan.write_plan(the_plan, Path(sm.output.plan).parent)
log.info("%s\n\n%s", plan.text_table(the_plan), plan.resources_yaml(the_plan))
