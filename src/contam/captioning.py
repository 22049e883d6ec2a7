"""The captioning study (task: captioning): its runs, their settings, config checks and the evaluate stage.

One run trains the study's captioner (section ``captioning.captioner``) on one
mix with one seed, then captions the real test images and scores them: BLEU-1 to
4, ROUGE-L and CIDEr per run (:mod:`contam.caption_metrics`), METEOR for all
runs in one job, and in the digits world the slot accuracy of each caption
parsed back with the template grammar (:mod:`contam.scenes`). As in the
classification study, ratio 0 (real images only) is one shared run per seed.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

from contam import layout

log = logging.getLogger(__name__)

TASK = "captioning"
# What a metrics file reports, in the report's order.
COCO_METRICS = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]


def is_captioning(config: dict) -> bool:
    return config.get("task") == TASK


@dataclass(frozen=True, order=True)
class CaptionRun:
    source: str
    ratio: str
    seed: int

    def metrics(self, out: str, captioner: str) -> str:
        return layout.caption_metrics(out, self.source, self.ratio, captioner, self.seed)

    def predictions(self, out: str, captioner: str) -> str:
        return layout.caption_predictions(out, self.source, self.ratio, captioner, self.seed)


def runs(config: dict) -> list[CaptionRun]:
    """Every captioner run: ratio 0 once per seed (source 'real'), every arm above it."""
    from contam.config import arms_at

    result = set()
    for ratio in config["mixing"]["ratios"]:
        for source in arms_at(config, ratio):
            for seed in config["seeds"]:
                result.add(CaptionRun(source, layout.ratio_tag(ratio), int(seed)))
    return sorted(result)


def run_settings(config: dict, seed: int | str) -> dict:
    """What changes a trained captioner besides its manifest (speed-only settings are read in the job)."""
    from contam.resources import resource_set

    return {
        "captioner": copy.deepcopy(config["captioning"]["captioner"]),
        "recipe": copy.deepcopy(config.get("training", {})),
        "seed": int(seed),
        # Several GPUs multiply the effective batch: a setting, as in the classification study.
        "processes": max(1, int(resource_set(config, "train_captioner")["gpu"])),
    }


def evaluation_settings(config: dict) -> dict:
    """What changes a run's captions and scores."""
    captioning = config["captioning"]
    return {
        "beam_size": captioning["decoding"]["beam_size"],
        "tokenizer": captioning["metrics"]["tokenizer"],
        "slots": config["real"]["kind"] == "digits",
    }


def check(config: dict, problems: list[str], known_timm_models: set[str]) -> None:
    """The captioning study's keys, each problem naming its key."""
    real = config["real"]
    captioning = config["captioning"]
    captioner = captioning["captioner"]
    if real["kind"] == "image_folder":
        problems.append("real.kind: task captioning needs captioned images: digits (the embedded scenes) or coco")
    if real["kind"] == "coco":
        for key in ("captions", "images", "split_file"):
            if key not in real:
                problems.append(f"real.{key}: required when real.kind is coco")
        if "captions" in real and "images" in real and len(real["captions"]) != len(real["images"]):
            problems.append(f"real.images: one image folder per captions file ({len(real['captions'])} files, {len(real['images'])} folders)")
    for key in ("captions", "images", "split_file"):
        if real["kind"] != "coco" and key in real:
            problems.append(f"real.{key}: only with real.kind coco")
    if captioner["kind"] == "folder":
        if "folder" not in captioner:
            problems.append("captioning.captioner.folder: required for a folder captioner (a local save_pretrained folder; nothing is downloaded)")
        if captioner.get("presence_weight", 0) > 0:
            problems.append("captioning.captioner.presence_weight: only for kind embedded (a folder model has no word-presence head)")
    else:
        if captioner.get("folder"):
            problems.append("captioning.captioner.folder: only for kind folder")
        if captioner["arch"] not in known_timm_models:
            problems.append(f"captioning.captioner.arch: unknown timm model {captioner['arch']!r}")
        if captioner["d_model"] % captioner["heads"]:
            problems.append(f"captioning.captioner.heads: {captioner['heads']} heads do not divide d_model {captioner['d_model']}")
    for name, src in config["sources"].items():
        key = f"sources.{name}"
        if "prompts" in src:
            problems.append(f"{key}.prompts: the captioning study makes its own prompts (each training scene's glyphs, or COCO's captions); leave it out")
        if src["origin"] == "generated":
            if real["kind"] == "coco" and "index" not in src:
                problems.append(f"{key}.index: required with real.kind coco: the generated index of the SD-COCO generation experiment")
            if real["kind"] == "coco" and "generator" in src:
                problems.append(f"{key}.generator: with real.kind coco the images come from sources.{name}.index, not a generator")
            if real["kind"] == "digits" and "index" in src:
                problems.append(f"{key}.index: only with real.kind coco; the digit scenes' glyphs come from sources.{name}.generator")
        else:
            if real["kind"] == "coco":
                problems.append(f"{key}.origin: a control arm needs real captioned twins; only the digit scenes have them (COCO has none)")
            elif src.get("real_split") != "control":
                problems.append(f"{key}.real_split: a control arm of the digit scenes draws its glyphs from real_split: control")
            elif real["split_fractions"].get("control", 0) <= 0:
                problems.append("real.split_fractions.control: must be > 0 for a control arm")
            if "index" in src:
                problems.append(f"{key}.index: only for generated sources")


# ---- the evaluate stage ----------------------------------------------------------------


def test_images(captioned):
    """The real test images, in image-id order."""
    return captioned[captioned["split"] == "test"].sort_values("image_id").reset_index(drop=True)


def slot_truths(test) -> list:
    """Each test scene's slots in canonical form (the digits world only)."""
    from contam import scenes

    return [
        scenes.canonical(int(r.digit_a), r.colour_a, int(r.digit_b), r.colour_b, r.relation)
        for r in test.itertuples()
    ]


def evaluate_run(run_dir, settings: dict, evaluation: dict, captioned, device, batch_size: int) -> tuple[dict[int, str], dict]:
    """Caption the real test images with one trained captioner and score them.

    Returns the predictions (image id -> caption) and the metrics: BLEU-1..4,
    ROUGE-L and CIDEr with the tokenizer that was used, and, for the digit
    scenes, the slot accuracy of the captions parsed back by the template grammar.
    """
    from contam import caption_data, caption_metrics, captioner, scenes

    test = test_images(captioned)
    model, vocab = captioner.load_captioner(run_dir, settings["captioner"], device)
    captions = captioner.caption_images(
        model,
        vocab,
        list(test["path"]),
        settings["captioner"].get("image_size", 32),
        evaluation["beam_size"],
        settings["captioner"]["max_len"],
        batch_size,
        device,
    )
    predictions = {int(i): c for i, c in zip(test["image_id"], captions)}
    refs = caption_data.references(test, "test")
    tokenizer = caption_metrics.choose_tokenizer(evaluation["tokenizer"])
    scores = caption_metrics.coco_scores(predictions, refs, tokenizer)
    metrics = {
        "coco": {k: v for k, v in scores.items() if k in COCO_METRICS},
        "per_image": scores.get("per_image", {}),
        "tokenizer": scores["tokenizer"],
        "n_images": scores["n_images"],
        "beam_size": evaluation["beam_size"],
    }
    if evaluation["slots"]:
        metrics["slots"] = scenes.slot_accuracy(captions, slot_truths(test))
    log.info("scores: %s", {**metrics["coco"], **metrics.get("slots", {})})
    return predictions, metrics
