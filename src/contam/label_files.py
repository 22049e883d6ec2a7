"""Label files that ship with the paper's datasets, read without touching images.

* WebVision 1.0's file lists (``info/train_filelist_google.txt``,
  ``info/train_filelist_flickr.txt``): lines ``<path relative to the root>
  <label>``, labels 0..999, whose wnids ``info/synsets.txt`` lists in order;
* ImageNet's validation labels for the flat ``val/ILSVRC2012_val_00000001.JPEG``
  folder as distributed: the ILSVRC2012 devkit's
  ``ILSVRC2012_validation_ground_truth.txt`` (line i holds image i's
  ILSVRC2012_ID, which the devkit's ``meta.mat`` maps to a wnid) or Kaggle's
  ``LOC_val_solution.csv`` (``ImageId,PredictionString``, whose first token is
  the wnid).

Only the standard library is imported at module level: the config checks use
``test_labels_format`` every time the Snakefile is parsed.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

DEVKIT = "devkit"
KAGGLE = "kaggle"
# The format is told by the file's suffix, so that a config check can name a
# missing test_labels_meta before the data exist (dry runs plan anywhere).
FORMAT_BY_SUFFIX = {".txt": DEVKIT, ".csv": KAGGLE}
KAGGLE_HEADER = ["ImageId", "PredictionString"]
KNOWN_FORMATS = "the devkit's ILSVRC2012_validation_ground_truth.txt (.txt, with real.test_labels_meta) or Kaggle's LOC_val_solution.csv (.csv)"


def test_labels_format(path: str | os.PathLike) -> str | None:
    """``devkit``, ``kaggle`` or None (unknown), from the file name alone."""
    return FORMAT_BY_SUFFIX.get(Path(path).suffix.lower())


def resolve(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """A path relative to a dataset root (an absolute path stays as it is)."""
    return Path(root).expanduser() / Path(path).expanduser()


def read_file_list(path: str | os.PathLike, num_classes: int) -> list[tuple[str, int, int]]:
    """``(relative path, label, line number)`` per listed image.

    A line is ``<relative path> <label>``; the path may hold spaces, the label is
    the last field. A malformed line or a label outside 0..num_classes-1 raises
    ValueError naming the file and the line: the list and the labels it is read
    against disagree, and every image of the list would get a wrong label.
    """
    entries = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").rsplit(None, 1)
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise ValueError(f"{path}, line {number}: expected '<relative path> <label>', got {line.strip()!r}")
            label = int(fields[1])
            if not 0 <= label < num_classes:
                raise ValueError(f"{path}, line {number}: label {label} is outside 0..{num_classes - 1}, the labels the list can name")
            entries.append((fields[0].strip(), label, number))
    return entries


# WebVision 1.0 ships the wnid of each of its labels, one per line in label order.
WEBVISION_SYNSETS = "info/synsets.txt"


def read_label_wnids(path: str | os.PathLike, folders: list[str]) -> list[int]:
    """The class index's label for each label of a dataset's own ``<wnid> <words>`` list.

    WebVision's labels are believed to follow ImageNet's order, but its
    ``info/synsets.txt`` says so: going through the wnids makes the mapping
    right whatever the order, and a wnid outside the class index raises
    ValueError naming the file and line.
    """
    label_of = {folder: label for label, folder in enumerate(folders)}
    mapping = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            wnid = line.split(maxsplit=1)[0] if line.strip() else ""
            if not wnid:
                continue
            if wnid not in label_of:
                raise ValueError(f"{path}, line {number}: wnid {wnid!r} is not a class folder of real.class_index")
            mapping.append(label_of[wnid])
    return mapping


def read_devkit_synsets(meta_path: str | os.PathLike) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid from the devkit's ``data/meta.mat``.

    The devkit numbers its 1,000 classes in its own order (ID 1 is n02119789,
    kit fox), not the sorted-wnid order of imagenet_class_index.json, so its IDs
    are never used as labels: they go through the wnid.
    """
    from scipy.io import loadmat

    try:
        synsets = loadmat(meta_path, squeeze_me=True)["synsets"]
        ids, wnids = synsets["ILSVRC2012_ID"], synsets["WNID"]
    except (KeyError, ValueError) as error:
        raise ValueError(f"real.test_labels_meta: {meta_path} is not the devkit's meta.mat (a 'synsets' struct with fields ILSVRC2012_ID and WNID): {error}") from error
    return {int(i): str(w) for i, w in zip(ids.ravel(), wnids.ravel())}


def read_devkit_ground_truth(path: str | os.PathLike, synsets: dict[int, str]) -> dict[str, str]:
    """Image name (``ILSVRC2012_val_00000001``) -> wnid; line i is image i."""
    labels = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            value = line.strip()
            if not value.isdigit() or int(value) not in synsets:
                raise ValueError(f"real.test_labels: {path}, line {number}: expected an ILSVRC2012_ID of real.test_labels_meta, got {value!r}")
            labels[f"ILSVRC2012_val_{number:08d}"] = synsets[int(value)]
    return labels


def read_kaggle_solution(path: str | os.PathLike) -> dict[str, str]:
    """Image name -> wnid from ``LOC_val_solution.csv`` (the first token of PredictionString)."""
    labels = {}
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if [h.strip() for h in header or []] != KAGGLE_HEADER:
            raise ValueError(f"real.test_labels: {path} does not start with the header {','.join(KAGGLE_HEADER)} of Kaggle's LOC_val_solution.csv")
        for number, row in enumerate(rows, start=2):
            if not row:
                continue
            tokens = row[1].split() if len(row) == 2 else []
            if not tokens:
                raise ValueError(f"real.test_labels: {path}, line {number}: expected 'ImageId,<wnid> ...', got {','.join(row)!r}")
            labels[row[0].strip()] = tokens[0]
    return labels


def read_test_labels(path: str | os.PathLike, meta_path: str | os.PathLike | None = None) -> dict[str, str]:
    """Image name (file name without suffix) -> wnid, in either shipped format."""
    kind = test_labels_format(path)
    if kind == DEVKIT:
        if meta_path is None:
            raise ValueError(f"real.test_labels_meta: required to read the devkit's ground truth {path}")
        return read_devkit_ground_truth(path, read_devkit_synsets(meta_path))
    if kind == KAGGLE:
        return read_kaggle_solution(path)
    raise ValueError(f"real.test_labels: unknown labels format of {path}; expected {KNOWN_FORMATS}")
