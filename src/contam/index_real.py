"""Stage index_real: list the real dataset as a Parquet index.

The index has one row per usable image: ``path``, ``label``, ``class_name``,
``split`` (train, control, validation, reference, test), ``origin``/``source`` =
real and ``content_id``. Two kinds:

* ``digits``: scikit-learn's bundled digits, written once as small PNGs and split
  reproducibly (stratified) into train, control and test;
* ``image_folder``: ``root/<class folder>/<image>`` (ImageNet train/val by wnid,
  WebVision-style folders, ...), mapped through a class-index file so that every
  source shares one label space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from contam.config import DIGIT_NAMES
from contam.identity import content_ids
from contam.images import check_image
from contam.layout import BASELINE_SOURCE
from contam.mix import REAL_ORIGIN
from contam.seeds import rng

log = logging.getLogger(__name__)

DIGIT_SPLITS = ("train", "control", "validation", "reference", "test")
# content_id tells images apart that share a path (a file rewritten in place):
# a hash of the bytes where this stage writes the file, else size and mtime.
INDEX_COLUMNS = ["path", "label", "class_name", "split", "origin", "source", "content_id"]


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Assign each item to a split, class by class, with exact per-class counts.

    Fractions may sum to less than 1; the rest of each class is marked "unused".
    """
    names = list(fractions)
    out = np.full(len(labels), "unused", dtype=object)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        order = rng(seed, "split", int(label)).permutation(members)
        bounds = np.round(np.cumsum([fractions[n] for n in names]) * len(members)).astype(int)
        start = 0
        for name, stop in zip(names, bounds):
            out[order[start:stop]] = name
            start = stop
    return out


def export_digits(out_dir: str | os.PathLike, image_size: int, fractions: dict[str, float], seed: int) -> pd.DataFrame:
    """Write the 1,797 digits as RGB PNGs and return their index."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # A fixed order of splits: the same shares give the same split whatever order the config lists them in.
    fractions = {name: fractions[name] for name in DIGIT_SPLITS if name in fractions}
    splits = stratified_split(digits.target, fractions, seed)
    rows = []
    for i, (pixels, label, split) in enumerate(tqdm(list(zip(digits.images, digits.target, splits)), desc="digits", mininterval=2)):
        gray = Image.fromarray((pixels * (255.0 / 16.0)).round().astype(np.uint8))
        image = gray.resize((image_size, image_size), Image.BILINEAR).convert("RGB")
        path = Path(out_dir) / split / str(int(label)) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        image.save(tmp, format="PNG")
        content_id = hashlib.blake2b(tmp.read_bytes(), digest_size=8).hexdigest()
        os.replace(tmp, path)
        rows.append((str(path), int(label), DIGIT_NAMES[int(label)], split, content_id))
    frame = pd.DataFrame(rows, columns=["path", "label", "class_name", "split", "content_id"])
    frame["origin"] = REAL_ORIGIN
    frame["source"] = BASELINE_SOURCE
    return frame[INDEX_COLUMNS].sort_values("path", ignore_index=True)


def read_class_index(path: str | os.PathLike) -> pd.DataFrame:
    """Read a class index: ``label``, ``folder`` and ``names`` (comma-separated synonyms).

    Accepts ImageNet's JSON (``{"0": ["n01440764", "tench, Tinca tinca"], ...}``)
    or text lines ``folder<TAB or space>names``, whose order gives the labels.
    """
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix.lower() == ".json":
        data = json.loads(text)
        rows = [(int(k), v[0], v[1]) for k, v in data.items()]
    else:
        rows = []
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            folder, _, names = line.strip().partition("\t") if "\t" in line else line.strip().partition(" ")
            rows.append((len(rows), folder.strip(), names.strip() or folder.strip()))
    frame = pd.DataFrame(rows, columns=["label", "folder", "names"]).sort_values("label", ignore_index=True)
    if frame["folder"].duplicated().any():
        raise ValueError(f"{path}: class folder {frame['folder'][frame['folder'].duplicated()].iloc[0]!r} is listed twice")
    if list(frame["label"]) != list(range(len(frame))):
        raise ValueError(f"{path}: labels must be 0..{len(frame) - 1} without gaps")
    return frame


def first_name(names: str) -> str:
    return names.split(",")[0].strip()


def _list_folder(folder: Path, extensions: set[str]) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)


def index_image_folder(
    root: str | os.PathLike,
    classes: pd.DataFrame,
    split: str,
    extensions: list[str],
    workers: int = 8,
    source: str = BASELINE_SOURCE,
    origin: str = REAL_ORIGIN,
) -> tuple[pd.DataFrame, dict]:
    """Index ``root/<class folder>/<image>``; undecodable images are skipped and counted.

    Returns the index and counts: images found, skipped (with reasons), folders
    that are not in the class index.
    """
    root = Path(root)
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    known = set(classes["folder"])
    unknown = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in known) if root.is_dir() else []
    with ThreadPoolExecutor(workers) as pool:
        listings = list(pool.map(lambda f: _list_folder(root / f, exts), classes["folder"]))
    files = [(path, label, first_name(names)) for listing, label, names in zip(listings, classes["label"], classes["names"]) for path in listing]
    with ThreadPoolExecutor(workers) as pool:
        problems = list(tqdm(pool.map(lambda item: check_image(item[0]), files), total=len(files), desc=f"check {split}", mininterval=5))
    skipped = [(str(path), why) for (path, _, _), why in zip(files, problems) if why]
    for path, why in skipped[:20]:
        log.warning("skipping unreadable image %s (%s)", path, why)
    rows = [(str(path), int(label), name) for (path, label, name), why in zip(files, problems) if not why]
    frame = pd.DataFrame(rows, columns=["path", "label", "class_name"])
    frame["content_id"] = content_ids(frame["path"])
    frame["split"] = split
    frame["origin"] = origin
    frame["source"] = source
    counts = {
        "split": split,
        "root": str(root),
        "found": len(files),
        "indexed": len(rows),
        "skipped": len(skipped),
        "skipped_examples": skipped[:20],
        "unknown_folders": unknown,
        "empty_classes": int(sum(1 for listing in listings if not listing)),
    }
    return frame[INDEX_COLUMNS].sort_values("path", ignore_index=True), counts


def class_table(real_config: dict) -> pd.DataFrame:
    """``label``, ``folder`` and ``names`` of the real dataset's classes."""
    if real_config["kind"] == "digits":
        return pd.DataFrame({"label": range(len(DIGIT_NAMES)), "folder": [str(i) for i in range(len(DIGIT_NAMES))], "names": DIGIT_NAMES})
    return read_class_index(real_config["class_index"])
