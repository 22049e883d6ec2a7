"""Stages of the captioning study's data: the captioned images, each arm's twins, the mixes.

A captioned index lists every real image with its split and reference captions
(``image_id, split, path, captions``). It comes from the embedded world of digit
scenes (:mod:`contam.scenes`, rule build_scenes) or from COCO with a
Karpathy-style split file (:func:`index_coco`, rule index_coco_captions).

An arm's *pool* holds one twin per training image: an image with the training
image's id (so its captions) and other pixels. A generated twin is made from the
image's own caption (SD-COCO), or, in the digits world, from the same scene with
glyphs the generator drew; a control twin is the same scene from held-out real
glyphs. :func:`caption_mix` replaces a share of the training images by their
twins, so the captions (and the dataset's size) never change, only pixels.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from contam.seeds import rng

log = logging.getLogger(__name__)

CAPTIONED_COLUMNS = ["image_id", "split", "path", "captions"]
MANIFEST_COLUMNS = ["image_id", "path", "origin", "captions"]
POOL_COLUMNS = ["image_id", "path"]
# Karpathy's split names, as this workflow names its splits.
KARPATHY_SPLITS = {"train": "train", "restval": "restval", "val": "validation", "test": "test"}


# ---- COCO with a Karpathy-style split ----------------------------------------------


def read_coco_captions(captions_files: list[str], image_dirs: list[str]) -> dict[int, tuple[str, list[str]]]:
    """image id -> (image path, captions in annotation-id order), over every captions file."""
    from pycocotools.coco import COCO

    images: dict[int, tuple[str, list[str]]] = {}
    for captions_file, folder in zip(captions_files, image_dirs):
        coco = COCO(captions_file)
        for image_id, image in coco.imgs.items():
            annotations = sorted(coco.imgToAnns.get(image_id, []), key=lambda a: a["id"])
            captions = [" ".join(a["caption"].split()) for a in annotations]
            images[int(image_id)] = (os.path.join(folder, image["file_name"]), captions)
    return images


def read_split_file(split_file: str) -> dict[int, str]:
    """cocoid -> Karpathy split, from dataset_coco.json (``{"images": [{"cocoid", "split"}]}``)."""
    with open(split_file) as handle:
        data = json.load(handle)
    splits = {}
    for entry in data.get("images", []):
        if "cocoid" not in entry or entry.get("split") not in KARPATHY_SPLITS:
            raise ValueError(f"real.split_file: {split_file} has an entry without cocoid or with an unknown split ({entry.get('split')!r}); expected {sorted(KARPATHY_SPLITS)}")
        splits[int(entry["cocoid"])] = entry["split"]
    if not splits:
        raise ValueError(f"real.split_file: {split_file} lists no images")
    return splits


def split_file_problems(real: dict) -> list[str]:
    """What the split file names that is not there: images absent from the captions files, or from disk.

    Checked before the first job runs (the Snakefile's onstart), so a wrong split
    file fails at once, naming its key, instead of in a job hours later.
    """
    try:
        splits = read_split_file(real["split_file"])
    except (ValueError, json.JSONDecodeError) as error:
        return [str(error) if str(error).startswith("real.") else f"real.split_file: {real['split_file']} is not a split file: {error}"]
    images = read_coco_captions(real["captions"], real["images"])
    problems = []
    absent = sorted(set(splits) - set(images))
    if absent:
        problems.append(f"real.split_file: {len(absent)} image(s) it names are in none of real.captions, e.g. cocoid {absent[:5]}")
    on_disk: dict[str, set[str]] = {}
    missing = []
    for image_id in sorted(set(splits) & set(images)):
        path = images[image_id][0]
        folder, name = os.path.split(path)
        if folder not in on_disk:
            on_disk[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        if name not in on_disk[folder]:
            missing.append(path)
    if missing:
        problems.append(f"real.split_file: {len(missing)} image(s) it names are not on disk (real.images), e.g. {missing[:3]}")
    return problems


def index_coco(real: dict, workers: int = 8) -> tuple[pd.DataFrame, dict]:
    """The captioned index of COCO images in the split file; unreadable images are skipped and counted."""
    from contam.images import check_image

    splits = read_split_file(real["split_file"])
    images = read_coco_captions(real["captions"], real["images"])
    rows = []
    for image_id in sorted(splits):
        split = KARPATHY_SPLITS[splits[image_id]]
        if split == "restval" and real.get("restval_as_train", True):
            split = "train"
        path, captions = images[image_id]
        rows.append((image_id, split, path, captions))
    frame = pd.DataFrame(rows, columns=CAPTIONED_COLUMNS)
    with ThreadPoolExecutor(workers) as pool:
        problems = list(pool.map(check_image, frame["path"]))
    bad = [p is not None for p in problems]
    for path, problem in zip(frame["path"][bad], np.array(problems, dtype=object)[bad]):
        log.warning("skipping %s: %s", path, problem)
    no_caption = frame["captions"].map(len) == 0
    frame = frame[~np.array(bad) & ~no_caption.to_numpy()].reset_index(drop=True)
    counts = {
        "indexed": len(frame),
        "skipped_unreadable": int(sum(bad)),
        "skipped_without_captions": int(no_caption.sum()),
        "per_split": frame["split"].value_counts().sort_index().to_dict(),
    }
    return frame, counts


def generated_pool(generated_index: pd.DataFrame, train_ids: set[int]) -> pd.DataFrame:
    """SD-COCO's twin of each training image: the image generated from its first caption (lowest caption id) that was kept.

    One image per caption was generated; any of them shows that image's scene as
    its own caption describes it, so the first one kept is taken (a caption
    whose image the safety checker dropped is passed over).
    """
    rows = generated_index.dropna(subset=["image_id", "caption_id"])
    rows = rows[rows["image_id"].astype("int64").isin(train_ids)]
    first = rows.sort_values(["image_id", "caption_id"]).drop_duplicates("image_id")
    return pd.DataFrame({"image_id": first["image_id"].astype("int64").to_numpy(), "path": first["path"].to_numpy()}).reset_index(drop=True)


def generated_twins(train_scenes: pd.DataFrame, glyphs: pd.DataFrame) -> pd.DataFrame:
    """The training scenes recomposed with the generator's glyphs (rows of contam.scenes.glyph_prompts:
    image_id = the scene, caption_id = the slot, 0 for glyph a and 1 for glyph b).

    A scene whose glyph the generator did not keep is left out (and so has no twin).
    """
    drawn = glyphs.dropna(subset=["image_id", "caption_id"])
    by_slot = {
        slot: dict(zip(rows["image_id"].astype("int64"), rows["path"].astype(str)))
        for slot, rows in ((slot, drawn[drawn["caption_id"].astype("int64") == slot]) for slot in (0, 1))
    }
    twins = train_scenes.drop(columns=[c for c in ("path",) if c in train_scenes]).copy()
    ids = twins["image_id"].astype("int64")
    twins["glyph_a"] = ids.map(by_slot[0])
    twins["glyph_b"] = ids.map(by_slot[1])
    return twins.dropna(subset=["glyph_a", "glyph_b"]).reset_index(drop=True)


# ---- the mixes ------------------------------------------------------------------------


def caption_mix(train: pd.DataFrame, pool: pd.DataFrame | None, ratio: float, seed: int, origin: str) -> pd.DataFrame:
    """The training images with a share ``ratio`` of them replaced by their twins in ``pool``.

    The order in which images are replaced is one seeded permutation of the
    training ids, shared by every arm and every ratio: the images replaced at
    0.4 are also replaced at 0.8, and the generated and control arms replace the
    same images, so their contrast is paired image by image. Only images with a
    twin can be replaced; too few twins is an error, never a smaller share.
    """
    train = train.sort_values("image_id").reset_index(drop=True)
    manifest = pd.DataFrame(
        {
            "image_id": train["image_id"].astype("int64"),
            "path": train["path"].astype(str),
            "origin": "real",
            "captions": train["captions"],
        }
    )
    wanted = int(round(float(ratio) * len(train)))
    if wanted == 0:
        return manifest[MANIFEST_COLUMNS]
    if pool is None:
        raise ValueError(f"ratio {ratio} replaces {wanted} images but the arm has no pool of twins")
    twins = dict(zip(pool["image_id"].astype("int64"), pool["path"].astype(str)))
    order = rng(seed, "caption-mix").permutation(manifest["image_id"].to_numpy())
    eligible = [int(i) for i in order if int(i) in twins]
    if len(eligible) < wanted:
        raise ValueError(f"the arm has twins for {len(eligible)} of {len(train)} training images; ratio {ratio} needs {wanted}")
    replaced = set(eligible[:wanted])
    chosen = manifest["image_id"].isin(replaced).to_numpy()
    manifest.loc[chosen, "path"] = [twins[int(i)] for i in manifest.loc[chosen, "image_id"]]
    manifest.loc[chosen, "origin"] = origin
    return manifest[MANIFEST_COLUMNS]


def references(captioned: pd.DataFrame, split: str = "test") -> dict[int, list[str]]:
    """image id -> reference captions of one split."""
    rows = captioned[captioned["split"] == split]
    return {int(i): [str(c) for c in caps] for i, caps in zip(rows["image_id"], rows["captions"])}

