"""Checks of an experiment config that need several keys at once.

The JSON schema (workflow/schemas/config.schema.yaml) checks types, ranges and
name patterns, and applies the defaults; these checks run right after it, when
the Snakefile is parsed, so a bad config fails before any job starts with a
message that names the key.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any, Iterable

from contam import label_files
from contam.config import expected_image_count, generation_only
from contam.layout import ratio_tag

# Splits of the digits world that a model or a generator trains on: never a
# reference for the distribution analysis.
SEEN_SPLITS = ("train", "control")


class ConfigError(ValueError):
    """A config problem; the message starts with the offending key."""


def known_timm_models() -> set[str]:
    """Model names of the pinned timm, read from a list instead of importing timm.

    Importing timm costs seconds, paid on every Snakefile parse (every dry run and
    every cluster job); tests check the list against the installed timm.
    """
    text = resources.files("contam").joinpath("data/timm_models.txt").read_text()
    return {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}


def _duplicates(values: Iterable[Any]) -> list[Any]:
    seen, dup = set(), []
    for value in values:
        if value in seen:
            dup.append(value)
        seen.add(value)
    return dup


def check_semantics(config: dict) -> None:
    """Raise ConfigError listing every problem, each naming its key."""
    problems: list[str] = []
    if generation_only(config):
        _check_generation_only(config, problems)
    elif config.get("task") == "captioning":
        _check_captioning(config, problems)
    else:
        _check_classification(config, problems)
    if config.get("task") == "generative":
        _check_generative(config, problems)
    elif "generative" in config:
        problems.append("generative: this section is read only with task: generative")
    if "captioning" in config and config.get("task") != "captioning":
        problems.append("captioning: this section is read only with task: captioning")
    if config.get("remedies", {}).get("enabled") and config.get("task", "classification") != "classification":
        problems.append(f"remedies.enabled: the remedies filter and pretrain on the classification study's mixes; task {config['task']} has none")
    _check_generators(config, problems)
    _check_prepare(config, problems)
    _check_decode(config, problems)
    _check_results_dir(config, problems)
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _check_generation_only(config: dict, problems: list[str]) -> None:
    for name, src in config["sources"].items():
        if src["origin"] != "generated":
            problems.append(f"sources.{name}.origin: a generation-only experiment (task: generation) has only generated sources")
        elif src.get("prompts", {}).get("style", "plain") != "coco" and "real" not in config:
            problems.append(f"real: plain and complex prompts (sources.{name}) take class names from the real dataset's class index")
    if "real" in config:
        _check_real(config["real"], problems)


def _check_real(real: dict, problems: list[str]) -> None:
    if real["kind"] == "coco":
        problems.append("real.kind: coco (captioned images) is read by task: captioning only")
        return
    if real["kind"] == "digits":
        fractions = real.get("split_fractions", {})
        total = sum(fractions.values())
        if total > 1.0 + 1e-6:
            problems.append(f"real.split_fractions: the shares must sum to at most 1, got {total:g}")
    else:
        for key in ("root", "test_root", "class_index", "num_classes"):
            if key not in real:
                problems.append(f"real.{key}: required when real.kind is image_folder")
    _check_test_labels(real, problems)


def _check_test_labels(real: dict, problems: list[str]) -> None:
    """The labels file of a flat test_root: its format is known from its name, before the data exist."""
    labels, meta = real.get("test_labels"), real.get("test_labels_meta")
    if real["kind"] != "image_folder":
        for key in ("test_labels", "test_labels_meta"):
            if key in real:
                problems.append(f"real.{key}: only with real.kind image_folder")
        return
    if labels is None:
        if meta is not None:
            problems.append("real.test_labels_meta: only with real.test_labels (the devkit's ground truth)")
        return
    kind = label_files.test_labels_format(labels)
    if kind is None:
        problems.append(f"real.test_labels: unknown labels format of {labels!r}; expected {label_files.KNOWN_FORMATS}")
    elif kind == label_files.DEVKIT and meta is None:
        problems.append("real.test_labels_meta: required with the devkit's ground truth (real.test_labels, a .txt): the devkit's meta.mat maps its class IDs to wnids")
    elif kind == label_files.KAGGLE and meta is not None:
        problems.append("real.test_labels_meta: only for the devkit's ground truth; Kaggle's LOC_val_solution.csv names wnids itself")


def _check_classification(config: dict, problems: list[str]) -> None:
    real = config["real"]
    _check_real(real, problems)
    tags = [ratio_tag(r) for r in config["mixing"]["ratios"]]
    for tag in _duplicates(tags):
        problems.append(f"mixing.ratios: ratio {tag} is listed twice")
    for seed in _duplicates(config["seeds"]):
        problems.append(f"seeds: seed {seed} is listed twice")

    timm_models = known_timm_models()
    for name, model in config["models"].items():
        if model["arch"] not in timm_models:
            problems.append(
                f"models.{name}.arch: unknown timm model {model['arch']!r} "
                "(see timm.list_models() for the names)"
            )

    for name, src in config["sources"].items():
        key = f"sources.{name}"
        if src["origin"] == "control":
            if real["kind"] == "digits":
                if src.get("real_split") != "control":
                    problems.append(f"{key}.real_split: a digits control source must use real_split: control")
                elif real["split_fractions"]["control"] <= 0:
                    problems.append("real.split_fractions.control: must be > 0 for a control source")
                elif real["split_fractions"]["control"] < real["split_fractions"]["train"] * max(config["mixing"]["ratios"]) + 0.01:
                    # Stratified rounding can leave a class one image short, hence the margin.
                    problems.append("real.split_fractions.control: the control pool must be larger than the share of the train split it replaces (train x the largest ratio, plus 0.01)")
            elif "root" not in src:
                problems.append(f"{key}.root: required for a control source of an image-folder dataset")
            if "file_lists" in src and (real["kind"] != "image_folder" or "root" not in src):
                problems.append(f"{key}.file_lists: only for a control source with a root (paths in the lists are relative to it), of an image-folder dataset")
            for bad in ("generator", "prompts"):
                if bad in src:
                    problems.append(f"{key}.{bad}: only for generated sources")
        elif src.get("prompts", {}).get("style") == "coco":
            problems.append(f"{key}.prompts.style: coco images have no class label to train a classifier on; use task: generation")

    if config["analysis"]["enabled"]:
        _check_analysis(config, problems)
    if config["remedies"]["enabled"]:
        _check_remedies(config, problems)


def _check_captioning(config: dict, problems: list[str]) -> None:
    from contam import captioning

    if config["real"]["kind"] != "coco":
        _check_real(config["real"], problems)
    tags = [ratio_tag(r) for r in config["mixing"]["ratios"]]
    for tag in _duplicates(tags):
        problems.append(f"mixing.ratios: ratio {tag} is listed twice")
    for seed in _duplicates(config["seeds"]):
        problems.append(f"seeds: seed {seed} is listed twice")
    if "models" in config:
        problems.append("models: task captioning trains captioning.captioner; models are the classification study's")
    captioning.check(config, problems, known_timm_models())


def _check_generative(config: dict, problems: list[str]) -> None:
    """The generative study: a judge classifier, and loop regimes that cannot collide with sources."""
    if "generative" not in config:
        problems.append("generative: required with task: generative")
        return
    analysis = config["analysis"]
    if not analysis["enabled"]:
        problems.append("analysis.enabled: task generative scores samples against the reference split; it must be true")
    if analysis["feature_extractor"] != "classifier":
        problems.append("analysis.feature_extractor: task generative judges samples with the real-only classifier; use classifier")
    loop = config["generative"]["loop"]
    for regime in loop["regimes"]:
        if regime in config["sources"]:
            problems.append(f"sources.{regime}: a source may not share its name with a loop regime in generative.loop.regimes")
    if config["real"]["kind"] == "digits":
        image_size = config["generative"]["model"]["image_size"]
        if image_size != config["real"]["image_size"]:
            problems.append(f"generative.model.image_size: {image_size} differs from real.image_size {config['real']['image_size']}; models must train and sample at the real images' size")
        if "fresh" in loop["regimes"]:
            splits = config["real"]["split_fractions"]
            for split in loop["fresh_splits"]:
                if split not in splits or split not in SEEN_SPLITS:
                    problems.append(f"generative.loop.fresh_splits: {split!r} is not a split models may train on ({', '.join(SEEN_SPLITS)})")
    elif "fresh" in loop["regimes"]:
        problems.append("generative.loop.regimes: fresh needs a pool of real images beyond the train split; only the digits world has one")


def _check_generators(config: dict, problems: list[str]) -> None:
    generators = config.get("generators", {})
    for name, gen in generators.items():
        if gen["kind"] == "diffusers" and "model" not in gen:
            problems.append(f"generators.{name}.model: required for a diffusers generator")
        if gen["kind"] == "diffusers" and (gen.get("height", 512) % 8 or gen.get("width", 512) % 8):
            problems.append(f"generators.{name}.height/width: diffusers pipelines need multiples of 8")
        if gen.get("scheduler") == "pndm" and gen.get("steps", 50) < 4:
            # diffusers' PNDM fails mid-run below 4 steps (its warm-up needs them).
            problems.append(f"generators.{name}.steps: the pndm scheduler needs at least 4 steps")

    for name, src in config["sources"].items():
        key = f"sources.{name}"
        if src["origin"] == "generated":
            if "index" in src and config.get("task") == "captioning":
                continue  # images made by another experiment (contam.captioning checks the rest)
            if "generator" not in src:
                problems.append(f"{key}.generator: required for a generated source")
            elif src["generator"] not in generators:
                problems.append(
                    f"{key}.generator: unknown generator {src['generator']!r} "
                    f"(defined: {', '.join(sorted(generators)) or 'none'})"
                )
            else:
                gen_kind = generators[src["generator"]]["kind"]
                style = src.get("prompts", {}).get("style", "plain")
                if gen_kind == "embedded" and style == "coco":
                    problems.append(f"{key}.prompts.style: the embedded generator is class-conditional; coco prompts need a diffusers generator")
            prompts = src.get("prompts", {})
            if prompts.get("style") == "coco" and "captions" not in prompts:
                problems.append(f"{key}.prompts.captions: required for coco prompts")
            if "{name}" not in prompts.get("template", "{name}"):
                problems.append(f"{key}.prompts.template: must contain {{name}}")
            count = expected_image_count(config, name)
            shards = int(src.get("shards", 1))
            if count is not None and shards > count:
                problems.append(f"{key}.shards: {shards} shards for only {count} images (more shards than images)")
            for bad in ("real_split", "root", "file_lists"):
                if bad in src:
                    problems.append(f"{key}.{bad}: only for control sources")




def _check_prepare(config: dict, problems: list[str]) -> None:
    """Cached copies feed the classification study's loaders, and must not be upscaled by them."""
    prepare = config.get("prepare", {})
    if not prepare.get("enabled", False):
        return
    if config.get("task", "classification") != "classification":
        problems.append(f"prepare.enabled: cached copies feed the classification study's train and evaluate jobs; task {config['task']} does not read them")
        return
    side = int(prepare.get("short_side", 256))
    crop_ratio = float(config.get("evaluation", {}).get("crop_ratio", 0.875))
    for name, model in config["models"].items():
        resize = int(round(model["image_size"] / crop_ratio))
        if side < resize:
            problems.append(f"prepare.short_side: {side} is below models.{name}'s evaluation resize {resize} (image_size / evaluation.crop_ratio); its test images would be upscaled from the copies")


def _check_decode(config: dict, problems: list[str]) -> None:
    """GPU decoding on a job pinned to the CPU is a contradiction known at parse time.

    Whether a job's machine has CUDA is known only when it starts (a cluster's
    login node has no GPU): contam.models.decode_device fails there, naming the key.
    """
    execution = config.get("execution", {})
    if execution.get("decode", "cpu") == "cuda" and execution.get("device", "auto") in ("cpu", "mps"):
        problems.append(f"execution.decode: cuda decodes on the job's GPU, but execution.device is {execution['device']}")


def _check_results_dir(config: dict, problems: list[str]) -> None:
    """A relative results_dir stays inside the working directory; an absolute one is taken as meant."""
    results_dir = config["results_dir"]
    if os.path.isabs(results_dir):
        return
    inside = os.path.normpath(results_dir)
    if inside == ".." or inside.startswith(".." + os.sep):
        problems.append(f"results_dir: {results_dir!r} would write outside the working directory; give an absolute path if you mean it")


def _check_analysis(config: dict, problems: list[str]) -> None:
    analysis = config["analysis"]
    real = config["real"]
    split = analysis["reference_split"]
    if real["kind"] == "digits":
        if split in SEEN_SPLITS:
            problems.append(f"analysis.reference_split: {split!r} is seen by the models or the generator; use a held-out split such as reference")
        elif real["split_fractions"].get(split, 0) <= 0:
            problems.append(f"analysis.reference_split: real.split_fractions.{split} must be > 0")
    elif split != "test":
        problems.append(f"analysis.reference_split: an image-folder dataset has train and test splits; only test (never trained on) can be the reference, got {split!r}")
    if analysis["feature_extractor"] == "classifier":
        model = analysis.get("classifier")
        if model is not None and model not in config["models"]:
            problems.append(f"analysis.classifier: {model!r} is not a key of models")
        if not any(float(r) == 0 for r in config["mixing"]["ratios"]):
            problems.append("analysis.feature_extractor: the classifier extractor uses the ratio-0 run; add 0.0 to mixing.ratios or use inception")
    elif "inception_weights" not in analysis:
        problems.append("analysis.inception_weights: required for the inception feature extractor")


def _check_remedies(config: dict, problems: list[str]) -> None:
    """The remedies reuse the study's mixes and runs: their ratios and model must be in it."""
    remedies = config["remedies"]
    ratios = {ratio_tag(r) for r in config["mixing"]["ratios"]}
    model = remedies.get("model")
    if model is not None and model not in config["models"]:
        problems.append(f"remedies.model: {model!r} is not a key of models")
    if ratio_tag(0) not in ratios:
        problems.append("remedies.enabled: the remedies compare with the clean ratio-0 run; add 0.0 to mixing.ratios")
    for tag in sorted({ratio_tag(r) for r in remedies["ratios"]} - ratios):
        problems.append(f"remedies.ratios: {tag} is not in mixing.ratios (filtering compares with the unfiltered run at the same ratio)")
    if not config["sources"]:
        problems.append("remedies.enabled: the study has no contaminant source to filter")
    if not any(src["origin"] == "generated" for src in config["sources"].values()):
        problems.append("remedies.enabled: the detectors learn real vs generated; the study has no generated source")
    budgets = [float(b) for b in remedies["fpr_budgets"]]
    filtering = remedies["filter"]
    for kind in filtering["detectors"]:
        if kind not in remedies["detectors"]:
            problems.append(f"remedies.filter.detectors: {kind!r} is not in remedies.detectors")
    if filtering["detectors"] and not any(abs(float(filtering["fpr_budget"]) - b) < 1e-12 for b in budgets):
        problems.append(f"remedies.filter.fpr_budget: {filtering['fpr_budget']:g} is not one of remedies.fpr_budgets")
    data = remedies["detector_data"]
    fractions = data["split_fractions"]
    if sum(fractions.values()) > 1.0 + 1e-6:
        problems.append(f"remedies.detector_data.split_fractions: the shares must sum to at most 1, got {sum(fractions.values()):g}")
    split = data["real_split"]
    real = config["real"]
    if split == "test":
        problems.append("remedies.detector_data.real_split: the detectors may never see the test split")
    elif real["kind"] == "digits" and real["split_fractions"].get(split, 0) <= 0:
        problems.append(f"remedies.detector_data.real_split: {split!r} is not a split of the digits world with a share > 0 (real.split_fractions)")
    elif real["kind"] != "digits" and split != "train":
        problems.append(f"remedies.detector_data.real_split: an image-folder dataset has train and test splits; only train can feed the detectors, got {split!r}")
    ssl = remedies["ssl"]
    if ssl["enabled"]:
        for tag in sorted({ratio_tag(r) for r in ssl["ratios"]} - ratios):
            problems.append(f"remedies.ssl.ratios: {tag} is not in mixing.ratios (SSL is compared with supervised runs on the same mixes)")
        if ratio_tag(0) not in {ratio_tag(r) for r in ssl["ratios"]}:
            problems.append("remedies.ssl.ratios: must include 0.0, the clean mix the drop is measured from")
        if ssl["arch"] not in known_timm_models():
            problems.append(f"remedies.ssl.arch: unknown timm model {ssl['arch']!r}")
    if "cnn" in remedies["detectors"] and remedies["cnn"]["arch"] not in known_timm_models():
        problems.append(f"remedies.cnn.arch: unknown timm model {remedies['cnn']['arch']!r}")
