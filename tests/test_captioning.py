"""The captioning study's config, its paper-scale plan, COCO's split file and the mixes."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from snakemake.exceptions import WorkflowError

from conftest import REPO, job_counts, run_snakemake, validated, write_yaml
from contam import caption_data, captioning, config_checks, config_paths, layout


@pytest.fixture
def digits_captioning() -> dict:
    return copy.deepcopy(yaml.safe_load((REPO / "config" / "digits-captioning.yaml").read_text()))


@pytest.fixture
def coco_captioning() -> dict:
    return copy.deepcopy(yaml.safe_load((REPO / "config" / "coco-captioning.yaml").read_text()))


def coco_site(root, images_per_split=(3, 1, 2), missing=()):
    """A miniature COCO: a captions file, its images and a Karpathy-style split file."""
    folder = root / "train2017"
    folder.mkdir(parents=True)
    splits = ["train"] * images_per_split[0] + ["restval"] * images_per_split[1] + ["test"] * images_per_split[2]
    images, annotations, entries = [], [], []
    for k, split in enumerate(splits):
        image_id = 100 + k
        name = f"{image_id:012d}.jpg"
        if image_id not in missing:
            Image.fromarray(np.full((8, 8, 3), 10 * k, np.uint8)).save(folder / name)
        images.append({"id": image_id, "file_name": name, "height": 8, "width": 8})
        for c in range(5):
            annotations.append({"id": 1000 * k + c, "image_id": image_id, "caption": f"A photo  number {k}, caption {c}."})
        entries.append({"cocoid": image_id, "split": split, "filename": name})
    captions = root / "captions_train2017.json"
    captions.write_text(json.dumps({"images": images, "annotations": annotations, "type": "captions", "info": {}, "licenses": []}))
    split_file = root / "dataset_coco.json"
    split_file.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return {"kind": "coco", "captions": [str(captions)], "images": [str(folder)], "split_file": str(split_file), "restval_as_train": True}


def test_shipped_captioning_configs_are_valid(digits_captioning, coco_captioning):
    for config in (digits_captioning, coco_captioning):
        validated(config)
    runs = captioning.runs(digits_captioning)
    # Ratio 0 once per seed, both arms at the four other ratios: 2 x (1 + 2 x 4).
    assert len(runs) == 18 and sum(r.source == layout.BASELINE_SOURCE for r in runs) == 2


def test_coco_captioning_plans_one_train_and_evaluate_per_arm_ratio_and_seed(tmp_path, coco_captioning):
    """The paper-scale config dry-runs anywhere: no COCO, no weights, no SD-COCO index yet."""
    counts = job_counts(run_snakemake("-n", "--configfile", str(REPO / "config" / "coco-captioning.yaml"), cwd=tmp_path).stdout)
    arms, ratios, seeds = len(coco_captioning["sources"]), len(coco_captioning["mixing"]["ratios"]), len(coco_captioning["seeds"])
    runs = seeds * (1 + arms * (ratios - 1))
    assert counts["train_captioner"] == counts["evaluate_captioner"] == runs == 10
    assert counts["mix_captions"] == 1 + arms * (ratios - 1)
    assert counts["index_coco_captions"] == counts["import_generated_pool"] == counts["score_meteor"] == counts["report_captioning"] == 1
    assert "generate_shard" not in counts and "fit_generator" not in counts


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda c: c["captioning"]["decoding"].update(beam_size=0), "beam_size"),
        (lambda c: c["captioning"]["captioner"].update(heads=3), "captioning.captioner.heads"),
        (lambda c: c["captioning"]["captioner"].update(arch="no_such_net"), "captioning.captioner.arch"),
        (lambda c: c["captioning"]["captioner"].update(kind="folder"), "captioning.captioner.folder"),
        (lambda c: c["captioning"]["captioner"].update(kind="folder", folder="/weights/vit-gpt2", presence_weight=1.0), "captioning.captioner.presence_weight"),
        (lambda c: c["captioning"]["captioner"].update(presence_weight=-1), "presence_weight"),
        (lambda c: c["sources"]["control"].update(real_split="train"), "sources.control.real_split"),
        (lambda c: c["sources"]["generated"].update(prompts={"style": "plain"}), "sources.generated.prompts"),
        (lambda c: c.update(models={"r": {"arch": "resnet10t"}}), "models"),
    ],
)
def test_bad_captioning_config_is_refused_naming_the_key(digits_captioning, change, key):
    change(digits_captioning)
    with pytest.raises((WorkflowError, config_checks.ConfigError, Exception)) as error:
        validated(digits_captioning)
    assert key.split(".")[-1] in str(error.value)
    if "." in key:
        assert key in str(error.value)


def test_beam_size_below_one_stops_snakemake_before_any_job(tmp_path, digits_captioning):
    digits_captioning["captioning"]["decoding"]["beam_size"] = 0
    path = write_yaml(tmp_path / "bad.yaml", digits_captioning)
    result = run_snakemake("--cores", "1", "--configfile", str(path), cwd=tmp_path, check=False)
    assert result.returncode != 0 and "beam_size" in result.stderr
    assert not (tmp_path / "results").exists()


def test_a_missing_caption_file_stops_the_run_before_any_job(tmp_path, coco_captioning):
    site = coco_site(tmp_path)
    coco_captioning["real"] = {**site, "captions": [str(tmp_path / "no-such-captions.json")]}
    coco_captioning["sources"]["sd_coco"]["index"] = str(tmp_path / "sd.parquet")
    pd.DataFrame({"path": [], "image_id": [], "caption_id": []}).to_parquet(tmp_path / "sd.parquet")
    coco_captioning["captioning"]["captioner"]["folder"] = str(tmp_path)
    path = write_yaml(tmp_path / "coco.yaml", coco_captioning)
    result = run_snakemake("--cores", "1", "--configfile", str(path), cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "real.captions[0]" in result.stderr and "no-such-captions.json" in result.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_a_split_file_naming_absent_images_is_refused_naming_the_key(tmp_path, coco_captioning):
    site = coco_site(tmp_path, missing=(101,))
    config = {**coco_captioning, "real": site}
    config["sources"]["sd_coco"]["index"] = site["split_file"]  # any existing file: only paths are checked first
    config["captioning"]["captioner"]["folder"] = str(tmp_path)
    problems = config_paths.missing_paths(config)
    assert len(problems) == 1 and problems[0].startswith("real.split_file:") and "not on disk" in problems[0]
    # An image the captions files do not have.
    entries = json.loads((tmp_path / "dataset_coco.json").read_text())
    entries["images"].append({"cocoid": 999, "split": "test"})
    (tmp_path / "dataset_coco.json").write_text(json.dumps(entries))
    problems = config_paths.missing_paths(config)
    assert any(p.startswith("real.split_file:") and "999" in p for p in problems)


def test_coco_index_follows_the_karpathy_split(tmp_path):
    site = coco_site(tmp_path)
    frame, counts = caption_data.index_coco(site, workers=2)
    # restval trains (restval_as_train), Karpathy's val would be validation.
    assert frame["split"].tolist() == ["train"] * 4 + ["test"] * 2
    assert counts["indexed"] == 6 and counts["skipped_unreadable"] == 0
    assert all(len(c) == 5 for c in frame["captions"]) and frame["captions"][0][0] == "A photo number 0, caption 0."
    # An unreadable image is skipped and counted, not fatal.
    (tmp_path / "train2017" / f"{101:012d}.jpg").write_bytes(b"not a jpeg")
    frame, counts = caption_data.index_coco(site, workers=2)
    assert counts["skipped_unreadable"] == 1 and 101 not in set(frame["image_id"])


def test_sd_coco_twin_is_the_first_kept_caption_of_each_training_image():
    generated = pd.DataFrame(
        {
            "path": ["g/a1.png", "g/a0.png", "g/b3.png", "g/c0.png"],
            "image_id": pd.array([1, 1, 2, 3], dtype="Int64"),
            "caption_id": pd.array([11, 10, 23, 30], dtype="Int64"),
        }
    )
    pool = caption_data.generated_pool(generated, train_ids={1, 2})
    assert pool.to_dict("list") == {"image_id": [1, 2], "path": ["g/a0.png", "g/b3.png"]}


def _train(n=20):
    return pd.DataFrame({"image_id": np.arange(1, n + 1), "path": [f"real/{i}.png" for i in range(1, n + 1)], "captions": [[f"c{i}"] * 5 for i in range(1, n + 1)]})


def test_caption_mix_replaces_nested_shares_shared_by_the_arms():
    train = _train()
    generated = pd.DataFrame({"image_id": train["image_id"], "path": [f"gen/{i}.png" for i in train["image_id"]]})
    control = pd.DataFrame({"image_id": train["image_id"], "path": [f"ctl/{i}.png" for i in train["image_id"]]})
    mixes = {r: caption_data.caption_mix(train, generated, r, 0, "generated") for r in (0.2, 0.4, 1.0)}
    for ratio, manifest in mixes.items():
        assert len(manifest) == 20 and (manifest["origin"] == "generated").sum() == round(ratio * 20)
        # Captions never change: a twin keeps its image's id and captions.
        assert manifest["captions"].map(lambda c: c[0]).tolist() == [f"c{i}" for i in range(1, 21)]
        replaced = manifest["origin"] == "generated"
        assert all(p == f"gen/{i}.png" for p, i in zip(manifest.loc[replaced, "path"], manifest.loc[replaced, "image_id"]))
    ids = {r: set(m.loc[m["origin"] == "generated", "image_id"]) for r, m in mixes.items()}
    assert ids[0.2] < ids[0.4] < ids[1.0]
    ctl = caption_data.caption_mix(train, control, 0.4, 0, "control")
    assert set(ctl.loc[ctl["origin"] == "control", "image_id"]) == ids[0.4]
    assert caption_data.caption_mix(train, generated, 0.4, 0, "generated").equals(mixes[0.4])
    with pytest.raises(ValueError, match="twins for 5 of 20"):
        caption_data.caption_mix(train, generated.head(5), 0.4, 0, "generated")
