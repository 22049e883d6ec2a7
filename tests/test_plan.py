"""The cost plan (contam.plan) and its ledger (contam.ledger): sizing, fitting, scheduling, gathering.

No test asserts a timing of this machine: the estimator's accuracy is tested on
a ledger drawn from a known law, and bench/plan.py measures it on real runs.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, snakemake_env, write_yaml

from contam import ledger, plan, work

PRESETS = sorted(p.name for p in (REPO / "config").glob("*.yaml"))


def rows_from_law(fixed, rate, works, spread, seed, rule="train", kind="cpu:test", origin="benchmark:x"):
    rng = np.random.default_rng(seed)
    return [
        {"device_kind": kind, "rule": rule, "job": f"j{i}", "work": float(w), "work_unit": "image_epoch_gmac",
         "wall_s": float((fixed + rate * w) * math.exp(rng.normal(0, spread))), "origin": f"{origin}{i}", "experiment": "synthetic",
         "measured_at": "2026-11-30T00:00:00+00:00"}
        for i, w in enumerate(works)
    ]


def test_relative_least_squares_recovers_a_known_law_and_stays_non_negative():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    a, b = plan.relative_least_squares(x, 3.0 + 0.5 * x)
    assert a == pytest.approx(3.0) and b == pytest.approx(0.5)
    # Times falling with work: the unconstrained fit's rate is negative, so the constrained one is a constant.
    a, b = plan.relative_least_squares(x, np.array([4.0, 3.9, 3.8, 3.7]))
    assert b == 0.0 and 3.7 < a < 4.0


def test_larger_runs_are_predicted_within_the_goals_from_small_ones():
    """Calibrate on small jobs of a known law with 10 % scatter; predict jobs 4-20x larger."""
    small = pd.DataFrame(ledger.frame(rows_from_law(8.0, 0.05, np.linspace(50, 400, 12), 0.10, seed=1)))
    fixed, rate, log_sd = plan.fit_rule(small, startup_s=8.0, machine_spread=0.16)
    cost = plan.RuleCost("train", "cpu:test", fixed, rate, log_sd, len(small), "ledger", "synthetic")
    large = rows_from_law(8.0, 0.05, np.linspace(1600, 8000, 200), 0.10, seed=2)
    errors, inside = [], []
    for row in large:
        mid, lo, hi = cost.predict(row["work"], 0.9)
        errors.append(abs(mid - row["wall_s"]) / row["wall_s"])
        inside.append(lo <= row["wall_s"] <= hi)
    assert np.median(errors) < 0.25
    assert np.mean(inside) >= 0.90


def test_bench_rows_give_the_rate_and_the_device_start_up_is_added():
    rows = ledger.frame(rows_from_law(0.0, 0.01, [100, 200, 300], 0.0, seed=0, origin="bench:all.py/train"))
    fixed, rate, _ = plan.fit_rule(rows, startup_s=30.0, machine_spread=0.16)
    assert fixed == 30.0 and rate == pytest.approx(0.01)


def test_the_schedule_respects_dependencies_and_slots():
    def job(i, deps=(), gpus=0, threads=1):
        return plan.Job(i, "train", {}, threads, gpus, 0, 0, tuple(deps))

    # Four independent 10 s GPU jobs on 2 GPUs: two waves.
    jobs = [job(i, gpus=1) for i in range(4)]
    assert plan.makespan(jobs, {i: 10.0 for i in range(4)}, gpus=2, cpus=8) == 20.0
    # A chain runs in sequence whatever the slots.
    chain = [job(0), job(1, [0]), job(2, [1])]
    assert plan.makespan(chain, {0: 1.0, 1: 2.0, 2: 3.0}, gpus=0, cpus=16) == 6.0
    # The critical path goes first: a long job that feeds another starts before a short independent one.
    jobs = [job(0), job(1, [0]), job(2)]
    assert plan.makespan(jobs, {0: 5.0, 1: 5.0, 2: 4.0}, gpus=0, cpus=1) == 14.0
    # A job needing more threads than exist runs on all of them.
    assert plan.makespan([job(0, threads=64)], {0: 7.0}, gpus=0, cpus=4) == 7.0


def test_ledger_appends_once_and_refuses_bad_rows(tmp_path):
    rows = rows_from_law(1.0, 0.1, [10, 20], 0.0, seed=0)
    assert ledger.append(rows, tmp_path) == {"cpu:test": 2}
    assert ledger.append(rows, tmp_path) == {"cpu:test": 0}
    assert list(tmp_path.glob("*.parquet")) == [tmp_path / "cpu-test.parquet"]
    assert len(ledger.read(tmp_path, "cpu:test")) == 2
    with pytest.raises(ledger.LedgerError, match="wall_s must be >= 0"):
        ledger.append([{**rows[0], "wall_s": -1.0}], tmp_path)
    with pytest.raises(ledger.LedgerError, match=r"lack column\(s\) \['work'"):
        ledger.append([{k: v for k, v in rows[0].items() if k != "work"}], tmp_path)


def test_model_size_table_matches_counting():
    for (arch, size, classes, chans), (gmacs, params) in work.known_sizes().items():
        if arch in ("resnet10t", "resnet18"):  # the cheap ones; the rest were written by the same function
            counted = work.count_model_size(arch, size, classes, chans)
            assert counted[0] == pytest.approx(gmacs, rel=1e-5) and counted[1] == params


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_is_planned(preset, tmp_path):
    code = plan.main(["--configfile", str(REPO / "config" / preset), "--ledger", str(tmp_path / "ledger"), "--out", str(tmp_path / "plan"), "--fresh"])
    assert code == 0
    written = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert written["totals"]["jobs"] == len(written["jobs"]) > 0
    low, mid, high = (written["totals"][k] for k in ("makespan_hours_low", "makespan_hours", "makespan_hours_high"))
    assert 0 < low <= mid <= high
    assert {"rule", "jobs", "basis", "source", "disk_gb"} <= set(written["rules"][0])
    assert written["suggested_resources"] and (tmp_path / "plan" / "plan.html").exists()


def test_paper_scale_plan_rests_on_named_priors_and_sizes(tmp_path):
    config, jobs = plan.dag_jobs([REPO / "config" / "imagenet.yaml"])
    the_plan = plan.make_plan(config, jobs, ledger.read(tmp_path), gpus=8, cpus=64, gpu_kind="cuda:NVIDIA H200", cpu_kind="cpu:test", use_results=False)
    rules = the_plan.rules.set_index("rule")
    assert rules.loc["train", "jobs"] == 78 and rules.loc["generate_shard", "jobs"] == 520
    # No ledger rows for an H200 and no priors of its own: the A100's named figures stand in, and the plan says so.
    assert rules.loc["train", "basis"] == "prior (stand-in: cuda:NVIDIA A100-SXM4-80GB)"
    assert "DeepLearningExamples" in rules.loc["train", "source"]
    # 90 epochs of 1,281,167 images at 4.09 GMAC and 2,470 images/s, plus start-up.
    resnet = the_plan.jobs[(the_plan.jobs["rule"] == "train") & the_plan.jobs["job"].str.contains("resnet50")]
    assert resnet["seconds"].iloc[0] == pytest.approx(60 + 90 * 1281167 / 2470, rel=0.01)
    # 1.3 M generated images per source at the stored PNG size.
    assert rules.loc["generate_shard", "disk_gb"] == pytest.approx(2 * 1.3e6 * 512 * 512 * plan.BYTES_PER_PIXEL["png"] / 1e9, rel=0.01)
    assert set(the_plan.totals["rules_on_priors"]) >= {"train", "generate_shard", "evaluate"}
    assert yaml.safe_load(plan.resources_yaml(the_plan))["resources"]["train"]["runtime"] > 60 * 24


def test_a_missing_size_is_refused_naming_the_key(tmp_path, capsys):
    config = yaml.safe_load((REPO / "config" / "imagenet.yaml").read_text())
    del config["plan"]["sizes"]["real"]
    path = write_yaml(tmp_path / "imagenet.yaml", config)
    assert plan.main(["--configfile", str(path), "--ledger", str(tmp_path), "--out", str(tmp_path), "--fresh"]) == 2
    assert "plan.sizes.real.train" in capsys.readouterr().err


def test_gpu_jobs_need_gpus_in_the_plan():
    config, jobs = plan.dag_jobs([REPO / "config" / "coco.yaml"])
    with pytest.raises(plan.PlanError, match="--gpus 0"):
        plan.make_plan(config, jobs, ledger.read("/nonexistent"), gpus=0, cpus=4, gpu_kind="cuda:x", cpu_kind="cpu:x", use_results=False)


def test_gather_reads_benchmarks_with_their_work_and_device(tmp_path, default_config):
    bench = tmp_path / "benchmarks" / "digits"
    logs = tmp_path / "logs" / "digits"
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    train = bench / "train" / "generated" / "ratio-0.4" / "resnet10t" / "seed-1.tsv"
    train.parent.mkdir(parents=True)
    train.write_text(header + "12.5\t0:00:12\t800.1\t1\t1\t1\t0\t0\t90\t11.0\n")
    (bench / "mix" / "control").mkdir(parents=True)
    (bench / "mix" / "control" / "ratio-0.4.tsv").write_text(header + "3.0\t0:00:03\t200\t1\t1\t1\t0\t0\t50\tNA\n")
    config = default_config
    config["resources"]["train"]["gpu"] = 1
    # A GPU job counts only under the device its own log names.
    log = logs / "train" / "generated" / "ratio-0.4" / "resnet10t" / "seed-1.log"
    log.parent.mkdir(parents=True)
    log.write_text("2026-11-30 INFO contam: device: cuda:0 (NVIDIA H200, 1 visible); 1 training process(es)\n")
    from conftest import validated

    validated(config)
    added = plan.gather(config, bench, tmp_path / "ledger", log_root=logs)
    assert added == {"cuda:NVIDIA H200": 1, ledger.cpu_kind(): 1}
    rows = ledger.read(tmp_path / "ledger").set_index("rule")
    sizes = plan.Sizes(config, use_results=False)
    assert rows.loc["train", "work"] == pytest.approx(sizes.train_rows() * 5 * work.model_gmacs("resnet10t", 24, 10))
    assert rows.loc["train", "wall_s"] == 12.5 and rows.loc["train", "cpu_s"] == 11.0 and rows.loc["train", "max_rss_mb"] == pytest.approx(800.1)
    assert rows.loc["mix", "work"] == sizes.train_rows() and math.isnan(rows.loc["mix", "cpu_s"])
    assert json.loads(rows.loc["train", "settings"])["precision"] == "fp32"
    assert plan.gather(config, bench, tmp_path / "ledger", log_root=logs) == {"cuda:NVIDIA H200": 0, ledger.cpu_kind(): 0}


def test_rows_of_another_data_kind_are_not_used():
    rows = ledger.frame([
        {"device_kind": "cpu:t", "rule": "index_real", "job": "", "work": 1797.0, "work_unit": "row", "wall_s": 6.0, "origin": "benchmark:a",
         "settings": ledger.settings_json({"kind": "digits"})},
    ])
    model = plan.CostModel(rows, plan.load_priors())
    assert model.cost("index_real", "cpu:t", {"kind": "digits"}).basis == "ledger"
    assert model.cost("index_real", "cpu:t", {"kind": "image_folder"}).basis == "prior"


@pytest.mark.slow
def test_a_run_feeds_the_ledger_and_the_next_plan_uses_it(tiny_study):
    root, config = tiny_study
    measured = ledger.read(root / "ledger")
    assert {"train", "evaluate", "fit_generator", "generate_shard", "mix", "index_real"} <= set(measured["rule"])
    assert (measured["wall_s"] > 0).all() and (measured["work"] > 0).all()
    result = subprocess.run([sys.executable, "-m", "contam.plan", "--configfile", str(config)], cwd=root, env=snakemake_env(),
                            capture_output=True, text=True, check=True)
    written = json.loads((root / "results" / "tiny" / "plan" / "plan.json").read_text())
    basis = {r["rule"]: r["basis"] for r in written["rules"]}
    assert basis["train"] == basis["evaluate"] == basis["fit_generator"] == "ledger"
    assert "resources:" in result.stdout
