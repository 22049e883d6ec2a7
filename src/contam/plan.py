"""The cost plan: what a config will cost, before anything is submitted.

For any config, without running a job and without the data:

1. the jobs come from Snakemake's own DAG of the config (every job, as if
   nothing had run), so the plan and the run never disagree on what runs;
2. each job's work is sized in its rule's unit (``contam.work``) from the config
   and, where a run has written them, the real indexes' row counts;
3. each rule's time is ``fixed + rate x work``, fitted on the ledger of measured
   jobs for the device it runs on (``contam.ledger``), or taken from a named
   published figure (``data/cost_priors.yaml``) where the ledger has none;
4. the jobs are list-scheduled in DAG order on K GPUs and C CPU slots for the
   makespan; intervals come from the fit's scatter and the machines' spread.

``python -m contam.plan --configfile config/imagenet.yaml --gpus 8`` prints the
table and writes ``results/{experiment}/plan/plan.json`` and ``plan.html``;
``python -m contam.plan gather --configfile ...`` adds a finished run's
``benchmark:`` files to the ledger.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import yaml

from contam import config as contam_config
from contam import generative, io, layout, ledger, work

REPO = Path(__file__).resolve().parents[2]
PRIORS_FILE = Path(__file__).with_name("data") / "cost_priors.yaml"
DEFAULT_LEVEL = 0.9
# Bytes on disk per stored pixel of a photographic 512x512 image, from
# bench/storage.py (bench/RESULTS.md): PNG 380 kB, JPEG q90 66 kB, WebP q90 54 kB.
BYTES_PER_PIXEL = {"png": 1.45, "jpeg": 0.25, "jpg": 0.25, "webp": 0.21}
# A manifest or index row (path, label, provenance) in zstd Parquet.
BYTES_PER_ROW = 40


class PlanError(ValueError):
    """The plan cannot be made: a size it needs is missing, or a config is wrong."""


@dataclasses.dataclass(frozen=True)
class Job:
    id: int
    rule: str
    wildcards: dict
    threads: int
    gpus: int
    mem_mb: int
    runtime_min: int
    deps: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return layout.JOB_NAMES.get(self.rule, "").format(**self.wildcards) if self.rule in layout.JOB_NAMES else ""


@dataclasses.dataclass(frozen=True)
class Sized:
    work: float
    unit: str
    settings: dict
    disk_bytes: float = 0.0


# ---- 1. the jobs -------------------------------------------------------------


def dag_jobs(configfiles: list[str | Path], overrides: dict | None = None, snakefile: str | Path | None = None) -> tuple[dict, list[Job]]:
    """The validated config and every job of its DAG, as if nothing had run.

    Uses Snakemake's API the way ``snakemake --forceall --dag`` does (no lock,
    no job runs, data paths unchecked), so it works on any machine.
    """
    from snakemake.api import SnakemakeApi
    from snakemake.exceptions import WorkflowError
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, Quietness, ResourceSettings

    snakefile = Path(snakefile or REPO / "Snakefile").resolve()
    files = [Path(f).resolve() for f in configfiles]
    for f in files:
        if not f.exists():
            raise PlanError(f"config file {f} does not exist")
    try:
        with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
            # Cores high enough that no rule's threads are capped by this machine.
            workflow_api = api.workflow(
                resource_settings=ResourceSettings(cores=1 << 16),
                config_settings=ConfigSettings(configfiles=files, config=dict(overrides or {})),
                snakefile=snakefile,
                workdir=Path.cwd(),
            )
            dag_api = workflow_api.dag(dag_settings=DAGSettings(forceall=True))
            workflow = dag_api.workflow_api._workflow
            workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
            workflow._build_dag()
            dag = workflow.dag
            # Target rules (all) do no work; every rule that does is in JOB_NAMES.
            working = [j for j in dag.jobs if j.rule.name in layout.JOB_NAMES]
            ids = {job: i for i, job in enumerate(sorted(working, key=lambda j: (j.rule.name, str(j.wildcards_dict))))}
            jobs = []
            for job, i in ids.items():
                resources = dict(job.resources)
                jobs.append(Job(
                    id=i,
                    rule=job.rule.name,
                    wildcards={k: str(v) for k, v in job.wildcards_dict.items()},
                    threads=int(job.threads),
                    gpus=int(resources.get("gpu", 0) or 0),
                    mem_mb=int(resources.get("mem_mb", 0) or 0),
                    runtime_min=int(resources.get("runtime", 0) or 0),
                    deps=tuple(sorted(ids[d] for d in dag.dependencies[job] if d in ids)),
                ))
            config = json.loads(json.dumps(workflow.config, default=str))
    except WorkflowError as error:
        raise PlanError(str(error)) from error
    return config, sorted(jobs, key=lambda j: j.id)


# ---- 2. the work of each job ------------------------------------------------------


class Sizes:
    """How many images each part of the study has: from its index where one exists, else the config."""

    def __init__(self, config: dict, use_results: bool = True):
        self.config = config
        self.out = contam_config.experiment_dir(config)
        self.use_results = use_results
        self.plan_sizes = (config.get("plan") or {}).get("sizes") or {}
        self._real: dict[str, int] | None = None

    def _rows(self, path: str) -> int | None:
        if not self.use_results or not Path(path).exists():
            return None
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows

    def real(self) -> dict[str, int]:
        """Images per split of the real data."""
        if self._real is not None:
            return self._real
        real = self.config["real"]
        index = layout.real_index(self.out)
        if self.use_results and Path(index).exists():
            self._real = io.read_parquet(index, columns=["split"])["split"].value_counts().to_dict()
        elif real["kind"] == "digits":
            from sklearn.datasets import load_digits

            from contam.index_real import digits_splits

            splits = digits_splits(load_digits().target, real["split_fractions"], self.config["seed"])
            self._real = pd.Series(splits).value_counts().to_dict()
        else:
            given = self.plan_sizes.get("real") or {}
            if "train" not in given:
                raise PlanError(
                    "plan.sizes.real.train: the plan needs the real training set's size for "
                    f"real.kind {real['kind']!r} (no real index at {index} yet); e.g. plan: {{sizes: {{real: {{train: 1281167, test: 50000}}}}}}"
                )
            self._real = {k: int(v) for k, v in given.items()}
        return self._real

    def real_split(self, split: str) -> int:
        return int(self.real().get(split, 0))

    def generated(self, source: str) -> int:
        rows = self._rows(layout.generated_index(self.out, source))
        if rows is not None:
            return rows
        expected = contam_config.expected_image_count(self.config, source)
        if expected is not None:
            return expected
        return self._given("sources", source)

    def control(self, source: str) -> int:
        spec = self.config["sources"][source]
        if "real_split" in spec:
            return self.real_split(spec["real_split"])
        rows = self._rows(layout.control_index(self.out, source))
        return rows if rows is not None else self._given("sources", source)

    def ood(self, name: str) -> int:
        rows = self._rows(layout.ood_index(self.out, name))
        return rows if rows is not None else self._given("ood", name)

    def _given(self, group: str, name: str) -> int:
        value = (self.plan_sizes.get(group) or {}).get(name)
        if value is None:
            raise PlanError(f"plan.sizes.{group}.{name}: the plan needs this set's image count (no index of it yet)")
        return int(value)

    def train_rows(self) -> int:
        # Every mix keeps the real training set's size (a share r is replaced).
        return self.real_split("train")

    def test_images(self) -> int:
        return self.real_split("test")


def _generator_settings(config: dict, name: str) -> dict:
    spec = config["generators"][name]
    if spec["kind"] == "embedded":
        return {"kind": "embedded", "height": spec["image_size"], "width": spec["image_size"], "steps": spec["sample"]["steps"],
                "guided": work.guides("embedded", spec["sample"]["guidance"]), "format": "png"}
    return {"kind": spec["kind"], "height": spec.get("height", 512), "width": spec.get("width", 512), "steps": spec.get("steps", 50),
            "guided": work.guides("diffusers", spec.get("guidance", 7.5)), "format": spec.get("image_format", "png"), "dtype": spec.get("dtype", "fp16"),
            "stored": spec.get("storage_size")}


def _model_size(config: dict, model: str) -> tuple[float, int]:
    """GMACs per image and parameters of a study's model (3-channel input, the study's classes)."""
    spec = config["models"][model]
    return work.model_size(spec["arch"], int(spec["image_size"]), contam_config.num_classes(config))


# Rules that run another rule's code on the same kind of input are sized and
# costed as that rule (a filtered twin is a manifest like any other; detector
# images are one more shard of the source).
COSTED_AS = {"train_filtered": "train", "evaluate_filtered": "evaluate", "generate_detector_images": "generate_shard"}


def costed_as(rule: str) -> str:
    return COSTED_AS.get(rule, rule)


def size_job(job: Job, config: dict, sizes: Sizes) -> Sized:
    """The work of one job, in its rule's unit, and what it writes to disk."""
    w, rule = job.wildcards, costed_as(job.rule)
    execution = config.get("execution", {})
    if rule == "index_real":
        # Exporting the bundled digits and checking a folder of JPEGs are different work per row.
        n = sum(sizes.real().values())
        return Sized(n, "row", {"kind": config["real"]["kind"]}, n * BYTES_PER_ROW)
    if rule == "index_control":
        n = sizes.control(w["control_source"])
        return Sized(n, "row", {"kind": "image_folder"}, n * BYTES_PER_ROW)
    if rule == "index_ood":
        n = sizes.ood(w["ood_set"])
        return Sized(n, "row", {}, n * BYTES_PER_ROW)
    if rule in ("build_prompts", "gather_generated"):
        n = sizes.generated(w["generated_source"])
        return Sized(n, "row", {}, n * BYTES_PER_ROW)
    if rule == "fit_generator":
        fit = config["generators"][w["generator"]]["fit"]
        size = config["generators"][w["generator"]]["image_size"]
        return Sized(work.fitting(fit["steps"], fit["batch_size"], size), "sample_step_mpx", {})
    if rule == "generate_shard":
        source = w["generated_source"]
        spec = config["sources"][source]
        if job.rule == "generate_detector_images":
            images = config["remedies"]["detector_data"]["generated_per_class"] * contam_config.num_classes(config)
        else:
            images = sizes.generated(source) / spec["shards"]
        g = _generator_settings(config, spec["generator"])
        settings = {"batch_size": execution.get("generate_batch_size")} | ({"dtype": g["dtype"]} if "dtype" in g else {})
        # storage_size: stored downscaled (square), like the real images it stands beside.
        stored = g["height"] * g["width"] if not g.get("stored") else g["stored"] ** 2
        disk = images * stored * BYTES_PER_PIXEL.get(g["format"], BYTES_PER_PIXEL["png"])
        return Sized(work.generation(images, g["steps"], g["height"], g["width"], g["guided"]), "image_step_mpx", settings, disk)
    if rule == "prepare_cached_copies":
        # A copy is a decode, a resize and an encode: its work is the images.
        collection = w["collection"]
        if collection == "real":
            n = sum(sizes.real().values())
        elif collection.startswith("ood-"):
            n = sizes.ood(collection[len("ood-"):])
        elif collection in contam_config.sources_of(config, "generated"):
            n = sizes.generated(collection)
        else:
            n = sizes.control(collection)
        return Sized(n, "row", {}, n * (config.get("prepare") or {}).get("short_side", 256) ** 2 * 4 / 3 * BYTES_PER_PIXEL["jpeg"])
    if rule == "mix":
        n = sizes.train_rows()
        return Sized(n, "row", {}, n * BYTES_PER_ROW)
    if rule in ("train", "evaluate"):
        gmacs, params = _model_size(config, w["model"])
        recipe = contam_config.training_recipe(config, w["model"])
        if rule == "train":
            settings = {"precision": recipe.get("precision"), "channels_last": recipe.get("channels_last"), "batch_size": recipe.get("batch_size"),
                        "loader": "files", "loop": "contam"}
            # What stays is the final fp32 weights; the resume checkpoint is removed at the end.
            return Sized(work.training(sizes.train_rows(), recipe["epochs"], gmacs), "image_epoch_gmac", settings, params * 4)
        images = sizes.test_images() + sum(sizes.ood(o) for o in (config.get("evaluation", {}).get("ood_sets") or {}))
        return Sized(work.inference(images, gmacs), "image_gmac", {"precision": recipe.get("precision"), "batch_size": execution.get("eval_batch_size"),
                                                                   "loader": "files", "loop": "contam"})
    if rule == "extract_features":
        analysis = config["analysis"]
        name = w["feature_set"]
        classes = contam_config.num_classes(config)
        available = sizes.real_split(analysis["reference_split"]) if name == layout.REFERENCE_FEATURES else (
            sizes.generated(name) if name in contam_config.sources_of(config, "generated") else sizes.control(name))
        images = min(available, analysis["max_per_class"] * classes)
        if analysis["feature_extractor"] == "inception":
            gmacs = work.model_gmacs("inception_v3", 299)
            dim = 2048
        else:
            gmacs, _ = _model_size(config, analysis.get("classifier") or next(iter(config["models"])))
            dim = 512
        return Sized(work.inference(images, gmacs), "image_gmac", {"loader": "files", "loop": "contam"}, images * dim * 4)
    if rule == "compare_distributions":
        per_set = contam_config.num_classes(config) * config["analysis"]["max_per_class"]
        return Sized(float(per_set) ** 2, "pair", {})
    if rule == "fit_and_score_generative_model":
        settings = generative.unit_settings(config, generative.Unit(w["track"], w["level"], int(w["seed"])))
        size = settings["image_size"]
        fit, sample = settings["fit"], settings["sample"]
        samples = settings["samples_per_class"] * settings["num_classes"]
        # A training step is a forward and a backward pass: ~3 forward passes.
        fitted = 3 * work.fitting(fit["steps"], fit["batch_size"], size)
        sampled = work.generation(samples, sample["steps"], size, size, work.guides("embedded", sample["guidance"]))
        return Sized(fitted + sampled, "sample_step_mpx", {}, samples * size * size * BYTES_PER_PIXEL["png"])
    return Sized(1.0, "job", {})


# ---- 3. the cost model per rule and device ------------------------------------------------


@dataclasses.dataclass
class RuleCost:
    rule: str
    device_kind: str
    fixed_s: float
    rate: float  # seconds per unit of work
    log_sd: float  # spread of log(actual / predicted)
    n: int  # ledger rows it was fitted on (0: a prior)
    basis: str  # "ledger", "ledger (other settings)", "prior", "prior (stand-in: <kind>)", "start-up only"
    source: str
    peak_mem_mb: float | None = None

    def predict(self, amount: float, level: float = DEFAULT_LEVEL) -> tuple[float, float, float]:
        """Seconds: the estimate and its ``level`` interval (log-normal about the fit)."""
        mid = self.fixed_s + self.rate * amount
        z = NormalDist().inv_cdf(0.5 + level / 2)
        return mid, mid * math.exp(-z * self.log_sd), mid * math.exp(z * self.log_sd)

    def quantile(self, amount: float, q: float) -> float:
        return (self.fixed_s + self.rate * amount) * math.exp(NormalDist().inv_cdf(q) * self.log_sd)


def load_priors(path: str | Path = PRIORS_FILE) -> dict:
    return yaml.safe_load(Path(path).read_text())


def fit_rule(rows: pd.DataFrame, startup_s: float, machine_spread: float) -> tuple[float, float, float]:
    """``(fixed_s, rate, log_sd)`` of wall = fixed + rate x work over ledger rows.

    With works spread over at least 1.5x, both terms are fitted (non-negative
    least squares on relative errors, so a long job does not outweigh many
    short ones). Otherwise the fixed part is the device's start-up and the
    rate is the median of the rest. Bench rows time only the steady state, so
    they give a rate and the start-up is added to them.
    """
    x, y = rows["work"].to_numpy(float), rows["wall_s"].to_numpy(float)
    steady = rows["origin"].str.startswith("bench:").to_numpy()
    if steady.all():
        fixed, rate = startup_s, float(np.median(y / x))
        predicted = rate * x
    elif len(x) >= 3 and x.max() / x.min() >= 1.5:
        fixed, rate = relative_least_squares(x, y)
        predicted = fixed + rate * x
    else:
        fixed = min(startup_s, 0.5 * float(np.median(y)))
        rate = float(np.median(np.maximum(y - fixed, 0) / x))
        predicted = fixed + rate * x
    residuals = np.log(np.maximum(y, 1e-3) / np.maximum(predicted, 1e-3))
    scatter = float(np.std(residuals, ddof=1)) if len(y) >= 3 else 0.0
    return fixed, rate, math.sqrt(scatter**2 + machine_spread**2)


def relative_least_squares(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Non-negative ``(a, b)`` minimising the squared relative error of ``a + b x`` against ``y``.

    Two unknowns: the unconstrained solution, or, where it has a negative term,
    the better of the two one-term fits (which is then the exact constrained optimum).
    """
    w = 1.0 / y**2
    design = np.stack([np.ones_like(x), x], axis=1)
    normal = design.T @ (design * w[:, None])
    a, b = np.linalg.solve(normal, design.T @ (w * y))
    if a >= 0 and b >= 0:
        return float(a), float(b)
    only_a = float((w * y).sum() / w.sum())
    only_b = float((w * x * y).sum() / (w * x * x).sum())

    def loss(a: float, b: float) -> float:
        return float((w * (a + b * x - y) ** 2).sum())

    return (only_a, 0.0) if loss(only_a, 0.0) <= loss(0.0, only_b) else (0.0, only_b)


def device_startup(rows: pd.DataFrame, default: float) -> float:
    """A job's start-up on a device: the quarter-quantile wall of its light jobs (mostly imports)."""
    light = rows[rows["work_unit"].isin(["row", "job"]) & ~rows["origin"].str.startswith("bench:")]
    return float(light["wall_s"].quantile(0.25)) if len(light) >= 3 else default


def _settings_match(row_settings: str, wanted: dict) -> bool:
    have = json.loads(row_settings or "{}")
    return all(have[k] == v for k, v in wanted.items() if k in have and v is not None)


class CostModel:
    """Rule costs for the plan's devices, fitted once per (rule, device, settings)."""

    def __init__(self, ledger_rows: pd.DataFrame, priors: dict):
        self.rows = ledger_rows
        self.priors = priors
        self.machine_spread = float(priors["machine_spread"])
        self._cache: dict[tuple, RuleCost] = {}

    def startup(self, kind: str) -> float:
        prior = self._device_priors(kind)[1].get("startup_s", 10.0)
        return device_startup(self.rows[self.rows["device_kind"] == kind], prior)

    def _device_priors(self, kind: str) -> tuple[str, dict]:
        devices = self.priors.get("devices") or {}
        if kind in devices:
            return kind, devices[kind]
        if kind.startswith("cuda:"):
            stand_in = self.priors["stand_in"]
            return stand_in, devices[stand_in]
        return "cpu", self.priors["cpu"]

    def cost(self, rule: str, kind: str, settings: dict) -> RuleCost:
        key = (rule, kind, json.dumps(settings, sort_keys=True, default=str))
        if key not in self._cache:
            self._cache[key] = self._fit(rule, kind, settings)
        return self._cache[key]

    def _fit(self, rule: str, kind: str, settings: dict) -> RuleCost:
        rows = self.rows[(self.rows["device_kind"] == kind) & (self.rows["rule"].map(costed_as) == rule)]
        if "kind" in settings:
            # Rows of another data kind (digits exported vs JPEGs checked) say nothing about this one.
            rows = rows[[json.loads(s or "{}").get("kind", settings["kind"]) == settings["kind"] for s in rows["settings"]]]
        startup = self.startup(kind)
        if len(rows):
            matching = rows[[_settings_match(s, settings) for s in rows["settings"]]]
            basis = "ledger" if len(matching) else "ledger (other settings)"
            used = matching if len(matching) else rows
            # Whole jobs (start-up and all) over bench rows (steady state only), where there are both.
            jobs = used[~used["origin"].str.startswith("bench:")]
            used = jobs if len(jobs) else used
            fixed, rate, log_sd = fit_rule(used, startup, self.machine_spread)
            peak = used["max_rss_mb"].max()
            origins = sorted({o.split(":", 1)[0] for o in used["origin"]})
            return RuleCost(rule, kind, fixed, rate, log_sd, len(used), basis, f"{len(used)} measured job(s) ({', '.join(origins)})",
                            None if pd.isna(peak) else float(peak))
        prior_kind, device = self._device_priors(kind)
        prior = (device.get("rules") or {}).get(rule)
        spread = math.sqrt(float(self.priors["prior_spread"]) ** 2 + self.machine_spread**2)
        if prior is None:
            # Nothing known but the device's start-up: a light job, or a gap the plan owns up to.
            return RuleCost(rule, kind, startup, 0.0, spread, 0, "start-up only", "no measurement and no prior: start-up time only")
        basis = "prior" if prior_kind == kind or (prior_kind == "cpu" and kind.startswith("cpu")) else f"prior (stand-in: {prior_kind})"
        fixed = float(prior.get("fixed_s", device.get("startup_s", startup)))
        return RuleCost(rule, kind, fixed, float(prior["rate"]), spread, 0, basis, prior["source"])


# ---- 4. scheduling -----------------------------------------------------------------


def makespan(jobs: list[Job], seconds: dict[int, float], gpus: int, cpus: int) -> float:
    """Finish time of a list schedule in DAG order.

    A job starts once its inputs exist and its threads (and GPUs) are free.
    GPU jobs and CPU jobs wait in separate queues; within each, the job with
    the longest path to the end goes first (the critical-path rule), and a job
    that does not fit yet holds its queue (no backfilling).
    """
    by_id = {j.id: j for j in jobs}
    children: dict[int, list[int]] = defaultdict(list)
    for j in jobs:
        for d in j.deps:
            children[d].append(j.id)
    tail: dict[int, float] = {}
    for jid in reversed(_topological(jobs, children)):
        tail[jid] = seconds[jid] + max((tail[c] for c in children[jid]), default=0.0)
    waiting = {j.id: len(j.deps) for j in jobs}
    queues: dict[bool, list[tuple[float, int]]] = {True: [], False: []}

    def make_ready(jid: int) -> None:
        heapq.heappush(queues[by_id[jid].gpus > 0], (-tail[jid], jid))

    for j in jobs:
        if not j.deps:
            make_ready(j.id)
    running: list[tuple[float, int]] = []
    free_cpu, free_gpu, now, done = cpus, gpus, 0.0, 0
    while done < len(jobs):
        for queue in queues.values():
            while queue:
                job = by_id[queue[0][1]]
                need_cpu = min(job.threads, cpus)
                if need_cpu > free_cpu or job.gpus > free_gpu:
                    break
                heapq.heappop(queue)
                free_cpu -= need_cpu
                free_gpu -= job.gpus
                heapq.heappush(running, (now + seconds[job.id], job.id))
        if not running:
            raise PlanError("the schedule is stuck: a job needs more GPUs or threads than the plan has")
        now, jid = heapq.heappop(running)
        job = by_id[jid]
        free_cpu += min(job.threads, cpus)
        free_gpu += job.gpus
        done += 1
        for c in children[jid]:
            waiting[c] -= 1
            if waiting[c] == 0:
                make_ready(c)
    return now


def _topological(jobs: list[Job], children: dict[int, list[int]]) -> list[int]:
    indegree = {j.id: len(j.deps) for j in jobs}
    order = sorted(jid for jid, d in indegree.items() if d == 0)
    for jid in order:  # grows as it goes: Kahn's algorithm
        for c in children[jid]:
            indegree[c] -= 1
            if indegree[c] == 0:
                order.append(c)
    return order


# ---- the plan -----------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    experiment: str
    gpus: int
    cpus: int
    gpu_kind: str
    cpu_kind: str
    level: float
    quantile: float
    jobs: pd.DataFrame  # one row per job
    rules: pd.DataFrame  # one row per rule
    totals: dict
    resources: dict  # per rule: suggested runtime (min) and mem_mb

    def to_json(self) -> dict:
        return {
            "experiment": self.experiment, "gpus": self.gpus, "cpus": self.cpus, "gpu_kind": self.gpu_kind, "cpu_kind": self.cpu_kind,
            "interval_level": self.level, "resource_quantile": self.quantile, "totals": self.totals,
            "rules": json.loads(self.rules.to_json(orient="records")), "suggested_resources": self.resources,
            "jobs": json.loads(self.jobs.to_json(orient="records")),
        }


def make_plan(
    config: dict,
    jobs: list[Job],
    ledger_rows: pd.DataFrame,
    *,
    gpus: int,
    cpus: int,
    gpu_kind: str,
    cpu_kind: str,
    priors: dict | None = None,
    level: float = DEFAULT_LEVEL,
    quantile: float = 0.9,
    use_results: bool = True,
) -> Plan:
    if not 0 < level < 1 or not 0 < quantile < 1:
        raise PlanError(f"the interval level and the resource quantile must be in (0, 1), got {level} and {quantile}")
    needs_gpu = max((j.gpus for j in jobs), default=0)
    if needs_gpu > gpus:
        raise PlanError(f"--gpus {gpus}: the config's jobs ask for up to {needs_gpu} GPU(s) each (resources.*.gpu); plan with at least that many")
    if cpus < 1:
        raise PlanError(f"--cpus must be at least 1, got {cpus}")
    model = CostModel(ledger_rows, priors or load_priors())
    sizes = Sizes(config, use_results=use_results)
    records = []
    for job in jobs:
        sized = size_job(job, config, sizes)
        kind = gpu_kind if job.gpus > 0 else cpu_kind
        cost = model.cost(costed_as(job.rule), kind, sized.settings)
        mid, lo, hi = cost.predict(sized.work, level)
        records.append({
            "id": job.id, "rule": job.rule, "job": job.name, "device_kind": kind, "threads": job.threads, "gpus": job.gpus,
            "work": sized.work, "work_unit": sized.unit, "seconds": mid, "seconds_low": lo, "seconds_high": hi,
            "seconds_at_quantile": cost.quantile(sized.work, quantile), "disk_bytes": sized.disk_bytes,
            "peak_mem_mb": cost.peak_mem_mb if cost.peak_mem_mb is not None else np.nan, "configured_mem_mb": job.mem_mb,
            "basis": cost.basis, "source": cost.source,
        })
    table = pd.DataFrame(records)
    span = {name: makespan(jobs, dict(zip(table["id"], table[column])), gpus, cpus)
            for name, column in (("mid", "seconds"), ("low", "seconds_low"), ("high", "seconds_high"))}
    on_gpu = table.loc[table["gpus"] > 0]
    totals = {
        "jobs": len(table),
        # Errors within a rule share the rule's fit, so its jobs' bounds add up;
        # the total adds the rules' bounds too (no averaging-out is assumed).
        "gpu_hours": _hours(on_gpu, "seconds", weight="gpus"), "gpu_hours_low": _hours(on_gpu, "seconds_low", weight="gpus"),
        "gpu_hours_high": _hours(on_gpu, "seconds_high", weight="gpus"),
        "cpu_hours": _hours(table, "seconds", weight="threads"), "cpu_hours_low": _hours(table, "seconds_low", weight="threads"),
        "cpu_hours_high": _hours(table, "seconds_high", weight="threads"),
        "disk_gb": float(table["disk_bytes"].sum() / 1e9),
        "makespan_hours": span["mid"] / 3600, "makespan_hours_low": span["low"] / 3600, "makespan_hours_high": span["high"] / 3600,
        "rules_on_priors": sorted(set(table.loc[table["basis"].str.startswith("prior"), "rule"])),
        "rules_without_data": sorted(set(table.loc[table["basis"] == "start-up only", "rule"])),
    }
    return Plan(config["experiment"], gpus, cpus, gpu_kind, cpu_kind, level, quantile, table, _per_rule(table), totals, suggest_resources(table))


def _hours(table: pd.DataFrame, column: str, weight: str) -> float:
    return float((table[column] * table[weight].clip(lower=1)).sum() / 3600) if len(table) else 0.0


def _per_rule(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for rule, group in table.groupby("rule", sort=False):
        on_gpu = group["gpus"] > 0
        rows.append({
            "rule": rule, "jobs": len(group), "device_kind": ", ".join(sorted(set(group["device_kind"]))),
            "work_unit": group["work_unit"].iloc[0], "work_per_job": float(group["work"].median()),
            "seconds_per_job": float(group["seconds"].median()),
            "gpu_hours": float((group.loc[on_gpu, "seconds"] * group.loc[on_gpu, "gpus"]).sum() / 3600),
            "cpu_hours": float((group["seconds"] * group["threads"]).sum() / 3600),
            "hours_low": float(group["seconds_low"].sum() / 3600), "hours_high": float(group["seconds_high"].sum() / 3600),
            "peak_mem_mb": float(group["peak_mem_mb"].max()) if group["peak_mem_mb"].notna().any() else np.nan,
            "disk_gb": float(group["disk_bytes"].sum() / 1e9), "basis": group["basis"].iloc[0], "source": group["source"].iloc[0],
        })
    return pd.DataFrame(rows)  # in the order rules first appear (groupby sort=False)


def suggest_resources(table: pd.DataFrame) -> dict:
    """Per rule: ``runtime`` (minutes) that the slowest job meets at the quantile,
    and ``mem_mb`` at 1.25x the measured peak (the configured value where nothing was measured)."""
    suggestions = {}
    for rule, group in table.groupby("rule", sort=True):
        minutes = max(5, math.ceil(group["seconds_at_quantile"].max() / 60))
        peak = group["peak_mem_mb"].max()
        mem = int(math.ceil(peak * 1.25 / 100) * 100) if pd.notna(peak) else int(group["configured_mem_mb"].max())
        suggestions[rule] = {"runtime": minutes, "mem_mb": max(mem, 500)}
    return suggestions


# ---- presentation ----------------------------------------------------------------------


def _duration(hours: float) -> str:
    if hours >= 48:
        return f"{hours / 24:.1f} d"
    if hours >= 1:
        return f"{hours:.1f} h"
    return f"{hours * 60:.1f} min" if hours * 60 >= 1 else f"{hours * 3600:.0f} s"


def text_table(plan: Plan) -> str:
    r = plan.rules
    lines = [
        f"Cost plan for {plan.experiment!r}: {plan.totals['jobs']} jobs on {plan.gpus} GPU(s) [{plan.gpu_kind}] and {plan.cpus} CPU slot(s) [{plan.cpu_kind}]",
        f"{'rule':32s} {'jobs':>5s} {'s/job':>9s} {'GPU-h':>9s} {'CPU-h':>9s} {'peak MB':>8s} {'disk GB':>9s}  basis",
    ]
    for _, row in r.iterrows():
        peak = "-" if pd.isna(row["peak_mem_mb"]) else f"{row['peak_mem_mb']:.0f}"
        lines.append(f"{row['rule']:32s} {row['jobs']:5d} {row['seconds_per_job']:9.1f} {row['gpu_hours']:9.2f} {row['cpu_hours']:9.2f} {peak:>8s} {row['disk_gb']:9.2f}  {row['basis']}")
    t = plan.totals
    pct = int(round(100 * plan.level))
    lines += [
        f"total: {t['gpu_hours']:.1f} GPU-h [{t['gpu_hours_low']:.1f}, {t['gpu_hours_high']:.1f}], {t['cpu_hours']:.2f} CPU-h "
        f"[{t['cpu_hours_low']:.2f}, {t['cpu_hours_high']:.2f}], {t['disk_gb']:.1f} GB written ({pct} % intervals)",
        f"makespan: {_duration(t['makespan_hours'])} [{_duration(t['makespan_hours_low'])}, {_duration(t['makespan_hours_high'])}]",
    ]
    if t["rules_on_priors"]:
        lines.append("on published priors (no ledger rows for the device): " + ", ".join(t["rules_on_priors"]))
    if t["rules_without_data"]:
        lines.append("start-up time only (no measurement, no prior): " + ", ".join(t["rules_without_data"]))
    return "\n".join(lines)


def resources_yaml(plan: Plan) -> str:
    """The suggested sizes as a ``resources:`` block to paste into the config."""
    lines = [f"# suggested by contam.plan at the {plan.quantile:g} quantile of each rule's slowest job; mem_mb = 1.25 x measured peak", "resources:"]
    for rule, sizes in plan.resources.items():
        lines.append(f"  {rule}: {{runtime: {sizes['runtime']}, mem_mb: {sizes['mem_mb']}}}")
    return "\n".join(lines) + "\n"


def write_plan(plan: Plan, out_dir: str | Path) -> tuple[Path, Path]:
    from contam.report import html_table, write_html

    out_dir = Path(out_dir)
    io.write_json(plan.to_json(), out_dir / "plan.json")
    shown = plan.rules.assign(
        seconds_per_job=plan.rules["seconds_per_job"].map(lambda v: f"{v:.1f}"),
        gpu_hours=plan.rules["gpu_hours"].map(lambda v: f"{v:.2f}"), cpu_hours=plan.rules["cpu_hours"].map(lambda v: f"{v:.2f}"),
        hours_low=plan.rules["hours_low"].map(lambda v: f"{v:.2f}"), hours_high=plan.rules["hours_high"].map(lambda v: f"{v:.2f}"),
        work_per_job=plan.rules["work_per_job"].map(lambda v: f"{v:.4g}"), disk_gb=plan.rules["disk_gb"].map(lambda v: f"{v:.2f}"),
        peak_mem_mb=plan.rules["peak_mem_mb"].map(lambda v: "-" if pd.isna(v) else f"{v:.0f}"),
    )
    t = plan.totals
    pct = int(round(100 * plan.level))
    headline = (
        f"<ul class='headline'><li>{t['jobs']} jobs; {t['gpu_hours']:.1f} GPU-hours [{t['gpu_hours_low']:.1f}, {t['gpu_hours_high']:.1f}] and "
        f"{t['cpu_hours']:.2f} CPU-hours [{t['cpu_hours_low']:.2f}, {t['cpu_hours_high']:.2f}] ({pct} % intervals)</li>"
        f"<li>makespan on {plan.gpus} GPU(s) and {plan.cpus} CPU slot(s): {_duration(t['makespan_hours'])} "
        f"[{_duration(t['makespan_hours_low'])}, {_duration(t['makespan_hours_high'])}]</li><li>{t['disk_gb']:.1f} GB written</li></ul>"
        "<p class='note'>Each rule's time is fixed + rate &times; work, fitted on the ledger of measured jobs for its device, or a named "
        "published figure (basis: prior) where the ledger has none. Intervals add the fit's scatter to the machines' run-to-run spread.</p>"
    )
    sections = [
        ("Totals", headline),
        ("Per rule", html_table(shown)),
        ("Suggested SLURM resources", "<pre>" + resources_yaml(plan) + "</pre>"),
    ]
    html_path = write_html(out_dir, f"Cost plan: {plan.experiment}", sections, filename="plan.html")
    return out_dir / "plan.json", html_path


def plan_of_config(config: dict, **options) -> Plan:
    """The plan of a final config (a Snakemake job's), with its ``plan`` settings."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        config, jobs = dag_jobs([path])
    settings = config["plan"]
    return make_plan(
        config, jobs, ledger.read(settings["ledger_dir"]), gpus=settings["gpus"], cpus=settings["cpus"],
        gpu_kind=settings["gpu_kind"], cpu_kind=ledger.cpu_kind(), quantile=settings["resource_quantile"], **options,
    )


# ---- gathering a run into the ledger ------------------------------------------------


def _name_pattern(rule: str) -> re.Pattern:
    template = layout.JOB_NAMES[rule]
    pattern, last = "", 0
    for match in re.finditer(r"\{(\w+)\}", template):
        pattern += re.escape(template[last:match.start()]) + f"(?P<{match.group(1)}>[^/]+)"
        last = match.end()
    return re.compile("^" + pattern + re.escape(template[last:]) + "$")


def benchmark_jobs(bench_root: str | Path) -> list[tuple[Path, Job]]:
    """Every benchmark file under ``benchmarks/{experiment}`` with the job it timed."""
    root = Path(bench_root)
    found = []
    for path in sorted(root.rglob("*.tsv")):
        relative = path.relative_to(root).with_suffix("").as_posix()
        rule, _, name = relative.partition("/")
        if rule not in layout.JOB_NAMES:
            continue
        match = _name_pattern(rule).match(name)
        if match is None:
            continue
        found.append((path, Job(id=len(found), rule=rule, wildcards=match.groupdict(), threads=1, gpus=0, mem_mb=0, runtime_min=0)))
    return found


CUDA_IN_LOG = re.compile(r"device: cuda:\d+ \((.+?), \d+ visible\)")


def device_of_job(log_file: Path, uses_gpu: bool, cpu_kind: str) -> str | None:
    """The device a job ran on: the GPU its log names, or the CPU kind given.

    GPU jobs may have run on another node, so only their own log can say which
    GPU; one whose log does not is left out (None). The CPU model is not in the
    logs, so CPU jobs are credited to ``cpu_kind``.
    """
    if not uses_gpu:
        return cpu_kind
    if log_file.exists():
        found = CUDA_IN_LOG.search(log_file.read_text(errors="replace"))
        if found:
            return f"cuda:{found.group(1)}"
    return None


def gather(config: dict, bench_root: str | Path, ledger_dir: str | Path, device_kind: str | None = None, log_root: str | Path | None = None) -> dict[str, int]:
    """Add a run's ``benchmark:`` files to the ledger, each with the work its job did.

    Threads and GPUs per job come from the config's resources. A GPU job's
    device is the one its log names; CPU jobs are credited to this machine's
    CPU (or ``device_kind``, which overrides both).
    """
    from contam import resources as contam_resources

    sizes = Sizes(config, use_results=True)
    log_root = Path(log_root or f"logs/{config['experiment']}")
    cpu_kind = device_kind or ledger.cpu_kind()
    rows, unknown = [], 0
    for path, job in benchmark_jobs(bench_root):
        measured = ledger.read_benchmark_file(path)
        if not measured["wall_s"] > 0:
            continue
        spec = contam_resources.resource_set(config, job.rule)
        uses_gpu = int(spec.get("gpu", 0)) > 0
        kind = device_kind or device_of_job(Path(layout.job_file(str(log_root), job.rule, "log", **job.wildcards)), uses_gpu, cpu_kind)
        if kind is None:
            unknown += 1
            continue
        sized = size_job(job, config, sizes)
        rows.append({
            "device_kind": kind, "rule": job.rule, "job": job.name, "work": sized.work, "work_unit": sized.unit, **measured,
            "threads": int(spec["threads"]), "gpus": int(spec.get("gpu", 0)), "settings": ledger.settings_json(sized.settings),
            "origin": f"benchmark:{path}", "experiment": config["experiment"],
            "measured_at": pd.Timestamp(path.stat().st_mtime, unit="s", tz="UTC").isoformat(timespec="seconds"),
        })
    if unknown:
        print(f"contam plan gather: left out {unknown} GPU job(s) whose log names no CUDA device", file=sys.stderr)
    return ledger.append(rows, ledger_dir) if rows else {}


# ---- command line --------------------------------------------------------------------


def _overrides(pairs: list[str]) -> dict:
    result: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise PlanError(f"--config {pair!r}: expected key=value")
        result[key] = yaml.safe_load(value)
    return contam_config.typed_overrides(result)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    gathering = bool(argv) and argv[0] == "gather"
    parser = argparse.ArgumentParser(prog="contam plan" if not gathering else "contam plan gather", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", nargs="+", required=True)
    parser.add_argument("--config", nargs="*", default=[], help="key=value overrides, as snakemake --config")
    parser.add_argument("--ledger", help="the ledger folder (default: the config's plan.ledger_dir)")
    if gathering:
        argv = argv[1:]
        parser.add_argument("--benchmarks", help="the run's benchmark folder (default benchmarks/{experiment})")
        parser.add_argument("--device-kind", help="the device the jobs ran on (default: this machine's)")
    else:
        parser.add_argument("--gpus", type=int, help="GPUs to schedule on (default: plan.gpus)")
        parser.add_argument("--cpus", type=int, help="CPU slots (threads) to schedule on (default: plan.cpus)")
        parser.add_argument("--gpu-kind", help="the GPU the plan is for, e.g. 'cuda:NVIDIA H200' (default: plan.gpu_kind)")
        parser.add_argument("--cpu-kind", help="the CPU the plan is for (default: this machine's)")
        parser.add_argument("--level", type=float, default=DEFAULT_LEVEL, help="interval level (default 0.9)")
        parser.add_argument("--quantile", type=float, help="quantile for suggested runtimes (default: plan.resource_quantile)")
        parser.add_argument("--out", help="folder for plan.json and plan.html (default results/{experiment}/plan)")
        parser.add_argument("--fresh", action="store_true", help="size every job from the config, ignoring indexes a run has written")
    args = parser.parse_args(argv)
    try:
        config, jobs = dag_jobs(args.configfile, _overrides(args.config))
        settings = config.get("plan") or {}
        ledger_dir = args.ledger or settings.get("ledger_dir", "ledger")
        if gathering:
            bench_root = args.benchmarks or f"benchmarks/{config['experiment']}"
            added = gather(config, bench_root, ledger_dir, args.device_kind)
            print(f"ledger {ledger_dir}: " + (", ".join(f"{n} new row(s) for {k}" for k, n in added.items()) or "nothing new"))
            return 0
        plan = make_plan(
            config, jobs, ledger.read(ledger_dir),
            gpus=args.gpus if args.gpus is not None else int(settings.get("gpus", 0)),
            cpus=args.cpus if args.cpus is not None else int(settings.get("cpus", 2)),
            gpu_kind=args.gpu_kind or settings.get("gpu_kind", "cuda:NVIDIA A100-SXM4-80GB"),
            cpu_kind=args.cpu_kind or ledger.cpu_kind(),
            level=args.level, quantile=args.quantile or float(settings.get("resource_quantile", 0.9)), use_results=not args.fresh,
        )
    except (PlanError, ledger.LedgerError) as error:
        print(f"contam plan: error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out or f"{contam_config.experiment_dir(config)}/plan")
    json_path, html_path = write_plan(plan, out)
    print(text_table(plan))
    print()
    print(resources_yaml(plan), end="")
    print(f"wrote {json_path} and {html_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
