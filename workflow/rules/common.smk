import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, update_config, validate

min_version("9.0")

# The tested package lives in src/; jobs (local, conda or SLURM) import it from
# there even when it is not installed.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
os.environ.update(
    PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
)

from contam import config as contam_config
from contam import resources as contam_resources

# Only the --config values (not config files) need their YAML types back.
update_config(
    config, contam_config.typed_overrides(dict(workflow.config_settings.config))
)
validate(config, "../schemas/config.schema.yaml")
try:
    contam_config.check_semantics(config)
except contam_config.ConfigError as error:
    raise WorkflowError(str(error))


EXP = config["experiment"]
GENERATION_ONLY = contam_config.generation_only(config)
OUT = contam_config.experiment_dir(config)
LOGS = f"logs/{EXP}"
BENCH = f"benchmarks/{EXP}"
BASELINE = contam_config.BASELINE_SOURCE
SOURCES = sorted(config["sources"])
GENERATED = contam_config.sources_of(config, "generated")
CONTROLS = contam_config.sources_of(config, "control")
FOLDER_CONTROLS = [s for s in CONTROLS if "root" in config["sources"][s]]
EMBEDDED_GENERATORS = sorted(
    {
        config["sources"][s]["generator"]
        for s in GENERATED
        if config["generators"][config["sources"][s]["generator"]]["kind"] == "embedded"
    }
)
REPORT_FILES = [
    f"{OUT}/report/index.html",
    f"{OUT}/report/summary.csv",
    f"{OUT}/report/figures/accuracy.png",
]


def _alternatives(names):
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


wildcard_constraints:
    source=_alternatives([BASELINE, *SOURCES]),
    generated_source=_alternatives(GENERATED),
    control_source=_alternatives(FOLDER_CONTROLS),
    generator=_alternatives(EMBEDDED_GENERATORS),
    model=_alternatives(config.get("models", {})),
    feature_set=_alternatives([BASELINE, *SOURCES]),
    ratio=r"[01]\.\d+",
    seed=r"\d+",
    shard=r"\d+",


onstart:
    # Data paths are checked only when jobs will run: a dry run plans the
    # paper-scale DAG on any machine, without the data.
    missing = contam_config.missing_paths(config)
    if missing:
        raise WorkflowError("missing input paths:\n  - " + "\n  - ".join(missing))


# ---- input functions -------------------------------------------------------


def real_index(wildcards=None):
    return f"{OUT}/real/index.parquet"


def prompts_of(wildcards):
    return f"{OUT}/prompts/{wildcards.generated_source}.parquet"


def generator_of(source):
    return config["sources"][source]["generator"]


def generator_model(wildcards):
    """The embedded generator's trained weights; a diffusers model needs no job."""
    name = generator_of(wildcards.generated_source)
    if config["generators"][name]["kind"] == "embedded":
        return f"{OUT}/generators/{name}"
    return []


def shard_count(source):
    return int(config["sources"][source].get("shards", 1))


def shard_indexes(wildcards):
    source = wildcards.generated_source
    return [
        f"{OUT}/generated/{source}/shard-{k}.parquet"
        for k in range(shard_count(source))
    ]


def shard_counts(wildcards):
    return [p.replace(".parquet", ".json") for p in shard_indexes(wildcards)]


def contaminant_index(wildcards):
    """The pool a manifest draws replacement images from."""
    source = wildcards.source
    if source == BASELINE:
        if float(wildcards.ratio) != 0:
            raise WorkflowError(
                f"source {BASELINE!r} is the real-only baseline; it exists only at ratio 0.0"
            )
        return []
    if float(wildcards.ratio) == 0:
        raise WorkflowError(
            f"ratio 0 is shared by all sources: use {OUT}/manifests/{BASELINE}/ratio-0.0.parquet"
        )
    return image_index(source)


def image_index(name):
    """The index that lists a source's images (the real index for the baseline
    and for a control drawn from a real split)."""
    if name in GENERATED:
        return f"{OUT}/generated/{name}.parquet"
    if name in FOLDER_CONTROLS:
        return f"{OUT}/control/{name}/index.parquet"
    return real_index()


def generation_settings(wildcards):
    """Everything that changes pixels, and nothing else (no batch size, no device)."""
    source = wildcards.generated_source
    name = generator_of(source)
    return {
        "generator_name": name,
        "generator": config["generators"][name],
        "prompts": config["sources"][source].get("prompts", {}),
        "seed": config["seed"],
    }


def embedded_settings(wildcards):
    return {
        "generator": config["generators"][wildcards.generator],
        "real": config["real"],
        "seed": config["seed"],
    }


def mix_settings(wildcards):
    source = wildcards.source
    spec = config["sources"].get(source, {})
    return {
        "source": source,
        "origin": spec.get("origin", "real"),
        "real_split": spec.get("real_split"),
        "ratio": float(wildcards.ratio),
        "seed": config["seed"],
    }


def manifest_of(wildcards):
    return f"{OUT}/manifests/{wildcards.source}/ratio-{wildcards.ratio}.parquet"


def run_settings(wildcards):
    return {
        "model": config["models"][wildcards.model],
        "recipe": contam_config.training_recipe(config, wildcards.model),
        "num_classes": contam_config.num_classes(config),
        "seed": int(wildcards.seed),
    }


def ood_indexes(wildcards=None):
    return [
        f"{OUT}/ood/{name}/index.parquet"
        for name in sorted(config.get("evaluation", {}).get("ood_sets", {}))
    ]


def study_targets():
    """What `snakemake` builds by default: the whole study, or only the images."""
    if GENERATION_ONLY:
        return [
            f"{OUT}/generated/{s}.{ext}"
            for s in GENERATED
            for ext in ("parquet", "json")
        ]
    return all_metrics() + REPORT_FILES


def all_metrics():
    return [f"{OUT}/{run.path}/metrics.json" for run in contam_config.runs(config)]


ANALYSIS = config.get("analysis", {})
ANALYSIS_ON = ANALYSIS.get("enabled", True) and not GENERATION_ONLY


ANALYSIS_MODEL = ANALYSIS.get("classifier") or next(
    iter(config.get("models", {})), None
)


def feature_set_index(wildcards):
    """The images of a feature set: the real train split, or a contaminant pool."""
    return image_index(wildcards.feature_set)


def feature_extractor_weights(wildcards):
    """The classifier trained on real data only, when it is the feature extractor."""
    if ANALYSIS.get("feature_extractor", "classifier") != "classifier":
        return []
    seed = config["seeds"][0]
    return f"{OUT}/runs/{BASELINE}/ratio-0.0/{ANALYSIS_MODEL}/seed-{seed}/model.safetensors"


def feature_settings(wildcards):
    name = wildcards.feature_set
    extractor = ANALYSIS.get("feature_extractor", "classifier")
    split = (
        "train"
        if name == BASELINE
        else config["sources"].get(name, {}).get("real_split")
    )
    return {
        "feature_set": name,
        "split": split,
        "extractor": extractor,
        "model": (
            config["models"][ANALYSIS_MODEL] if extractor == "classifier" else None
        ),
        "num_classes": contam_config.num_classes(config),
        "inception_weights": ANALYSIS.get("inception_weights"),
        "max_per_class": ANALYSIS.get("max_per_class", 200),
        "crop_ratio": config.get("evaluation", {}).get("crop_ratio", 0.875),
        "seed": config["seed"],
    }


def analysis_outputs():
    return [f"{OUT}/analysis/{s}.json" for s in SOURCES] if ANALYSIS_ON else []


def reported_metrics():
    """Every run's metrics; with report.allow_missing_runs, only those that exist."""
    if config.get("report", {}).get("allow_missing_runs", False):
        return [path for path in all_metrics() if os.path.exists(path)]
    return all_metrics()


def missing_runs(wildcards):
    return sorted(set(all_metrics()) - set(reported_metrics()))


def report_inputs(wildcards):
    inputs = {
        "metrics": reported_metrics(),
        "real": real_index(),
        "real_quality": f"{OUT}/real/quality.json",
        "generated": [f"{OUT}/generated/{s}.parquet" for s in GENERATED],
        "generated_counts": [f"{OUT}/generated/{s}.json" for s in GENERATED],
        "analysis": analysis_outputs(),
    }
    return inputs


# ---- resources: standard names only; site settings live in the profile -----


def threads_of(rule_name):
    return contam_resources.resource_set(config, rule_name)["threads"]


def gpus_of(rule_name):
    return contam_resources.resource_set(config, rule_name)["gpu"]


def runtime_of(rule_name):
    def runtime(wildcards, attempt):
        return contam_resources.runtime_minutes(config, rule_name, attempt)

    return runtime


def mem_of(rule_name):
    def mem_mb(wildcards, attempt):
        return contam_resources.mem_mb(config, rule_name, attempt)

    return mem_mb
