"""Stage build_prompts: one row per image to generate.

Columns: ``row`` (0..N-1, the image's identity), ``prompt``, ``label``,
``class_name``, ``image_id``/``caption_id`` (COCO only) and ``seed``, the image's
own seed = f(generator seed, row). Three styles, as in the paper:

* plain: ``template.format(name=first synonym)`` for every class (SD-ImageNet);
* complex: ``"{a} {b} of {name} {c}".strip()`` with uniform draws from the paper's
  word lists and a uniform synonym (Complex SD-ImageNet);
* coco: one prompt per COCO training caption (SD-COCO).
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd
import yaml

from contam.seeds import image_seeds, rng

PROMPT_COLUMNS = ["row", "prompt", "label", "class_name", "image_id", "caption_id", "seed"]


def complex_vocabulary() -> dict[str, list[str]]:
    """The paper's word lists (data/complex_prompt_vocabulary.yaml)."""
    text = resources.files("contam").joinpath("data/complex_prompt_vocabulary.yaml").read_text()
    return yaml.safe_load(text)


def synonyms(names: str) -> list[str]:
    return [n.strip() for n in names.split(",") if n.strip()]


def _finish(frame: pd.DataFrame, base_seed: int) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    frame.insert(0, "row", np.arange(len(frame), dtype=np.int64))
    for column in ("image_id", "caption_id"):
        if column not in frame:
            frame[column] = pd.array([pd.NA] * len(frame), dtype="Int64")
    frame["label"] = frame["label"].astype("Int64")
    frame["seed"] = image_seeds(base_seed, frame["row"].to_numpy())
    return frame[PROMPT_COLUMNS]


def plain_prompts(classes: pd.DataFrame, template: str, per_class: int, base_seed: int) -> pd.DataFrame:
    """``per_class`` rows per class, class-major, each ``template`` with the first synonym."""
    labels = np.repeat(classes["label"].to_numpy(), per_class)
    names = np.repeat([synonyms(n)[0] for n in classes["names"]], per_class)
    frame = pd.DataFrame({"prompt": [template.format(name=n) for n in names], "label": labels, "class_name": names})
    return _finish(frame, base_seed)


def complex_prompts(classes: pd.DataFrame, per_class: int, base_seed: int, vocabulary: dict | None = None) -> pd.DataFrame:
    """The paper's randomised prompts, drawn with a seeded generator."""
    vocab = vocabulary or complex_vocabulary()
    draw = rng(base_seed, "complex-prompts")
    rows = []
    for label, names in zip(classes["label"], classes["names"]):
        options = synonyms(names)
        for _ in range(per_class):
            a = vocab["a"][draw.integers(len(vocab["a"]))]
            b = vocab["b"][draw.integers(len(vocab["b"]))]
            name = options[draw.integers(len(options))]
            c = vocab["c"][draw.integers(len(vocab["c"]))]
            rows.append((f"{a} {b} of {name} {c}".strip(), int(label), options[0]))
    return _finish(pd.DataFrame(rows, columns=["prompt", "label", "class_name"]), base_seed)


def coco_prompts(captions_file: str, base_seed: int) -> pd.DataFrame:
    """One row per caption of a COCO captions file, ordered by (image id, caption id)."""
    from pycocotools.coco import COCO

    coco = COCO(captions_file)
    anns = sorted(coco.dataset.get("annotations", []), key=lambda a: (a["image_id"], a["id"]))
    frame = pd.DataFrame(
        {
            "prompt": [" ".join(a["caption"].split()) for a in anns],
            "label": pd.array([pd.NA] * len(anns), dtype="Int64"),
            "class_name": [None] * len(anns),
            "image_id": pd.array([a["image_id"] for a in anns], dtype="Int64"),
            "caption_id": pd.array([a["id"] for a in anns], dtype="Int64"),
        }
    )
    return _finish(frame, base_seed)


def build_prompts(prompt_config: dict, classes: pd.DataFrame | None, base_seed: int) -> pd.DataFrame:
    style = prompt_config.get("style", "plain")
    if style == "coco":
        return coco_prompts(prompt_config["captions"], base_seed)
    per_class = int(prompt_config.get("images_per_class", 100))
    if style == "complex":
        return complex_prompts(classes, per_class, base_seed)
    return plain_prompts(classes, prompt_config.get("template", "photo of {name}"), per_class, base_seed)
