"""Benchmark: how well the cost plan predicts runs it has never seen.

1. Calibrate: run a small version of the embedded study (1 seed, 2 ratios, two
   models of 2 and 4 epochs, a 200-step generator, 55 images per class: ratio
   1.0 needs the largest class's 50) and gather its benchmark files into a
   fresh ledger.
2. Predict: plan a larger study from that ledger alone: more epochs (6), more
   seeds (2), more ratios (3), a longer generator fit (500 steps) and more
   generated images (120 per class).
3. Run the larger study and compare each job's actual wall time with the plan.

Prints, over jobs that took more than 2 s: the median absolute error of the
plan and the share of jobs inside its 90 % interval (goals: under 25 % and at
least 90 %), per rule and in all, next to a baseline measured in the same run:
replaying each rule's longest calibration job, which is what a workflow
manager without a model can do (Nextflow/Seqera reuse a previous run's peak).

    python bench/plan.py [--cores 2] [--workdir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from contam import ledger, plan

REPO = Path(__file__).resolve().parents[1]
MIN_SECONDS = 2.0


def calibration_config(base: dict) -> dict:
    config = copy.deepcopy(base)
    config["experiment"] = "plan-calibration"
    config["seeds"] = [0]
    config["mixing"]["ratios"] = [0.0, 1.0]
    config["generators"]["digits_ddim"]["fit"]["steps"] = 200
    config["sources"]["generated"]["prompts"]["images_per_class"] = 55
    model = config["models"]["resnet10t"]
    config["models"] = {
        "resnet10t_e2": {**model, "training": {"epochs": 2}},
        "resnet10t_e4": {**model, "training": {"epochs": 4}},
    }
    config["analysis"]["classifier"] = "resnet10t_e2"
    return config


def target_config(base: dict) -> dict:
    config = copy.deepcopy(base)
    config["experiment"] = "plan-target"
    config["seeds"] = [0, 1]
    config["mixing"]["ratios"] = [0.0, 0.4, 1.0]
    config["generators"]["digits_ddim"]["fit"]["steps"] = 500
    config["sources"]["generated"]["prompts"]["images_per_class"] = 120
    config["training"]["epochs"] = 6
    return config


def run_study(workdir: Path, configfile: Path, cores: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(configfile), "--cores", str(cores), "--quiet", "rules", "--config", "plan={gather_on_success: false}"],
        check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return time.perf_counter() - start


def measured(workdir: Path, configfile: Path, ledger_dir: Path) -> pd.DataFrame:
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        config, _ = plan.dag_jobs([configfile])  # the validated config, defaults filled
        plan.gather(config, f"benchmarks/{config['experiment']}", ledger_dir)
    finally:
        os.chdir(cwd)
    return ledger.read(ledger_dir)


def replay_max(calibration: pd.DataFrame, rule: str) -> float:
    rows = calibration[calibration["rule"] == rule]
    return float(rows["wall_s"].max()) if len(rows) else float("nan")


def compare(predicted: pd.DataFrame, actual: pd.DataFrame, calibration: pd.DataFrame) -> pd.DataFrame:
    table = predicted.merge(actual[["rule", "job", "wall_s"]], on=["rule", "job"], how="inner")
    table["replay"] = [replay_max(calibration, r) for r in table["rule"]]
    table["error"] = (table["seconds"] - table["wall_s"]).abs() / table["wall_s"]
    table["replay_error"] = (table["replay"] - table["wall_s"]).abs() / table["wall_s"]
    table["inside"] = (table["seconds_low"] <= table["wall_s"]) & (table["wall_s"] <= table["seconds_high"])
    return table


def summary(table: pd.DataFrame) -> pd.DataFrame:
    long = table[table["wall_s"] > MIN_SECONDS]
    rows = []
    for rule, group in list(long.groupby("rule")) + [("all rules", long)]:
        rows.append({
            "rule": rule, "jobs": len(group), "actual s (median)": group["wall_s"].median(),
            "plan s (median)": group["seconds"].median(), "plan error": group["error"].median(),
            "inside 90 %": group["inside"].mean(), "replay-max error": group["replay_error"].median(), "basis": ", ".join(sorted(set(group["basis"]))),
        })
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", help="write the per-job comparison here too")
    args = parser.parse_args()
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        calibration, target = calibration_config(base), target_config(base)
        for name, config in (("calibration", calibration), ("target", target)):
            (workdir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        seconds = run_study(workdir, workdir / "calibration.yaml", args.cores)
        print(f"calibration run: {seconds:.0f} s")
        fitted = measured(workdir, workdir / "calibration.yaml", workdir / "ledger")
        # The plan sees only the calibration's ledger and the target's config.
        target_full, jobs = plan.dag_jobs([workdir / "target.yaml"])
        the_plan = plan.make_plan(target_full, jobs, fitted, gpus=0, cpus=args.cores, gpu_kind="cuda:none", cpu_kind=ledger.cpu_kind(), use_results=False)
        print(plan.text_table(the_plan))
        seconds = run_study(workdir, workdir / "target.yaml", args.cores)
        print(f"target run: {seconds:.0f} s (plan's makespan {the_plan.totals['makespan_hours'] * 60:.1f} min "
              f"[{the_plan.totals['makespan_hours_low'] * 60:.1f}, {the_plan.totals['makespan_hours_high'] * 60:.1f}])")
        actual = measured(workdir, workdir / "target.yaml", workdir / "ledger-target")
        table = compare(the_plan.jobs, actual[actual["experiment"] == "plan-target"], fitted)
        shown = summary(table)
        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3g}".format):
            print(shown.to_string(index=False))
        overall = shown.iloc[-1]
        print(f"\nplan: median absolute error {100 * overall['plan error']:.1f} % (goal < 25 %), "
              f"{100 * overall['inside 90 %']:.0f} % of jobs inside the 90 % interval (goal >= 90 %), over {overall['jobs']} jobs > {MIN_SECONDS:g} s")
        print(f"baseline (replay each rule's longest calibration job): median absolute error {100 * overall['replay-max error']:.1f} %; "
              f"ratio plan / baseline error = {overall['plan error'] / overall['replay-max error']:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"summary": json.loads(shown.to_json(orient="records")),
                                                   "jobs": json.loads(table.to_json(orient="records"))}, indent=1))


if __name__ == "__main__":
    main()
