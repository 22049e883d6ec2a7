"""The workflow on a REAL single-node SLURM cluster (`snakemake --profile slurm`).

tests/slurm/start_cluster.sh starts slurmctld + slurmd + slurmdbd (accounting)
on this machine: partition ``debug``, account ``contam``, 2 CPUs, 2 fake GPUs.
The tiny study then runs through the site profile ``slurm/`` with command-line
overrides for that cluster, and the tests check what SLURM itself recorded
(``sacct``): which rules were submitted with sbatch, with which requests, which
job was cancelled and resubmitted.

Needs root (apt-get install of slurm-wlm/munge/slurmdbd/mariadb if missing,
daemons running as root). Without root or packages the module is skipped, except
under CI (env CI set), where it fails: CI must really run it.

    sudo .venv/bin/python -m pytest -q -m slurm tests/test_slurm.py
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SNAKEMAKE, run_snakemake, snakemake_env, tiny_config, write_yaml
from conftest import job_counts as all_job_counts
from contam.io import file_sha256

pytestmark = pytest.mark.slurm

START, STOP = REPO / "tests" / "slurm" / "start_cluster.sh", REPO / "tests" / "slurm" / "stop_cluster.sh"
PREFIX = "contam"  # slurm-jobname-prefix of the site profile slurm/config.yaml
NON_LOCAL = {"index_real", "fit_generator", "generate_shard", "train", "evaluate", "extract_features", "index_control", "index_ood"}
LOCAL = {"all", "build_prompts", "gather_generated", "mix", "report", "compare_distributions"}
RUN = "runs/generated/ratio-0.5/resnet10t/seed-0"  # the run the rerun tests remove
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}

# The site profile for real, plus what differs on the local test cluster: its
# partition and account, and short waits (the profile's 40 s before the first
# status check would make every job cost 40 s here). --default-resources on the
# command line replaces the profile's whole list, so it repeats mem_mb/runtime.
CLUSTER_ARGS = [
    "--profile", str(REPO / "slurm"),
    "--default-resources", "slurm_partition=debug", "slurm_account=contam", "mem_mb=500", "runtime=10",
    "--slurm-init-seconds-before-status-checks", "1",
    "--seconds-between-status-checks", "2",
    "--latency-wait", "5",
    "--jobs", "4",
    "--verbose",  # the plugin logs each "sbatch call: ..." line
]


def _unavailable(message: str):
    if os.environ.get("CI"):
        pytest.fail(f"SLURM tests must run in CI: {message}")
    pytest.skip(message)


@pytest.fixture(scope="module")
def cluster():
    """A running local SLURM cluster; yields the environment for SLURM clients and Snakemake."""
    if os.geteuid() != 0:
        _unavailable("needs root to start the local SLURM cluster (tests/slurm/start_cluster.sh)")
    have_slurm = all(shutil.which(t) for t in ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "munged"))
    if not have_slurm and not shutil.which("apt-get"):
        _unavailable("slurm-wlm/slurmdbd/munge are not installed and apt-get is not available")
    env = snakemake_env()
    try:
        started = subprocess.run(["bash", str(START)], env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        _unavailable("tests/slurm/start_cluster.sh did not finish within 600 s")
    if started.returncode != 0:
        _unavailable(f"tests/slurm/start_cluster.sh failed:\n{started.stdout[-2000:]}\n{started.stderr[-3000:]}")
    conf = re.search(r"SLURM_CONF=(\S+)", started.stdout)
    assert conf, started.stdout
    env["SLURM_CONF"] = conf.group(1)
    print(started.stdout.strip().splitlines()[-1])
    try:
        yield env
    finally:
        subprocess.run(["bash", str(STOP)], env=env, capture_output=True, text=True, timeout=180)


def snakemake(*args, cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return run_snakemake(*args, cwd=cwd, env=env, check=check, timeout=900)


def job_counts(dry_run_output: str) -> dict[str, int]:
    counts = all_job_counts(dry_run_output)
    counts.pop("total", None)
    return counts


def run_uuid(log: str) -> str:
    """The job name the plugin gave every sbatch of one Snakemake invocation."""
    names = set(re.findall(rf"--job-name ({PREFIX}_[0-9a-f-]{{36}})", log))
    assert len(names) == 1, f"expected one SLURM job name per invocation, got {names}"
    return names.pop()


def sbatch_lines(log: str) -> list[str]:
    return [line.split("sbatch call: ", 1)[1] for line in log.splitlines() if "sbatch call: " in line]


def rule_of(comment: str) -> str:
    """``rule_train_wildcards_real_0.0_resnet10t_0`` -> ``train``."""
    match = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", comment)
    assert match, comment
    return match.group(1)


def sacct(env: dict, job_name: str, submissions: int) -> list[dict]:
    """SLURM's accounting records of one invocation's jobs, once all have reached slurmdbd."""
    fields = ["JobID", "JobName", "State", "Comment", "ReqTRES", "Timelimit", "Submit"]
    since = (dt.datetime.now() - dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S")
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-S", since, "--name", job_name, "-o", ",".join(fields)],
            env=env, capture_output=True, text=True, check=True,
        ).stdout
        records = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
        settled = len(records) >= submissions and all(r["State"].split()[0] in TERMINAL for r in records)
        if settled or time.monotonic() > deadline:
            assert len(records) == submissions, f"sbatch was called {submissions} times, sacct has:\n{out}"
            return records
        time.sleep(1)


def invocation(result: subprocess.CompletedProcess, env: dict) -> dict:
    log = result.stdout + result.stderr
    lines = sbatch_lines(log)
    name = run_uuid(log)
    records = sacct(env, name, len(lines))
    return {"log": log, "sbatch": lines, "name": name, "records": records}


# What the SLURM study takes over from the session's tiny study: its real index and
# its generated images (the jobs that make them are like any other on SLURM, and
# test_workflow.py checks them), so SLURM runs the mixes, every training run and
# evaluation, and the report (about 100 s less of the suite than the whole DAG).
# Their benchmark files come too: a benchmark file is an output of its rule.
UPSTREAM = ("real", "generators", "prompts", "generated")


@pytest.fixture(scope="module")
def study(cluster, tmp_path_factory, request):
    """The tiny study's runs through `--profile slurm`, with SLURM's records of them."""
    root = tmp_path_factory.mktemp("slurm-study")
    local_root, _ = request.getfixturevalue("tiny_study")  # only once SLURM is known to be there
    for part in UPSTREAM:
        shutil.copytree(local_root / "results" / "tiny" / part, root / "results" / "tiny" / part)
    shutil.copytree(local_root / ".snakemake" / "metadata", root / ".snakemake" / "metadata")
    # A rule's benchmark file is one of its outputs: without them every upstream
    # job would run again. Those of the runs are overwritten when the runs are made.
    shutil.copytree(local_root / "benchmarks", root / "benchmarks")
    config = tiny_config(copy.deepcopy(yaml.safe_load((REPO / "config" / "config.yaml").read_text())))
    config["resources"]["train"]["gpu"] = 1  # a GPU rule: sbatch --gpus=1 on the fake GPUs
    config["execution"]["allow_cpu_fallback"] = True  # torch finds no CUDA behind them
    # The distribution analysis's jobs are like any other on SLURM; test_workflow.py checks them.
    config["analysis"]["enabled"] = False
    config_path = write_yaml(root / "tiny.yaml", config)
    plan = job_counts(snakemake("-n", "--quiet", "rules", "--configfile", str(config_path), cwd=root, env=cluster).stdout)
    start = time.perf_counter()
    result = snakemake(*CLUSTER_ARGS, "--configfile", str(config_path), cwd=root, env=cluster)
    seconds = time.perf_counter() - start
    print(f"tiny study on SLURM: {seconds:.0f} s")
    return {"root": root, "config": config_path, "plan": plan, "seconds": seconds, **invocation(result, cluster)}


def test_study_runs_through_the_slurm_profile(study):
    out = study["root"] / "results" / "tiny"
    assert (out / "report" / "index.html").exists()
    # every job of the SLURM run started the venv's Python (found through --export=ALL)
    for line in study["sbatch"]:
        assert "--export=ALL" in line and f"--wrap=\"{sys.executable} -m snakemake" in line, line
    # the site profile was used: its job name prefix and its SLURM log folder
    assert study["name"].startswith(f"{PREFIX}_")
    assert list((study["root"] / ".snakemake" / "slurm_logs" / "rule_train").glob("*/*.log"))


def test_slurm_records_every_non_local_job_and_no_local_one(study):
    records = study["records"]
    assert all(r["State"] == "COMPLETED" for r in records), records
    submitted = Counter(rule_of(r["Comment"]) for r in records)
    expected = {rule: n for rule, n in study["plan"].items() if rule in NON_LOCAL}
    assert set(study["plan"]) <= NON_LOCAL | LOCAL, f"a rule neither local nor known to run on SLURM: {study['plan']}"
    assert dict(submitted) == expected
    assert not set(submitted) & LOCAL
    # the local rules ran in the main Snakemake process instead
    for rule in LOCAL & set(study["plan"]):
        assert re.search(rf"localrule {rule}:", study["log"]), rule

    # a GPU rule asked SLURM for a GPU; the others did not
    for r in records:
        gpu = "gres/gpu=1" in r["ReqTRES"]
        assert gpu == (rule_of(r["Comment"]) == "train"), r
    train = [line for line in study["sbatch"] if "--comment rule_train_" in line]
    assert len(train) == study["plan"]["train"] and all(" --gpus=1 " in line for line in train)
    assert all("--gpus" not in line for line in study["sbatch"] if "--comment rule_train_" not in line)
    # sizes come from the experiment config's resources: (attempt 1), not from the profile's defaults
    assert all(" -t 30 " in line and " --mem 2000 " in line for line in train)
    assert all(" -t 15 " in line for line in study["sbatch"] if "--comment rule_evaluate_" in line)
    assert all(" -A contam " in line and " -p debug " in line for line in study["sbatch"])


def test_gpu_jobs_without_cuda_fail_unless_fallback_is_allowed(study, cluster):
    """A --gpus=1 job gets a fake GPU (CUDA_VISIBLE_DEVICES set) but torch finds no CUDA."""
    probe = (
        "import os, torch; from contam.devices import NoGPUError, pick_device\n"
        "try:\n    pick_device('auto', gpus=1)\nexcept NoGPUError as error:\n    print('refused', 'allow_cpu_fallback' in str(error))\n"
        "print(os.environ.get('CUDA_VISIBLE_DEVICES'), torch.cuda.is_available(), pick_device('auto', gpus=1, allow_cpu_fallback=True))"
    )
    result = subprocess.run(
        ["srun", "-p", "debug", "-A", "contam", "--gpus=1", "--mem", "1000", "-t", "5", sys.executable, "-c", probe],
        env=cluster, capture_output=True, text=True, timeout=300, check=True,
    )
    assert result.stdout.split() == ["refused", "True", "0", "False", "cpu"], result.stdout + result.stderr


def test_outputs_match_a_local_run(study, request):
    """Manifests and the metrics of two runs, built without SLURM: the same (the index is the local one).

    The local build is the session's tiny study (conftest.tiny_study, which
    test_workflow.py checks): the same config except for what only changes
    how jobs run (the GPU request, CPU fallback), so the same fingerprints.
    """
    out = study["root"] / "results" / "tiny"
    assert len(sorted(out.glob("runs/*/ratio-*/*/seed-*"))) == study["plan"]["train"] == 3  # real-only, and each arm at 0.5
    local_root, local_path = request.getfixturevalue("tiny_study")  # only once SLURM is known to be there
    not_compared = ("resources", "execution", "analysis")  # how jobs run, and what the SLURM study leaves out
    local_config, cluster_config = ({k: v for k, v in yaml.safe_load(p.read_text()).items() if k not in not_compared} for p in (local_path, study["config"]))
    assert local_config == cluster_config
    runs = ["results/tiny/runs/real/ratio-0.0/resnet10t/seed-0/metrics.json", "results/tiny/runs/control/ratio-0.5/resnet10t/seed-0/metrics.json"]
    targets = ["results/tiny/real/index.parquet", "results/tiny/manifests/control/ratio-0.5.parquet", "results/tiny/manifests/real/ratio-0.0.parquet"]
    for target in targets:
        assert file_sha256(local_root / target) == file_sha256(study["root"] / target), target
    for target in runs:
        local, cluster_run = (json.loads((root / target).read_text()) for root in (local_root, study["root"]))
        assert local["fingerprint"] == cluster_run["fingerprint"], target
        assert local["test"] == cluster_run["test"] and local["validation"] == cluster_run["validation"], target
        assert local["test"]["top1"] > 0.2, target  # better than chance (0.1) by a margin


def test_partial_rerun_and_scancel(study, cluster):
    """One run removed: only its jobs are planned, and only its job is submitted; killed from outside
    (scancel, like a preemption) it fails and --retries resubmits it, bigger.

    One submission checks both (a second SLURM round trip cost ~90 s of the suite).
    """
    root, config = study["root"], study["config"]
    run_dir = root / "results" / "tiny" / RUN
    shutil.rmtree(run_dir, ignore_errors=True)
    plan = job_counts(snakemake("-n", "--quiet", "rules", "--configfile", str(config), cwd=root, env=cluster).stdout)
    assert {rule: n for rule, n in plan.items() if rule in NON_LOCAL} == {"train": 1, "evaluate": 1}
    target = f"results/tiny/{RUN}/model.safetensors"
    args = [*SNAKEMAKE, target, *CLUSTER_ARGS, "--retries", "1", "--configfile", str(config)]
    with (root / "scancel.log").open("w+") as log:
        proc = subprocess.Popen(args, cwd=root, env=cluster, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            job_id, deadline = None, time.monotonic() + 120
            while job_id is None and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.5)
                log.seek(0)
                name = re.findall(rf"--job-name ({PREFIX}_[0-9a-f-]{{36}})", log.read())
                if name:
                    running = subprocess.run(["squeue", "-h", "-t", "R", "--name", name[0], "-o", "%i"],
                                             env=cluster, capture_output=True, text=True).stdout.split()
                    job_id = running[0] if running else None
            assert job_id, "the train job never ran"
            time.sleep(2)  # let it start working
            subprocess.run(["scancel", job_id], env=cluster, check=True)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        log.seek(0)
        text = log.read()
    assert proc.returncode == 0, text[-6000:]
    assert "Error in rule train" in text and "CANCELLED" in text, text[-6000:]
    records = sacct(cluster, run_uuid(text), len(sbatch_lines(text)))
    states = [(r["JobID"], r["State"].split()[0], rule_of(r["Comment"])) for r in records]
    assert states == [(job_id, "CANCELLED", "train"), (states[1][0], "COMPLETED", "train")], states
    # only the removed run's job went to SLURM, both times
    assert {r["Comment"] for r in records} == {"rule_train_wildcards_generated_0.5_resnet10t_0"}
    # attempt 2 asked for more: runtime and memory grow with the attempt (growth 2.0)
    first, second = sbatch_lines(text)
    assert " -t 30 " in first and " --mem 2000 " in first
    assert " -t 60 " in second and " --mem 4000 " in second
    assert (run_dir / "model.safetensors").exists()
