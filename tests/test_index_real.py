import json

import numpy as np
import pandas as pd
from PIL import Image

from contam import index_real


def test_stratified_split_exact_and_deterministic():
    labels = np.repeat(np.arange(4), [10, 20, 31, 7])
    fractions = {"train": 0.4, "control": 0.4, "test": 0.2}
    a = index_real.stratified_split(labels, fractions, seed=0)
    b = index_real.stratified_split(labels, fractions, seed=0)
    assert (a == b).all()
    for label, size in zip(range(4), [10, 20, 31, 7]):
        members = a[labels == label]
        assert (members == "train").sum() == round(0.4 * size)
    assert set(a) == {"train", "control", "test"}
    assert (index_real.stratified_split(labels, {"train": 0.5}, seed=0) == "unused").sum() == 5 + 10 + 15 + 3


def test_export_digits(tmp_path):
    frame = index_real.export_digits(tmp_path / "img", 16, {"train": 0.36, "control": 0.39, "test": 0.25}, seed=0)
    assert len(frame) == 1797
    assert list(frame.columns) == index_real.INDEX_COLUMNS
    assert frame.groupby("split").size().to_dict() == {"control": 699, "test": 450, "train": 648}
    # Control holds at least as many images of each class as train, so a
    # control arm can replace 100 % of the training images.
    per = frame.groupby(["split", "label"]).size()
    assert (per["control"] >= per["train"]).all()
    image = Image.open(frame["path"].iloc[0])
    assert image.size == (16, 16) and image.mode == "RGB"
    assert frame["class_name"].iloc[0] in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def test_class_index_formats(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps({"1": ["n02", "goldfish, Carassius auratus"], "0": ["n01", "tench, Tinca tinca"]}))
    table = index_real.read_class_index(tmp_path / "classes.json")
    assert list(table["folder"]) == ["n01", "n02"] and list(table["label"]) == [0, 1]
    (tmp_path / "classes.txt").write_text("# comment\nn01\ttench, Tinca tinca\nn02 goldfish\n")
    table = index_real.read_class_index(tmp_path / "classes.txt")
    assert list(table["names"]) == ["tench, Tinca tinca", "goldfish"]


def test_image_folder_handles_odd_and_bad_images(tmp_path, make_image_folder):
    root = make_image_folder("train", ["n01", "n02"], per_class=2)
    Image.new("L", (10, 10), 128).save(root / "n01" / "gray.png")
    Image.new("CMYK", (10, 10), (0, 50, 100, 0)).save(root / "n01" / "cmyk.jpg")
    Image.new("RGB", (10, 10), "red").save(root / "n02" / "UPPER.JPEG")
    Image.new("P", (10, 10)).save(root / "n02" / "palette.png")
    good = root / "n02" / "img0.png"
    (root / "n02" / "truncated.png").write_bytes(good.read_bytes()[:40])
    (root / "n02" / "notes.txt").write_text("not an image")
    (root / "n02" / "empty.jpg").write_bytes(b"")
    (root / "extra_class").mkdir()
    classes = pd.DataFrame({"label": [0, 1, 2], "folder": ["n01", "n02", "n03"], "names": ["tench", "goldfish", "shark"]})
    frame, counts = index_real.index_image_folder(root, classes, "train", [".png", ".jpg", ".jpeg"])
    names = {p.split("/")[-1] for p in frame["path"]}
    assert {"gray.png", "cmyk.jpg", "UPPER.JPEG", "palette.png"} <= names
    assert "truncated.png" not in names and "empty.jpg" not in names and "notes.txt" not in names
    assert counts["found"] == 10 and counts["indexed"] == 8 and counts["skipped"] == 2
    assert counts["unknown_folders"] == ["extra_class"]
    assert counts["empty_classes"] == 1
    assert set(frame["label"]) == {0, 1}
    assert frame["path"].is_monotonic_increasing
