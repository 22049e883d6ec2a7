"""Quantities derived from an experiment config: class counts, sources, runs.

The config is loaded and checked by the Snakefile: the JSON schema
(workflow/schemas/config.schema.yaml) checks types and ranges and applies every
default, ``contam.config_checks`` checks what needs several keys at once, and
``contam.config_paths`` checks data paths before the first job. This module
only reads a config that has passed them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from contam import layout

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


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


def generation_only(config: dict) -> bool:
    return config["task"] == "generation"


def num_classes(config: dict) -> int:
    real = config["real"]
    if real["kind"] == "digits":
        return len(DIGIT_NAMES)
    return int(real["num_classes"])


def experiment_dir(config: dict) -> str:
    return f"{config['results_dir']}/{config['experiment']}"


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

    def metrics(self, out: str) -> str:
        return layout.metrics(out, self.source, self.ratio, self.model, self.seed)


def arms_at(config: dict, ratio: float | str) -> list[str]:
    """The sources trained at a ratio: the shared real baseline at 0, every arm above."""
    return [layout.BASELINE_SOURCE] if float(ratio) == 0 else sorted(config["sources"])


def runs(config: dict) -> list[Run]:
    """Every classifier training run of the study. Ratio 0 is shared by all arms, once."""
    if generation_only(config) or "models" not in config:
        return []
    result = set()
    for ratio in config["mixing"]["ratios"]:
        tag = layout.ratio_tag(ratio)
        for source in arms_at(config, ratio):
            for model in config["models"]:
                for seed in config["seeds"]:
                    result.add(Run(source, tag, model, int(seed)))
    return sorted(result)
