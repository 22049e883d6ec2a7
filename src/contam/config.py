"""Semantic checks of an experiment config and the quantities derived from it.

The JSON schema (workflow/schemas/config.schema.yaml) checks types and ranges;
the checks here need several keys at once. Both run when the Snakefile is parsed,
so a bad config fails before any job starts, with a message naming the key.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

BASELINE_SOURCE = "real"
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class ConfigError(ValueError):
    """A config problem; the message starts with the offending key."""


def typed_overrides(overrides: Any, depth: int = 0) -> Any:
    """Give ``--config`` values inside lists and mappings their YAML types.

    Snakemake parses ``--config key=value`` with int/float/bool parsers, but the
    items of a list or mapping (``seeds='[0,1]'``, ``training='{epochs: 20}'``)
    stay strings. Numbers, booleans and nulls among them are converted; other
    strings (templates, paths) are left alone.
    """
    if isinstance(overrides, dict):
        return {k: typed_overrides(v, depth + 1) for k, v in overrides.items()}
    if isinstance(overrides, list):
        return [typed_overrides(v, depth + 1) for v in overrides]
    if isinstance(overrides, str) and depth > 1:
        import yaml

        try:
            value = yaml.safe_load(overrides)
        except yaml.YAMLError:
            return overrides
        if value is None or isinstance(value, (bool, int, float)):
            return value
    return overrides


def ratio_tag(ratio: float) -> str:
    """Canonical text of a ratio in paths: 0 -> '0.0', 0.4 -> '0.4', 1 -> '1.0'."""
    text = f"{round(float(ratio), 6):.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def known_timm_models() -> set[str]:
    """Model names of the pinned timm, read from a list instead of importing timm.

    Importing timm costs seconds, paid on every Snakefile parse (every dry run and
    every cluster job); tests check the list against the installed timm.
    """
    text = resources.files("contam").joinpath("data/timm_models.txt").read_text()
    return {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}


def generation_only(config: dict) -> bool:
    return config.get("task", "classification") == "generation"


def num_classes(config: dict) -> int:
    real = config["real"]
    if real["kind"] == "digits":
        return len(DIGIT_NAMES)
    return int(real["num_classes"])


def experiment_dir(config: dict) -> str:
    return f"{config.get('results_dir', 'results')}/{config['experiment']}"


def sources_of(config: dict, origin: str) -> list[str]:
    return sorted(name for name, src in config["sources"].items() if src["origin"] == origin)


def expected_image_count(config: dict, source: str) -> int | None:
    """Images a generated source will have, or None when only the data can tell (COCO)."""
    prompts = config["sources"][source].get("prompts", {})
    real = config.get("real", {})
    if prompts.get("style", "plain") == "coco" or not real or (real["kind"] != "digits" and "num_classes" not in real):
        return None
    return num_classes(config) * int(prompts.get("images_per_class", 100))


def training_recipe(config: dict, model: str) -> dict:
    """The shared training recipe with the model's own overrides applied."""
    recipe = copy.deepcopy(config.get("training", {}))
    for key, value in config["models"][model].get("training", {}).items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return recipe


@dataclass(frozen=True, order=True)
class Run:
    source: str
    ratio: str
    model: str
    seed: int

    @property
    def path(self) -> str:
        return f"runs/{self.source}/ratio-{self.ratio}/{self.model}/seed-{self.seed}"


def runs(config: dict) -> list[Run]:
    """Every training run of the study. Ratio 0 is shared by all arms, once."""
    if generation_only(config):
        return []
    result = set()
    for ratio in config["mixing"]["ratios"]:
        tag = ratio_tag(ratio)
        arms = [BASELINE_SOURCE] if float(ratio) == 0 else sorted(config["sources"])
        for source in arms:
            for model in config["models"]:
                for seed in config["seeds"]:
                    result.add(Run(source, tag, model, int(seed)))
    return sorted(result)


def manifests(config: dict) -> list[tuple[str, str]]:
    return sorted({(run.source, run.ratio) for run in runs(config)})


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
    else:
        _check_classification(config, problems)
    _check_generators(config, problems)
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
    if real["kind"] == "digits":
        fractions = real.get("split_fractions", {})
        total = sum(fractions.get(k, 0) for k in ("train", "control", "test"))
        if total > 1.0 + 1e-6:
            problems.append(f"real.split_fractions: train + control + test must be at most 1, got {total:g}")
    else:
        for key in ("root", "test_root", "class_index", "num_classes"):
            if key not in real:
                problems.append(f"real.{key}: required when real.kind is image_folder")


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
                elif real.get("split_fractions", {}).get("control", 0.375) <= 0:
                    problems.append("real.split_fractions.control: must be > 0 for a control source")
            elif "root" not in src:
                problems.append(f"{key}.root: required for a control source of an image-folder dataset")
            for bad in ("generator", "prompts"):
                if bad in src:
                    problems.append(f"{key}.{bad}: only for generated sources")
        elif src.get("prompts", {}).get("style") == "coco":
            problems.append(f"{key}.prompts.style: coco images have no class label to train a classifier on; use task: generation")

    analysis = config.get("analysis", {})
    if analysis.get("enabled", True):
        if analysis.get("feature_extractor", "classifier") == "classifier":
            model = analysis.get("classifier")
            if model is not None and model not in config["models"]:
                problems.append(f"analysis.classifier: {model!r} is not a key of models")
            if not any(float(r) == 0 for r in config["mixing"]["ratios"]):
                problems.append("analysis.feature_extractor: the classifier extractor uses the ratio-0 run; add 0.0 to mixing.ratios or use inception")
        elif "inception_weights" not in analysis:
            problems.append("analysis.inception_weights: required for the inception feature extractor")


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
            for bad in ("real_split", "root"):
                if bad in src:
                    problems.append(f"{key}.{bad}: only for control sources")


def data_paths(config: dict) -> dict[str, str]:
    """Every input path the config names, by key (checked before a real run)."""
    paths: dict[str, str] = {}
    real = config.get("real", {})
    for key in ("root", "test_root", "class_index"):
        if key in real:
            paths[f"real.{key}"] = real[key]
    for name, src in config["sources"].items():
        if "root" in src:
            paths[f"sources.{name}.root"] = src["root"]
        captions = src.get("prompts", {}).get("captions")
        if captions:
            paths[f"sources.{name}.prompts.captions"] = captions
    for name, gen in config.get("generators", {}).items():
        model = gen.get("model")
        # A hub id looks like "org/name"; a local folder is an existing path or
        # starts like one. Only local folders can be checked offline.
        if model and (model.startswith(("/", ".", "~")) or Path(model).exists()):
            paths[f"generators.{name}.model"] = model
    weights = config.get("analysis", {}).get("inception_weights")
    if weights and config.get("analysis", {}).get("feature_extractor") == "inception":
        paths["analysis.inception_weights"] = weights
    for name, ood in config.get("evaluation", {}).get("ood_sets", {}).items():
        paths[f"evaluation.ood_sets.{name}.root"] = ood["root"]
    return paths


def missing_paths(config: dict) -> list[str]:
    return [
        f"{key}: path {path!r} does not exist"
        for key, path in data_paths(config).items()
        if not Path(path).expanduser().exists()
    ]
