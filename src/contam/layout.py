"""Where every file of an experiment lives: the one owner of each path pattern.

Rules build their input and output paths here, with Snakemake wildcards in
braces (``run_dir(out, "{source}", "{ratio}", "{model}", "{seed}")``), and the
package asks for the same paths with values, so a pattern is written once.
"""

from __future__ import annotations

# The shared real-only baseline: ratio 0, trained once, starts every arm's curve.
BASELINE_SOURCE = "real"
# The distribution analysis's floor: two halves of the real reference split.
# Source names may not contain "-", so this never collides with a source.
FLOOR = "real-vs-real"
# The feature set of the real reference split (never seen by a model).
REFERENCE_FEATURES = "reference"


def ratio_tag(ratio: float | str) -> str:
    """Canonical text of a ratio in paths: 0 -> '0.0', 0.4 -> '0.4', 1 -> '1.0'."""
    text = f"{round(float(ratio), 6):.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


BASELINE_RATIO = ratio_tag(0)


def real_index(out: str) -> str:
    return f"{out}/real/index.parquet"


def real_quality(out: str) -> str:
    return f"{out}/real/quality.json"


def real_images(out: str) -> str:
    return f"{out}/real/images"


def control_index(out: str, source: str) -> str:
    return f"{out}/control/{source}/index.parquet"


def control_quality(out: str, source: str) -> str:
    return f"{out}/control/{source}/quality.json"


def ood_index(out: str, name: str) -> str:
    return f"{out}/ood/{name}/index.parquet"


def ood_quality(out: str, name: str) -> str:
    return f"{out}/ood/{name}/quality.json"


def prompts(out: str, source: str) -> str:
    return f"{out}/prompts/{source}.parquet"


def generator_dir(out: str, generator: str) -> str:
    return f"{out}/generators/{generator}"


def generated_root(out: str, source: str) -> str:
    """The folder of a source's shard indexes and its ``images-<settings id>/`` folders."""
    return f"{out}/generated/{source}"


def fit_checkpoint(model_dir: str) -> str:
    """Beside a fitted model's folder, not in it: Snakemake clears a failed job's outputs."""
    return f"{model_dir}.checkpoint.pt"


def shard_index(out: str, source: str, shard: int | str) -> str:
    return f"{generated_root(out, source)}/shard-{shard}.parquet"


def shard_counts(out: str, source: str, shard: int | str) -> str:
    return f"{generated_root(out, source)}/shard-{shard}.json"


def generated_index(out: str, source: str) -> str:
    return f"{out}/generated/{source}.parquet"


def generated_counts(out: str, source: str) -> str:
    return f"{out}/generated/{source}.json"


# ---- cached copies (prepare.enabled) ------------------------------------------
#
# A collection is the images of one index: "real", a generated or folder control
# source, or an OOD set as "ood-<name>" (source names have no "-", so the two
# never collide).
def ood_collection(name: str) -> str:
    return f"ood-{name}"


def cached_root(out: str, collection: str) -> str:
    return f"{out}/cached/{collection}"


def cached_records(out: str, collection: str) -> str:
    """One row per image: its original and cached path, sizes, format, quality, bytes."""
    return f"{cached_root(out, collection)}/records.parquet"


def cached_counts(out: str, collection: str) -> str:
    return f"{cached_root(out, collection)}/counts.json"


def cached_images(out: str, collection: str, settings_id: str) -> str:
    return f"{cached_root(out, collection)}/images-{settings_id}"


def manifest(out: str, source: str, ratio: str) -> str:
    return f"{out}/manifests/{source}/ratio-{ratio}.parquet"


def run_dir(out: str, source: str, ratio: str, model: str, seed: int | str) -> str:
    return f"{out}/runs/{source}/ratio-{ratio}/{model}/seed-{seed}"


def weights(out: str, source: str, ratio: str, model: str, seed: int | str) -> str:
    return f"{run_dir(out, source, ratio, model, seed)}/model.safetensors"


def train_log(out: str, source: str, ratio: str, model: str, seed: int | str) -> str:
    return f"{run_dir(out, source, ratio, model, seed)}/train_log.csv"


def metrics(out: str, source: str, ratio: str, model: str, seed: int | str) -> str:
    return f"{run_dir(out, source, ratio, model, seed)}/metrics.json"


def features(out: str, feature_set: str) -> str:
    return f"{out}/analysis/features/{feature_set}.npz"


def comparison(out: str, name: str) -> str:
    return f"{out}/analysis/{name}.json"


def report_dir(out: str) -> str:
    return f"{out}/report"


# ---- remedies (remedies.enabled) ------------------------------------------------
#
# A filter is a detector at a false-positive budget ("cnn-fpr0.05") or "oracle";
# a filtered run is the study's run of the same source, ratio, model and seed,
# trained on the filtered twin of its manifest.


# The filter that drops exactly the generated rows: filtering's ceiling.
ORACLE_FILTER = "oracle"


def remedies_dir(out: str) -> str:
    return f"{out}/remedies"


def detector_prompts(out: str, source: str) -> str:
    return f"{remedies_dir(out)}/detector-data/prompts/{source}.parquet"


def detector_images(out: str, source: str) -> str:
    """The index of a source's detector images; the images sit with the source's own."""
    return f"{remedies_dir(out)}/detector-data/generated/{source}.parquet"


def detector_image_counts(out: str, source: str) -> str:
    return f"{remedies_dir(out)}/detector-data/generated/{source}.json"


def detector_data(out: str) -> str:
    """Real and generated images, labelled, with their detector split."""
    return f"{remedies_dir(out)}/detector-data/labelled.parquet"


def format_audit(out: str) -> str:
    return f"{remedies_dir(out)}/audit/format.json"


def detector_dir(out: str, detector: str) -> str:
    return f"{remedies_dir(out)}/detectors/{detector}"


def detector_model(out: str, detector: str) -> str:
    return f"{detector_dir(out, detector)}/detector.pt"


def detector_metrics(out: str, detector: str) -> str:
    """Thresholds chosen on validation, and AUROC, AP and TPR on test, with intervals."""
    return f"{detector_dir(out, detector)}/metrics.json"


def detector_scores(out: str, detector: str) -> str:
    """The score of every image a filtered manifest can hold."""
    return f"{detector_dir(out, detector)}/scores.parquet"


def filtered_manifest(out: str, source: str, ratio: str, filter: str) -> str:
    return f"{remedies_dir(out)}/manifests/{source}/ratio-{ratio}/{filter}.parquet"


def filtered_summary(out: str, source: str, ratio: str, filter: str) -> str:
    """What a filter dropped: generated rows caught, real rows lost, the threshold."""
    return f"{remedies_dir(out)}/manifests/{source}/ratio-{ratio}/{filter}.json"


def filtered_run_dir(out: str, source: str, ratio: str, filter: str, model: str, seed: int | str) -> str:
    return f"{remedies_dir(out)}/runs/{source}/ratio-{ratio}/{filter}/{model}/seed-{seed}"


def ssl_dir(out: str, source: str, ratio: str, method: str, seed: int | str) -> str:
    return f"{remedies_dir(out)}/ssl/{source}/ratio-{ratio}/{method}/seed-{seed}"


def remedies_summary(out: str) -> str:
    return f"{remedies_dir(out)}/summary.json"


# ---- the generative study (task: generative) ----------------------------------
#
# A unit is one generative model: trained on a contaminated mix (track = a source,
# or the real baseline; level = "ratio-0.4") or in the self-consuming loop (track
# = a regime; level = "gen-2"). Generation 0 of every regime is the real baseline
# unit, real/ratio-0.0, so it is trained once.


def ratio_level(ratio: float | str) -> str:
    return f"ratio-{ratio_tag(ratio)}"


def generation_level(generation: int | str) -> str:
    return f"gen-{generation}"


def generative_unit(out: str, track: str, level: str, seed: int | str) -> str:
    return f"{out}/generative/{track}/{level}/seed-{seed}"


def generative_model(out: str, track: str, level: str, seed: int | str) -> str:
    return f"{generative_unit(out, track, level, seed)}/model"


def generative_samples(out: str, track: str, level: str, seed: int | str) -> str:
    """The samples' index; the images sit beside it in ``samples-<settings id>/``."""
    return f"{generative_unit(out, track, level, seed)}/samples.parquet"


def generative_sample_counts(out: str, track: str, level: str, seed: int | str) -> str:
    """What the unit's job did: images kept and dropped, and its fit's summary."""
    return f"{generative_unit(out, track, level, seed)}/samples.json"


def generative_metrics(out: str, track: str, level: str, seed: int | str) -> str:
    return f"{generative_unit(out, track, level, seed)}/metrics.json"


def loop_manifest(out: str, regime: str, generation: int | str, seed: int | str) -> str:
    return f"{generative_unit(out, regime, generation_level(generation), seed)}/manifest.parquet"


def generative_floor(out: str) -> str:
    """Half B of the reference split scored like a unit's samples: every metric's floor."""
    return f"{out}/generative/{FLOOR}.json"


# ---- the captioning study (task: captioning) -----------------------------------
#
# The captioned images (digit scenes, or COCO with its Karpathy split), each
# arm's pool of twins (a twin has the image id and captions of the real image it
# replaces), the mixes, and one run per (source, ratio, seed) of the captioner.


def captioning_dir(out: str) -> str:
    return f"{out}/captioning"


def captioned_index(out: str) -> str:
    """Every real captioned image: image_id, split, path, captions (and a scene's slots)."""
    return f"{captioning_dir(out)}/captioned.parquet"


def captioned_quality(out: str) -> str:
    """What building the captioned index found: images indexed, skipped and why."""
    return f"{captioning_dir(out)}/captioned.json"


def scene_images(out: str, name: str) -> str:
    """The folder of one collection of rendered scenes ('real', or an arm's name)."""
    return f"{captioning_dir(out)}/scenes/{name}"


def glyph_prompts(out: str, source: str) -> str:
    """A generated arm's glyphs to sample: two per training scene."""
    return f"{captioning_dir(out)}/glyph_prompts/{source}.parquet"


def twin_pool(out: str, source: str) -> str:
    """An arm's twins of the training images: image_id, path."""
    return f"{captioning_dir(out)}/pools/{source}.parquet"


def caption_manifest(out: str, source: str, ratio: str) -> str:
    return f"{captioning_dir(out)}/manifests/{source}/ratio-{ratio}.parquet"


def caption_run_dir(out: str, source: str, ratio: str, captioner: str, seed: int | str) -> str:
    return f"{captioning_dir(out)}/runs/{source}/ratio-{ratio}/{captioner}/seed-{seed}"


def caption_weights(out: str, source: str, ratio: str, captioner: str, seed: int | str) -> str:
    return f"{caption_run_dir(out, source, ratio, captioner, seed)}/model.safetensors"


def caption_predictions(out: str, source: str, ratio: str, captioner: str, seed: int | str) -> str:
    """The run's test captions in COCO results format ([{image_id, caption}])."""
    return f"{caption_run_dir(out, source, ratio, captioner, seed)}/predictions.json"


def caption_metrics(out: str, source: str, ratio: str, captioner: str, seed: int | str) -> str:
    return f"{caption_run_dir(out, source, ratio, captioner, seed)}/metrics.json"


def meteor_scores(out: str) -> str:
    """METEOR of every run, scored by one job (its Java start-up is ~17 s)."""
    return f"{captioning_dir(out)}/meteor.json"


# ---- per-job logs and benchmarks --------------------------------------------
#
# logs/{experiment}/{rule}/{job name}.log and benchmarks/{experiment}/{rule}/{job
# name}.tsv. Rules use the names with their wildcards; the report asks for the
# benchmark files of the jobs it reports, with values.
JOB_NAMES = {
    "index_real": "",
    "index_control": "{control_source}",
    "index_ood": "{ood_set}",
    "build_prompts": "{generated_source}",
    "fit_generator": "{generator}",
    "generate_shard": "{generated_source}/shard-{shard}",
    "gather_generated": "{generated_source}",
    "prepare_cached_copies": "{collection}",
    "mix": "{source}/ratio-{ratio}",
    "train": "{source}/ratio-{ratio}/{model}/seed-{seed}",
    "evaluate": "{source}/ratio-{ratio}/{model}/seed-{seed}",
    "extract_features": "{feature_set}",
    "compare_distributions": "{comparison}",
    "build_loop_manifest": "{regime}/gen-{generation}/seed-{seed}",
    "fit_and_score_generative_model": "{track}/{level}/seed-{seed}",
    "score_reference_floor": "",
    "report_generative": "",
    "build_detector_prompts": "{generated_source}",
    "generate_detector_images": "{generated_source}",
    "build_detector_data": "",
    "audit_format_parity": "",
    "fit_detector": "{detector}",
    "filter_manifest": "{source}/ratio-{ratio}/{filter}",
    "train_filtered": "{source}/ratio-{ratio}/{filter}/{model}/seed-{seed}",
    "evaluate_filtered": "{source}/ratio-{ratio}/{filter}/{model}/seed-{seed}",
    "pretrain_and_probe_ssl": "{source}/ratio-{ratio}/{method}/seed-{seed}",
    "summarise_remedies": "",
    "build_scenes": "",
    "index_coco_captions": "",
    "build_glyph_prompts": "{generated_source}",
    "compose_generated_scenes": "{generated_source}",
    "import_generated_pool": "{generated_source}",
    "mix_captions": "{source}/ratio-{ratio}",
    "train_captioner": "{source}/ratio-{ratio}/{captioner}/seed-{seed}",
    "evaluate_captioner": "{source}/ratio-{ratio}/{captioner}/seed-{seed}",
    "score_meteor": "",
    "report_captioning": "",
    "report": "",
    "plan_costs": "",
}


def job_file(root: str, rule: str, extension: str, **values) -> str:
    """A job's log or benchmark path: with ``values`` filled in, else with its wildcards."""
    name = JOB_NAMES[rule].format(**values) if values else JOB_NAMES[rule]
    return f"{root}/{rule}/{name}.{extension}" if name else f"{root}/{rule}.{extension}"


def rule_of_job_file(root: str, path: str) -> str:
    """The rule that wrote a log or benchmark file under ``root``."""
    import os
    from pathlib import Path

    file, base = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    if not file.is_relative_to(base):
        raise ValueError(f"job file {file} is not under {base}")
    return file.relative_to(base).parts[0].rsplit(".", 1)[0]
