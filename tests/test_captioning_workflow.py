"""The captioning study end to end on tiny settings, on a copy of the session's tiny study
(its real glyphs are reused)."""

import json
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import job_counts, run_snakemake, write_yaml
from contam import caption_data, caption_metrics, scenes
from contam.io import file_sha256, read_parquet, write_parquet

OUT = "results/tiny"
CAPTIONING = f"{OUT}/captioning"


def tiny_captioning(config: dict) -> dict:
    """The tiny classification study turned into a captioning one: same real data and generator."""
    config = {k: v for k, v in config.items() if k not in ("models", "analysis")}
    config["task"] = "captioning"
    config["sources"]["generated"].pop("prompts")
    config["mixing"] = {"ratios": [0.0, 1.0]}
    config["seeds"] = [0]
    config["training"].update(epochs=2, batch_size=32, label_smoothing=0.0)
    config["captioning"] = {
        "scenes": {"train": 60, "test": 24},
        "captioner": {"name": "tiny-tx", "kind": "embedded", "arch": "resnet10t", "image_size": 16, "feature_stage": 2, "d_model": 32, "layers": 1, "heads": 2, "max_len": 12, "presence_weight": 1.0},
        "decoding": {"beam_size": 2},
        "samples": 3,
    }
    return config


@pytest.fixture(scope="module")
def captioning_study(tiny_study, tmp_path_factory):
    root, config_path = tiny_study
    work = tmp_path_factory.mktemp("captioning")
    # copy2 keeps modification times and Snakemake's records: the real index and the
    # generator are up to date for the captioning config, which shares their settings
    # (and their benchmark files, which are outputs too).
    for part in ("results", "benchmarks", ".snakemake/metadata"):
        shutil.copytree(root / part, work / part)
    path = write_yaml(work / "tiny-captioning.yaml", tiny_captioning(yaml.safe_load(config_path.read_text())))
    plan = job_counts(run_snakemake("-n", "--configfile", str(path), cwd=work).stdout)
    run_snakemake("--cores", "2", "--configfile", str(path), cwd=work)
    return work, path, plan


def test_the_study_reuses_glyphs_and_generator_and_plans_each_run_once(captioning_study):
    _, _, plan = captioning_study
    # The real glyphs and the generator are reused.
    assert "index_real" not in plan and "fit_generator" not in plan, plan
    # ratio 0 once, each arm at 1.0: three runs.
    assert plan["train_captioner"] == plan["evaluate_captioner"] == plan["mix_captions"] == 3
    assert plan["build_scenes"] == plan["compose_generated_scenes"] == plan["score_meteor"] == plan["report_captioning"] == 1


def test_splits_are_disjoint_by_glyph_and_twins_keep_their_scene(captioning_study):
    work, _, _ = captioning_study
    real = read_parquet(work / OUT / "real/index.parquet")
    split_of = dict(zip(real["path"], real["split"]))
    captioned = read_parquet(work / CAPTIONING / "captioned.parquet")
    for split in ("train", "test"):
        rows = captioned[captioned["split"] == split]
        assert {split_of[g] for g in (*rows["glyph_a"], *rows["glyph_b"])} == {split}
    # Every reference caption parses back to its scene.
    for row in captioned.itertuples():
        truth = scenes.canonical(int(row.digit_a), row.colour_a, int(row.digit_b), row.colour_b, row.relation)
        assert [scenes.parse_caption(c) for c in row.captions] == [truth] * scenes.CAPTIONS_PER_SCENE
    train_ids = set(captioned.loc[captioned["split"] == "train", "image_id"])
    for arm in ("generated", "control"):
        pool = read_parquet(work / CAPTIONING / f"pools/{arm}.parquet")
        assert set(pool["image_id"]) == train_ids


def test_generated_and_real_scenes_are_stored_identically(captioning_study):
    work, _, _ = captioning_study
    captioned = read_parquet(work / CAPTIONING / "captioned.parquet")
    pool = read_parquet(work / CAPTIONING / "pools/generated.parquet")
    real = captioned.loc[captioned["split"] == "train"].set_index("image_id")["path"]
    for image_id, path in list(zip(pool["image_id"], pool["path"]))[:10]:
        a, b = Image.open(work / real[image_id]), Image.open(work / path)
        assert (a.format, a.mode, a.size) == (b.format, b.mode, b.size) == ("PNG", "RGB", (16, 16))
        # Colourised glyphs on black: every channel value is colour * level / 255 of
        # the stored glyph grid, for both.
        assert np.asarray(a).dtype == np.asarray(b).dtype == np.uint8
    assert not all(file_sha256(work / real[i]) == file_sha256(work / p) for i, p in zip(pool["image_id"], pool["path"]))


def test_mixes_replace_pixels_not_captions_and_are_byte_identical(captioning_study, tmp_path):
    work, _, _ = captioning_study
    captioned = read_parquet(work / CAPTIONING / "captioned.parquet")
    train = captioned[captioned["split"] == "train"]
    for arm in ("generated", "control"):
        manifest = read_parquet(work / CAPTIONING / f"manifests/{arm}/ratio-1.0.parquet")
        assert set(manifest["origin"]) == {arm} and len(manifest) == len(train)
        by_id = dict(zip(train["image_id"], train["captions"]))
        assert all(list(c) == list(by_id[i]) for i, c in zip(manifest["image_id"], manifest["captions"]))
        again = caption_data.caption_mix(train, read_parquet(work / CAPTIONING / f"pools/{arm}.parquet"), 1.0, 0, arm)
        write_parquet(again, tmp_path / f"{arm}.parquet")
        assert file_sha256(tmp_path / f"{arm}.parquet") == file_sha256(work / CAPTIONING / f"manifests/{arm}/ratio-1.0.parquet")


def test_each_run_has_coco_metrics_slots_and_coco_format_predictions(captioning_study):
    work, _, _ = captioning_study
    captioned = read_parquet(work / CAPTIONING / "captioned.parquet")
    test = captioned[captioned["split"] == "test"]
    references = caption_metrics.references_coco(list(test["image_id"]), [list(c) for c in test["captions"]])
    runs = sorted((work / CAPTIONING / "runs").glob("*/ratio-*/tiny-tx/seed-0"))
    assert len(runs) == 3
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        assert set(metrics["coco"]) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
        assert all(0 <= v for v in metrics["coco"].values()) and metrics["n_images"] == 24
        assert metrics["tokenizer"] == caption_metrics.choose_tokenizer("auto")
        assert {*scenes.SLOT_NAMES, *scenes.ORDER_FREE_NAMES} <= set(metrics["slots"]) and metrics["slots"]["n"] == 24
        results = json.loads((run / "predictions.json").read_text())
        _, loaded = caption_metrics.load_results_with_pycocotools(references, results)
        assert len(loaded.getImgIds()) == 24
        # The training log and weights of the run sit beside them.
        assert (run / "model.safetensors").exists() and (run / "vocab.json").exists()
    meteor = json.loads((work / CAPTIONING / "meteor.json").read_text())
    assert len(meteor["runs"]) == 3
    if caption_metrics.java_available():
        assert meteor["not_computed"] is None and all(0 <= v <= 1 for v in meteor["runs"].values())


def test_the_report_shows_tables_figure_samples_and_slots(captioning_study):
    work, _, _ = captioning_study
    report = work / OUT / "report"
    html = (report / "captioning.html").read_text()
    for text in ("CIDEr", "Bleu", "slot", "SPICE"):
        assert text.lower() in html.lower(), text
    images = [p for p in report.glob("figures/captioning*.png")]
    assert len(images) >= 2 and all(p.name in html for p in images)
    summary = (report / "captioning_summary.csv").read_text()
    assert "generated" in summary and "control" in summary
