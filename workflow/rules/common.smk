import os
import re
import sys
from argparse import Namespace
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
from contam import (
    captioning,
    config_checks,
    config_paths,
    generative,
    identity,
    layout,
    prepare,
    remedies,
)
from contam import resources as contam_resources

# Only the --config values (not config files) need their YAML types back.
update_config(
    config, contam_config.typed_overrides(dict(workflow.config_settings.config))
)
validate(config, "../schemas/config.schema.yaml")
try:
    config_checks.check_semantics(config)
except config_checks.ConfigError as error:
    raise WorkflowError(str(error))

# Offline unless a generator opts in to hub downloads. Jobs are new processes
# (locally and under SLURM's --export=ALL), so they start with this set, which
# is the only way the hub libraries honour it.
if not config_paths.hub_downloads_allowed(config):
    os.environ.update(HF_HUB_OFFLINE="1")


EXP = config["experiment"]
GENERATION_ONLY = contam_config.generation_only(config)
OUT = contam_config.experiment_dir(config)
LOGS = f"logs/{EXP}"
BENCH = f"benchmarks/{EXP}"
BASELINE = layout.BASELINE_SOURCE
SOURCES = sorted(config["sources"])
GENERATED = contam_config.sources_of(config, "generated")
CONTROLS = contam_config.sources_of(config, "control")
FOLDER_CONTROLS = [s for s in CONTROLS if "root" in config["sources"][s]]
EMBEDDED_GENERATORS = sorted(
    {
        config["sources"][s]["generator"]
        for s in GENERATED
        if "generator" in config["sources"][s]
        and config["generators"][config["sources"][s]["generator"]]["kind"]
        == "embedded"
    }
)
CAPTIONING = captioning.is_captioning(config)
ANALYSIS = config.get("analysis", {})
ANALYSIS_ON = not GENERATION_ONLY and not CAPTIONING and ANALYSIS["enabled"]
ANALYSIS_MODEL = ANALYSIS.get("classifier") or next(
    iter(config.get("models", {})), None
)
OOD_SETS = sorted(config.get("evaluation", {}).get("ood_sets", {}))
REPORT = layout.report_dir(OUT)
GENERATIVE = config.get("task") == "generative"
LOOP_REGIMES = list(config["generative"]["loop"]["regimes"]) if GENERATIVE else []
# Cached copies (prepare.enabled): one collection per index whose images train
# or evaluate read. Manifests keep the original paths; the jobs swap them.
PREPARE = config.get("prepare", {})
PREPARE_ON = PREPARE.get("enabled", False)
PREPARE_SETTINGS = prepare.Settings.from_config(PREPARE)
OOD_COLLECTIONS = {layout.ood_collection(name): name for name in OOD_SETS}
COLLECTIONS = [BASELINE, *GENERATED, *FOLDER_CONTROLS, *OOD_COLLECTIONS]
# Remedies (remedies.enabled): detect-and-filter and SSL on the study's mixes.
REMEDIES = config.get("remedies", {})
REMEDIES_ON = not GENERATION_ONLY and not GENERATIVE and REMEDIES.get("enabled", False)
SSL_ON = REMEDIES_ON and REMEDIES["ssl"]["enabled"]
REMEDIES_MODEL = REMEDIES.get("model") or next(iter(config.get("models", {})), None)
DETECTORS = list(REMEDIES["detectors"]) if REMEDIES_ON else []
SSL_METHOD = REMEDIES["ssl"]["method"] if SSL_ON else None
FILTERS = (
    sorted(
        {
            name
            for s in SOURCES
            for name in remedies.filters(REMEDIES, config["sources"][s]["origin"])
        }
    )
    if REMEDIES_ON
    else []
)


def log_of(rule_name):
    return layout.job_file(LOGS, rule_name, "log")


def benchmark_of(rule_name):
    return layout.job_file(BENCH, rule_name, "tsv")


def _alternatives(names):
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


wildcard_constraints:
    source=_alternatives([BASELINE, *SOURCES]),
    generated_source=_alternatives(GENERATED),
    control_source=_alternatives(FOLDER_CONTROLS),
    generator=_alternatives(EMBEDDED_GENERATORS),
    model=_alternatives(config.get("models", {})),
    feature_set=_alternatives([layout.REFERENCE_FEATURES, *SOURCES]),
    comparison=_alternatives([layout.FLOOR, *SOURCES]),
    ood_set=_alternatives(OOD_SETS),
    ratio=r"[01]\.\d+",
    track=_alternatives([BASELINE, *SOURCES, *LOOP_REGIMES]),
    level=r"ratio-[01]\.\d+|gen-\d+",
    regime=_alternatives(LOOP_REGIMES),
    generation=r"\d+",
    seed=r"\d+",
    shard=r"\d+",
    collection=_alternatives(COLLECTIONS),
    detector=_alternatives(DETECTORS),
    filter=_alternatives(FILTERS),
    method=_alternatives([SSL_METHOD] if SSL_METHOD else []),
    captioner=_alternatives(
        [config["captioning"]["captioner"]["name"]]
        if captioning.is_captioning(config)
        else []
    ),


onstart:
    # Data paths are checked only when jobs will run: a dry run plans the
    # paper-scale DAG on any machine, without the data.
    missing = config_paths.missing_paths(config)
    if missing:
        raise WorkflowError("missing input paths:\n  - " + "\n  - ".join(missing))


# ---- input functions -------------------------------------------------------


def real_index(wildcards=None):
    return layout.real_index(OUT)


def prompts_of(wildcards):
    # The captioning study samples the glyphs of its training scenes instead.
    if CAPTIONING:
        return layout.glyph_prompts(OUT, wildcards.generated_source)
    return layout.prompts(OUT, wildcards.generated_source)


def generator_of(source):
    return config["sources"][source]["generator"]


def generator_model(wildcards):
    """The embedded generator's trained weights; a diffusers model needs no job."""
    name = generator_of(wildcards.generated_source)
    if config["generators"][name]["kind"] == "embedded":
        return layout.generator_dir(OUT, name)
    return []


def shard_count(source):
    return config["sources"][source]["shards"]


def shard_indexes(wildcards):
    source = wildcards.generated_source
    return [layout.shard_index(OUT, source, k) for k in range(shard_count(source))]


def shard_counts(wildcards):
    source = wildcards.generated_source
    return [layout.shard_counts(OUT, source, k) for k in range(shard_count(source))]


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
            f"ratio 0 is shared by all sources: use {layout.manifest(OUT, BASELINE, layout.BASELINE_RATIO)}"
        )
    return image_index(source)


def image_index(name):
    """The index that lists a source's images (the real index for the baseline
    and for a control drawn from a real split)."""
    if name in GENERATED:
        return layout.generated_index(OUT, name)
    if name in FOLDER_CONTROLS:
        return layout.control_index(OUT, name)
    return real_index()


def collection_of(source):
    """The collection that holds a source's images: its own, or the real index's."""
    return source if source in GENERATED or source in FOLDER_CONTROLS else BASELINE


def collection_index(wildcards):
    """The index whose images a prepare_cached_copies job copies."""
    name = wildcards.collection
    if name in OOD_COLLECTIONS:
        return layout.ood_index(OUT, OOD_COLLECTIONS[name])
    return image_index(name)


def cached_images(wildcards):
    return layout.cached_images(OUT, wildcards.collection, PREPARE_SETTINGS.id)


def cached_records_of(collections):
    """With prepare.enabled, the records that map these collections' images to their copies."""
    if not PREPARE_ON:
        return []
    return [layout.cached_records(OUT, name) for name in collections]


def train_cached_records(wildcards):
    return cached_records_of(sorted({BASELINE, collection_of(wildcards.source)}))


def evaluate_cached_records(wildcards=None):
    return cached_records_of([BASELINE, *OOD_COLLECTIONS])


def manifest_of(wildcards):
    return layout.manifest(OUT, wildcards.source, wildcards.ratio)


def manifest_indexes(wildcards):
    """The indexes a manifest's rows come from: a run's fingerprint covers them."""
    pool = contaminant_index(wildcards)
    return sorted({real_index(), *([pool] if pool else [])})


def generation_settings(wildcards):
    return identity.generation_settings(config, wildcards.generated_source)


def embedded_settings(wildcards):
    return identity.embedded_settings(config, wildcards.generator)


def mix_settings(wildcards):
    return identity.mix_settings(config, wildcards.source, wildcards.ratio)


def run_settings(wildcards):
    return identity.run_settings(config, wildcards.model, wildcards.seed)


def ood_indexes(wildcards=None):
    return [layout.ood_index(OUT, name) for name in OOD_SETS]


def ood_root(wildcards):
    return config["evaluation"]["ood_sets"][wildcards.ood_set]["root"]


def control_root(wildcards):
    return config["sources"][wildcards.control_source]["root"]


def control_file_lists(wildcards):
    return config["sources"][wildcards.control_source].get("file_lists", [])


def prompt_settings(wildcards):
    return config["sources"][wildcards.generated_source].get("prompts", {})


def prompt_seed(wildcards):
    return config["generators"][generator_of(wildcards.generated_source)]["seed"]


def study_targets():
    """What `snakemake` builds by default: the whole study, or only the images."""
    if GENERATION_ONLY:
        return [
            path
            for s in GENERATED
            for path in (
                layout.generated_index(OUT, s),
                layout.generated_counts(OUT, s),
            )
        ]
    if GENERATIVE:
        return generative_metrics() + generative_report_files()
    if CAPTIONING:
        return captioning_metrics() + captioning_report_files()
    return all_metrics() + report_files()


def report_files():
    return [
        f"{REPORT}/index.html",
        f"{REPORT}/summary.csv",
        f"{REPORT}/figures/accuracy.png",
    ]


def all_metrics():
    if CAPTIONING:
        return []
    return [run.metrics(OUT) for run in contam_config.runs(config)]


# ---- distribution analysis ---------------------------------------------------


def feature_set_index(wildcards):
    """The images of a feature set: the real reference split, or a contaminant pool."""
    if wildcards.feature_set == layout.REFERENCE_FEATURES:
        return real_index()
    return image_index(wildcards.feature_set)


def feature_extractor_weights(wildcards):
    """The classifier trained on real data only, when it is the feature extractor."""
    if ANALYSIS["feature_extractor"] != "classifier":
        return []
    seed = config["seeds"][0]
    return layout.weights(OUT, BASELINE, layout.BASELINE_RATIO, ANALYSIS_MODEL, seed)


def feature_settings(wildcards):
    name = wildcards.feature_set
    if name == layout.REFERENCE_FEATURES:
        split = ANALYSIS["reference_split"]
    else:
        split = config["sources"][name].get("real_split")
    classifier = ANALYSIS["feature_extractor"] == "classifier"
    return {
        "feature_set": name,
        "split": split,
        # The reference is halved (one half for the floor), so it keeps twice as many.
        "max_per_class": ANALYSIS["max_per_class"]
        * (2 if name == layout.REFERENCE_FEATURES else 1),
        "extractor": ANALYSIS["feature_extractor"],
        "model": config["models"][ANALYSIS_MODEL] if classifier else None,
        "num_classes": contam_config.num_classes(config),
        "inception_weights": ANALYSIS.get("inception_weights"),
        "crop_ratio": config["evaluation"]["crop_ratio"],
        "seed": config["seed"],
    }


def comparison_features(wildcards):
    """The features compared with the reference: a source's, or none for the floor."""
    if wildcards.comparison == layout.FLOOR:
        return []
    return layout.features(OUT, wildcards.comparison)


def comparison_settings(wildcards):
    keys = ("feature_extractor", "max_per_class", "nearest_k", "kid_subsets")
    keys += ("kid_subset_size", "bootstrap", "reference_split")
    return {key: ANALYSIS[key] for key in keys} | {"seed": config["seed"]}


def analysis_outputs():
    if not ANALYSIS_ON:
        return []
    return [layout.comparison(OUT, name) for name in [layout.FLOOR, *SOURCES]]


# ---- report -------------------------------------------------------------------


def reported_metrics():
    """Every run's metrics; with report.allow_missing_runs, only those that exist."""
    if config["report"]["allow_missing_runs"]:
        return [path for path in all_metrics() if os.path.exists(path)]
    return all_metrics()


def missing_runs(wildcards):
    return sorted(set(all_metrics()) - set(reported_metrics()))


def reported_runs():
    reported = set(reported_metrics())
    return [run for run in contam_config.runs(config) if run.metrics(OUT) in reported]


def bench(rule_name, **values):
    """A job's benchmark file, with its wildcards filled in."""
    return layout.job_file(BENCH, rule_name, "tsv", **values)


def image_benchmark_files():
    """The jobs that make the generated images: the embedded fits and every shard."""
    files = [bench("fit_generator", generator=g) for g in EMBEDDED_GENERATORS]
    for source in GENERATED:
        files += [
            bench("generate_shard", generated_source=source, shard=k)
            for k in range(shard_count(source))
        ]
    return files


def benchmark_files():
    """The benchmark files of the jobs the report covers (its compute table)."""

    files = [bench("index_real")]
    files += [bench("index_control", control_source=s) for s in FOLDER_CONTROLS]
    files += [bench("index_ood", ood_set=name) for name in OOD_SETS]
    files += image_benchmark_files()
    for run in reported_runs():
        values = dict(
            source=run.source, ratio=run.ratio, model=run.model, seed=run.seed
        )
        files += [bench("train", **values), bench("evaluate", **values)]
    if ANALYSIS_ON:
        sets = [layout.REFERENCE_FEATURES, *SOURCES]
        files += [bench("extract_features", feature_set=s) for s in sets]
        names = [layout.FLOOR, *SOURCES]
        files += [bench("compare_distributions", comparison=n) for n in names]
    return files


def report_inputs(wildcards):
    return {
        "metrics": reported_metrics(),
        "remedies": [layout.remedies_summary(OUT)] if REMEDIES_ON else [],
        "real": real_index(),
        "real_quality": layout.real_quality(OUT),
        "generated": [layout.generated_index(OUT, s) for s in GENERATED],
        "generated_counts": [layout.generated_counts(OUT, s) for s in GENERATED],
        "analysis": analysis_outputs(),
        "benchmarks": benchmark_files(),
    }


def report_origins():
    return {name: config["sources"][name]["origin"] for name in SOURCES}


# ---- the generative study -------------------------------------------------------


def unit_of(wildcards):
    """The generative model a job is about, checked against the study's tracks."""
    unit = generative.Unit(wildcards.track, wildcards.level, int(wildcards.seed))
    if unit.study == generative.LOOP:
        if unit.track not in LOOP_REGIMES:
            raise WorkflowError(
                f"{unit.name}: generations belong to a loop regime ({', '.join(LOOP_REGIMES)})"
            )
        if unit.generation == 0:
            real = generative.real_unit(unit.seed)
            raise WorkflowError(
                f"{unit.name}: generation 0 of every regime is {real.metrics(OUT)}"
            )
    elif unit.track in LOOP_REGIMES:
        raise WorkflowError(f"{unit.name}: a loop regime has generations, not ratios")
    return unit


def generative_manifest(wildcards):
    unit = unit_of(wildcards)
    if unit.study == generative.LOOP:
        return layout.loop_manifest(OUT, unit.track, unit.generation, unit.seed)
    return layout.manifest(OUT, unit.track, layout.ratio_tag(unit.ratio))


def loop_samples(regime, generation, seed):
    """The samples a loop manifest draws on: earlier generations' (see contam.loop)."""
    return [
        generative.loop_unit(regime, g, seed).samples(OUT)
        for g in generative.loop_sources(regime, generation)
    ]


def generative_manifest_indexes(wildcards):
    """The indexes behind a unit's manifest rows: a killed fit's fingerprint covers them."""
    unit = unit_of(wildcards)
    if unit.study == generative.LOOP:
        return [real_index(), *loop_samples(unit.track, unit.generation, unit.seed)]
    ratio = layout.ratio_tag(unit.ratio)
    pool = contaminant_index(Namespace(source=unit.track, ratio=ratio))
    return sorted({real_index(), *([pool] if pool else [])})


def generative_init(wildcards):
    previous = generative.previous_unit(config, unit_of(wildcards))
    return [previous.model(OUT)] if previous else []


def generative_unit_settings(wildcards):
    return generative.unit_settings(config, unit_of(wildcards))


def generative_unit_block(wildcards):
    return generative.unit_description(unit_of(wildcards), report_origins())


def generative_score_settings(wildcards):
    return generative.score_settings(config)


def loop_manifest_inputs(wildcards):
    generation, seed = int(wildcards.generation), int(wildcards.seed)
    if generation < 1:
        raise WorkflowError(
            "generation 0 is trained on real data; it has no loop manifest"
        )
    return {
        "real": real_index(),
        "samples": loop_samples(wildcards.regime, generation, seed),
    }


def loop_settings(wildcards):
    return generative.loop_settings(config, wildcards.regime, int(wildcards.generation))


def generative_metrics():
    return [unit.metrics(OUT) for unit in generative.units(config)]


def generative_report_files():
    return [f"{REPORT}/generative.html", f"{REPORT}/generative_summary.csv"]


def generative_sample_indexes(wildcards=None):
    return {unit.name: unit.samples(OUT) for unit in generative.units(config)}


def generative_benchmark_files():
    files = [bench("index_real"), bench("extract_features", feature_set="reference")]
    files += image_benchmark_files()
    seed = config["seeds"][0]
    judge = dict(source=BASELINE, ratio=layout.BASELINE_RATIO, seed=seed)
    files.append(bench("train", model=ANALYSIS_MODEL, **judge))
    for unit in generative.units(config):
        values = dict(track=unit.track, level=unit.level, seed=unit.seed)
        files.append(bench("fit_and_score_generative_model", **values))
    return files


def generative_report_inputs(wildcards):
    return {
        "metrics": generative_metrics(),
        "floor": layout.generative_floor(OUT),
        "samples": list(generative_sample_indexes().values()),
        "real": real_index(),
        "benchmarks": generative_benchmark_files(),
    }


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


# ---- the ledger of measured jobs ---------------------------------------------


def gather_into_ledger():
    """Add this run's benchmark files to the ledger that contam.plan is fitted on."""
    from snakemake.logging import logger

    from contam import plan as contam_plan

    ledger_dir = config["plan"]["ledger_dir"]
    try:
        added = contam_plan.gather(config, BENCH, ledger_dir, log_root=LOGS)
    except Exception as error:  # the run succeeded: a ledger problem only warns
        logger.warning(f"ledger {ledger_dir} not updated: {error}")
        return
    if added:
        logger.info(f"ledger {ledger_dir}: {sum(added.values())} new measured job(s)")


# ---- remedies (remedies.enabled) ------------------------------------------------


def remedies_ratios():
    return [layout.ratio_tag(r) for r in REMEDIES["ratios"]]


def ssl_ratios():
    return [layout.ratio_tag(r) for r in REMEDIES["ssl"]["ratios"]]


def arms_at(ratio):
    return contam_config.arms_at(config, ratio)


def filtered_runs():
    """(source, ratio, filter, seed) of every run on a filtered twin."""
    return [
        (source, ratio, name, int(seed))
        for ratio in remedies_ratios()
        for source in SOURCES
        for name in remedies.filters(REMEDIES, config["sources"][source]["origin"])
        for seed in config["seeds"]
    ]


def filtered_metrics():
    return [
        f"{layout.filtered_run_dir(OUT, s, r, f, REMEDIES_MODEL, seed)}/metrics.json"
        for s, r, f, seed in filtered_runs()
    ]


def filtered_summaries():
    runs = {(s, r, f) for s, r, f, _ in filtered_runs()}
    return [layout.filtered_summary(OUT, s, r, f) for s, r, f in sorted(runs)]


def contaminated_manifests():
    """Every contaminated manifest of the study: the detector data must avoid their generated rows."""
    return sorted(
        {
            layout.manifest(OUT, run.source, run.ratio)
            for run in contam_config.runs(config)
            if run.source != BASELINE
        }
    )


def filtered_manifests_sources():
    """The unfiltered manifests that get filtered twins; the detectors score their images."""
    return [layout.manifest(OUT, s, r) for r in remedies_ratios() for s in SOURCES]


def detector_image_indexes():
    return [layout.detector_images(OUT, s) for s in GENERATED]


def detector_extractor(wildcards):
    """The probe detector reads the ratio-0 classifier's features (first seed)."""
    if wildcards.detector != "probe":
        return []
    seed = config["seeds"][0]
    return layout.weights(OUT, BASELINE, layout.BASELINE_RATIO, REMEDIES_MODEL, seed)


def detector_settings(wildcards):
    """What changes a detector's fit, thresholds and metrics (speed-only settings are read in the job)."""
    return {
        "kind": wildcards.detector,
        "spectral_size": REMEDIES["spectral"]["size"],
        "cnn": REMEDIES["cnn"],
        "probe": REMEDIES["probe"],
        "fpr_budgets": REMEDIES["fpr_budgets"],
        "bootstrap": REMEDIES["bootstrap"],
        "extractor": (
            config["models"][REMEDIES_MODEL] if wildcards.detector == "probe" else None
        ),
        "num_classes": contam_config.num_classes(config),
        "seed": config["seed"],
    }


def detector_prompt_settings(wildcards):
    prompts = dict(config["sources"][wildcards.generated_source].get("prompts", {}))
    prompts["images_per_class"] = REMEDIES["detector_data"]["generated_per_class"]
    return prompts


def filter_inputs(wildcards):
    """A detector's filter reads its scores and thresholds; the oracle reads the manifest alone."""
    if wildcards.filter == remedies.ORACLE:
        return {}
    detector = remedies.filter_detector(wildcards.filter)
    return {
        "scores": layout.detector_scores(OUT, detector),
        "detector": layout.detector_metrics(OUT, detector),
    }


def filter_settings(wildcards):
    if wildcards.filter == remedies.ORACLE:
        return {"filter": remedies.ORACLE}
    return {
        "filter": wildcards.filter,
        "detector": remedies.filter_detector(wildcards.filter),
        "fpr_budget": REMEDIES["filter"]["fpr_budget"],
    }


def filtered_manifest_of(wildcards):
    return layout.filtered_manifest(
        OUT, wildcards.source, wildcards.ratio, wildcards.filter
    )


def ssl_runs():
    """(source, ratio, seed) of every SSL pretraining: the real baseline at 0, every arm above."""
    return [
        (source, ratio, int(seed))
        for ratio in ssl_ratios()
        for source in arms_at(ratio)
        for seed in config["seeds"]
    ]


def ssl_metrics():
    if not SSL_ON:
        return []
    return [
        f"{layout.ssl_dir(OUT, s, r, SSL_METHOD, seed)}/metrics.json"
        for s, r, seed in ssl_runs()
    ]


def ssl_settings(wildcards):
    """What changes a pretraining (the probe's C is a param of its own)."""
    keys = [k for k in REMEDIES["ssl"] if k not in ("enabled", "ratios", "probe_C")]
    return {k: REMEDIES["ssl"][k] for k in keys} | {"seed": int(wildcards.seed)}


def remedies_supervised_metrics():
    """The study's runs the remedies compare with: clean, unfiltered, and SSL's supervised twins."""
    ratios = sorted(
        {layout.BASELINE_RATIO, *remedies_ratios(), *(ssl_ratios() if SSL_ON else [])}
    )
    return [
        layout.metrics(OUT, s, r, REMEDIES_MODEL, seed)
        for r in ratios
        for s in arms_at(r)
        for seed in config["seeds"]
    ]


def remedies_summary_inputs(wildcards):
    return {
        "supervised": remedies_supervised_metrics(),
        "filtered": filtered_metrics(),
        "summaries": filtered_summaries(),
        "detectors": [layout.detector_metrics(OUT, d) for d in DETECTORS],
        "audit": layout.format_audit(OUT),
        "ssl": ssl_metrics(),
    }


# ---- the captioning study (task: captioning) -------------------------------------

CAPTIONER = config["captioning"]["captioner"]["name"] if CAPTIONING else None
COCO_CAPTIONS = CAPTIONING and config["real"]["kind"] == "coco"
IMPORTED = [s for s in GENERATED if "index" in config["sources"][s]]


def captioned_index(wildcards=None):
    return layout.captioned_index(OUT)


def imported_index(wildcards):
    """Another experiment's generated index (SD-COCO): an input once it exists, so
    a remade one reruns the pool; absent, the DAG still plans (a dry run anywhere)
    and onstart stops a real run naming the key."""
    path = config["sources"][wildcards.generated_source]["index"]
    return path if os.path.exists(path) else []


def twin_pool_of(wildcards):
    """The twins a manifest draws replacement images from (none at ratio 0)."""
    source = wildcards.source
    if source == BASELINE:
        if float(wildcards.ratio) != 0:
            raise WorkflowError(
                f"source {BASELINE!r} is the real-only baseline; it exists only at ratio 0.0"
            )
        return []
    if float(wildcards.ratio) == 0:
        raise WorkflowError(
            f"ratio 0 is shared by all sources: use {layout.caption_manifest(OUT, BASELINE, layout.BASELINE_RATIO)}"
        )
    return layout.twin_pool(OUT, source)


def caption_manifest_of(wildcards):
    return layout.caption_manifest(OUT, wildcards.source, wildcards.ratio)


def caption_mix_settings(wildcards):
    source = wildcards.source
    origin = "real" if source == BASELINE else config["sources"][source]["origin"]
    return {"ratio": float(wildcards.ratio), "origin": origin, "seed": config["seed"]}


def captioner_run_settings(wildcards):
    return captioning.run_settings(config, wildcards.seed)


def caption_evaluation_settings(wildcards=None):
    return captioning.evaluation_settings(config)


def control_twin_pools():
    return [layout.twin_pool(OUT, s) for s in CONTROLS]


def scene_counts():
    return config["captioning"]["scenes"]


def captioning_runs():
    return captioning.runs(config) if CAPTIONING else []


def captioning_metrics():
    return [run.metrics(OUT, CAPTIONER) for run in captioning_runs()] + meteor_outputs()


def caption_predictions_all(wildcards=None):
    return [run.predictions(OUT, CAPTIONER) for run in captioning_runs()]


def meteor_outputs():
    return [layout.meteor_scores(OUT)] if CAPTIONING else []


def captioning_report_files():
    return [
        f"{REPORT}/captioning.html",
        f"{REPORT}/captioning_summary.csv",
    ]


def captioning_benchmark_files():
    files = [bench("index_coco_captions" if COCO_CAPTIONS else "build_scenes")]
    files += image_benchmark_files() if not COCO_CAPTIONS else []
    for run in captioning_runs():
        values = dict(
            source=run.source, ratio=run.ratio, captioner=CAPTIONER, seed=run.seed
        )
        files += [
            bench("train_captioner", **values),
            bench("evaluate_captioner", **values),
        ]
    return files


def captioning_report_inputs(wildcards):
    return {
        "metrics": [run.metrics(OUT, CAPTIONER) for run in captioning_runs()],
        "predictions": caption_predictions_all(),
        "meteor": meteor_outputs(),
        "captioned": captioned_index(),
        "pools": [layout.twin_pool(OUT, s) for s in SOURCES],
        "benchmarks": captioning_benchmark_files(),
    }
