"""Stage index_real: list the real dataset as a Parquet index.

The index has one row per usable image: ``path``, ``label``, ``class_name``,
``split`` (train, control, validation, reference, test), ``origin``/``source`` =
real and ``content_id``. Two kinds:

* ``digits``: scikit-learn's bundled digits, written once as small PNGs and split
  reproducibly (stratified) into train, control and test;
* ``image_folder``: ``root/<class folder>/<image>`` (ImageNet train/val by wnid,
  WebVision-style folders, ...), mapped through a class-index file so that every
  source shares one label space. The datasets' shipped layouts work too:
  ImageNet's flat validation folder with its labels file (``real.test_labels``)
  and WebVision's file lists (``sources.<name>.file_lists``); see
  contam.label_files.

Unreadable images are skipped and counted, never fatal, and so are listed images
whose file is missing (reason "missing").
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

from contam import label_files
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
MISSING = "missing"


# The split of items the fractions leave over.
UNUSED = "unused"


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Assign each item to a split, class by class, with exact per-class counts.

    Fractions may sum to less than 1; the rest of each class is marked "unused".
    """
    names = list(fractions)
    out = np.full(len(labels), UNUSED, dtype=object)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        order = rng(seed, "split", int(label)).permutation(members)
        bounds = np.round(np.cumsum([fractions[n] for n in names]) * len(members)).astype(int)
        start = 0
        for name, stop in zip(names, bounds):
            out[order[start:stop]] = name
            start = stop
    return out


def digits_splits(labels: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """The split of each bundled digit (``stratified_split`` in the fixed order of DIGIT_SPLITS)."""
    # A fixed order of splits: the same shares give the same split whatever order the config lists them in.
    return stratified_split(labels, {name: fractions[name] for name in DIGIT_SPLITS if name in fractions}, seed)


# scikit-learn's digits: 8x8 images of grey levels 0..16.
DIGIT_SIDE = 8
DIGIT_LEVELS = 16


def digit_image(levels: np.ndarray, image_size: int) -> Image.Image:
    """An 8x8 digit of levels 0..16 as this world stores it: grey, upscaled bilinearly, RGB."""
    gray = Image.fromarray((levels * (255.0 / DIGIT_LEVELS)).round().astype(np.uint8))
    return gray.resize((image_size, image_size), Image.BILINEAR).convert("RGB")


def stored_like_a_digit(image: np.ndarray) -> np.ndarray:
    """Any HxWx3 uint8 image made the way the real digits are: area-averaged to 8x8 grey,
    rounded to the 17 levels, and upscaled back by :func:`digit_image`.

    A generated digit stored this way shares the real ones' size, grey channels
    and value grid (the interpolation of a 17-level 8x8 image), so only its
    content can tell it apart (remedies' format audit).
    """
    grey = Image.fromarray(image.astype(np.float32).mean(axis=-1), mode="F").resize((DIGIT_SIDE, DIGIT_SIDE), Image.BOX)
    levels = np.clip(np.round(np.asarray(grey) * (DIGIT_LEVELS / 255.0)), 0, DIGIT_LEVELS)
    return np.asarray(digit_image(levels, image.shape[0]))


def export_digits(out_dir: str | os.PathLike, image_size: int, fractions: dict[str, float], seed: int) -> pd.DataFrame:
    """Write the 1,797 digits as RGB PNGs and return their index."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    splits = digits_splits(digits.target, fractions, seed)
    rows = []
    for i, (pixels, label, split) in enumerate(tqdm(list(zip(digits.images, digits.target, splits)), desc="digits", mininterval=2)):
        image = digit_image(pixels, image_size)
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


def _extensions(extensions: list[str]) -> set[str]:
    return {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}


def _list_folder(folder: Path, extensions: set[str]) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)


def _image_problem(path: Path) -> str | None:
    """None for a usable image, else why it is skipped."""
    if not path.is_file():
        return MISSING
    return check_image(path)


def _checked_index(files: list[tuple[Path, int, str]], split: str, source: str, origin: str, workers: int) -> tuple[pd.DataFrame, dict]:
    """The index rows of ``(path, label, class name)`` items that decode, and the skip counts."""
    with ThreadPoolExecutor(workers) as pool:
        problems = list(tqdm(pool.map(lambda item: _image_problem(item[0]), files), total=len(files), desc=f"check {split}", mininterval=5))
    skipped = [(str(path), why) for (path, _, _), why in zip(files, problems) if why]
    for path, why in skipped[:20]:
        log.warning("skipping image %s (%s)", path, why)
    rows = [(str(path), int(label), name) for (path, label, name), why in zip(files, problems) if not why]
    frame = pd.DataFrame(rows, columns=["path", "label", "class_name"])
    frame["content_id"] = content_ids(frame["path"])
    frame["split"] = split
    frame["origin"] = origin
    frame["source"] = source
    counts = {
        "split": split,
        "found": len(files),
        "indexed": len(rows),
        "skipped": len(skipped),
        "missing": sum(why == MISSING for _, why in skipped),
        "skipped_examples": skipped[:20],
    }
    return frame[INDEX_COLUMNS].sort_values("path", ignore_index=True), counts


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
    exts = _extensions(extensions)
    known = set(classes["folder"])
    unknown = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in known) if root.is_dir() else []
    with ThreadPoolExecutor(workers) as pool:
        listings = list(pool.map(lambda f: _list_folder(root / f, exts), classes["folder"]))
    files = [(path, label, first_name(names)) for listing, label, names in zip(listings, classes["label"], classes["names"]) for path in listing]
    frame, counts = _checked_index(files, split, source, origin, workers)
    counts.update(root=str(root), unknown_folders=unknown, empty_classes=int(sum(1 for listing in listings if not listing)))
    return frame, counts


def index_file_lists(
    root: str | os.PathLike,
    file_lists: list[str],
    classes: pd.DataFrame,
    split: str,
    workers: int = 8,
    source: str = BASELINE_SOURCE,
    origin: str = REAL_ORIGIN,
) -> tuple[pd.DataFrame, dict]:
    """Index the images that file lists name, with the lists' labels (WebVision 1.0 as it ships).

    Each list (relative to ``root`` or absolute) holds lines ``<path relative to
    root> <label>``. Where ``root`` holds WebVision's ``info/synsets.txt`` (the
    wnid of each label), labels are mapped through its wnids; otherwise they are
    taken in the class index's order. A label outside the range or a malformed
    line raises ValueError naming the file and line; a listed file that
    is absent is skipped and counted as "missing", an undecodable one as
    unreadable, and a path listed a second time is skipped as "listed twice".
    """
    names = [first_name(n) for n in classes["names"]]
    synsets = label_files.resolve(root, label_files.WEBVISION_SYNSETS)
    # Labels go through the dataset's own wnid list where it ships one.
    to_class = label_files.read_label_wnids(synsets, list(classes["folder"])) if synsets.is_file() else list(range(len(classes)))
    files, seen, duplicates = [], set(), []
    for file_list in file_lists:
        path = label_files.resolve(root, file_list)
        for relative, listed, line in label_files.read_file_list(path, len(to_class)):
            label = to_class[listed]
            image = label_files.resolve(root, relative)
            if image in seen:
                duplicates.append((str(image), f"listed twice (again at {path}, line {line})"))
                continue
            seen.add(image)
            files.append((image, label, names[label]))
    frame, counts = _checked_index(files, split, source, origin, workers)
    listed = {label for _, label, _ in files}
    counts.update(
        root=str(root),
        file_lists=[str(label_files.resolve(root, f)) for f in file_lists],
        labels_through=str(synsets) if synsets.is_file() else "the class index's order",
        found=len(files) + len(duplicates),
        skipped=counts["skipped"] + len(duplicates),
        listed_twice=len(duplicates),
        skipped_examples=(counts["skipped_examples"] + duplicates)[:20],
        empty_classes=int(sum(label not in listed for label in classes["label"])),
    )
    return frame, counts


def index_flat_folder(
    folder: str | os.PathLike,
    test_labels: str | os.PathLike,
    classes: pd.DataFrame,
    split: str,
    extensions: list[str],
    meta_path: str | os.PathLike | None = None,
    workers: int = 8,
) -> tuple[pd.DataFrame, dict]:
    """Index a flat folder of images (ImageNet val as distributed) through its labels file.

    ``test_labels`` is the devkit's ground truth (with ``meta_path``, the
    devkit's meta.mat) or Kaggle's LOC_val_solution.csv; each names a wnid per
    image, mapped to the class index's label through the class folder (the
    devkit's own class numbers are never labels).

    * An image in the folder that the labels file does not name raises
      ValueError: the labels belong to another set of images, and dropping those
      images would silently change what test accuracy measures.
    * An image named with a wnid that is not in the class index is left out
      (a class index of a subset of ImageNet), like a class folder that is not
      in the class index: its wnids are listed in ``unknown_classes`` and its
      images counted in ``unknown_class_images``. If no image is of a known
      class, the labels and the class index cannot belong together: ValueError.
    * A labelled image that is absent is skipped and counted as "missing", an
      undecodable one as unreadable, as in every index.
    """
    folder = Path(folder)
    images = _list_folder(folder, _extensions(extensions))
    if not images:
        raise ValueError(f"real.test_root: no images directly in {folder}; with real.test_labels it is the flat folder as distributed (leave test_labels out for class sub-folders)")
    labels = label_files.read_test_labels(test_labels, meta_path)
    unlabelled = [p.name for p in images if p.stem not in labels]
    if unlabelled:
        raise ValueError(f"real.test_labels: {test_labels} has no label for {len(unlabelled)} images of {folder}, e.g. {', '.join(unlabelled[:3])}")
    by_folder = {folder_name: (int(label), first_name(names)) for folder_name, label, names in zip(classes["folder"], classes["label"], classes["names"])}
    unknown = sorted({wnid for wnid in labels.values() if wnid not in by_folder})
    if len(unknown) == len(set(labels.values())):
        raise ValueError(f"real.test_labels: none of the classes of {test_labels} is in real.class_index (e.g. {unknown[0]})")
    on_disk = {p.stem: p for p in images}
    files = [(on_disk.get(name, folder / name), *by_folder[wnid]) for name, wnid in sorted(labels.items()) if wnid in by_folder]
    frame, counts = _checked_index(files, split, BASELINE_SOURCE, REAL_ORIGIN, workers)
    found = set(frame["label"])
    counts.update(
        root=str(folder),
        test_labels=str(test_labels),
        unknown_classes=unknown,
        unknown_class_images=sum(wnid not in by_folder for wnid in labels.values()),
        empty_classes=int(sum(label not in found for label in classes["label"])),
    )
    return frame, counts


def index_real_folders(real: dict, workers: int = 8) -> tuple[pd.DataFrame, dict]:
    """The train and test splits of an ``image_folder`` dataset, and their counts by split.

    The test split is ``test_root/<class folder>/<image>``, or with
    ``real.test_labels`` the flat folder as distributed.
    """
    classes = class_table(real)
    train, train_counts = index_image_folder(real["root"], classes, "train", real["extensions"], workers=workers)
    if real.get("test_labels"):
        test, test_counts = index_flat_folder(real["test_root"], real["test_labels"], classes, "test", real["extensions"], real.get("test_labels_meta"), workers=workers)
    else:
        test, test_counts = index_image_folder(real["test_root"], classes, "test", real["extensions"], workers=workers)
    return pd.concat([train, test], ignore_index=True), {"train": train_counts, "test": test_counts}


def class_table(real_config: dict) -> pd.DataFrame:
    """``label``, ``folder`` and ``names`` of the real dataset's classes."""
    if real_config["kind"] == "digits":
        return pd.DataFrame({"label": range(len(DIGIT_NAMES)), "folder": [str(i) for i in range(len(DIGIT_NAMES))], "names": DIGIT_NAMES})
    return read_class_index(real_config["class_index"])
