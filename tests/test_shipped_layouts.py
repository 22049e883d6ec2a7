"""The paper's data in the layouts they ship in: WebVision 1.0's file lists and
ImageNet's flat validation folder with the devkit's or Kaggle's labels.

The fake trees copy the shipped names and file formats exactly; the devkit's
class IDs deliberately differ from the class index's order, so reading an ID
as a label would fail the tests.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, run_snakemake, validated, write_yaml
from PIL import Image
from scipy.io import savemat

from contam import config_checks, config_paths, index_real, label_files
from contam.io import read_parquet

# imagenet_class_index.json's order: sorted wnids.
CLASS_INDEX = {"0": ["n01440764", "tench, Tinca tinca"], "1": ["n01443537", "goldfish, Carassius auratus"], "2": ["n01484850", "great white shark, white shark"]}
# The devkit's own numbering: ID 1 is the shark, ID 2 the tench, ID 3 the goldfish;
# ID 4 is a parent synset and ID 5 a leaf outside the class index.
DEVKIT_SYNSETS = [(1, "n01484850", 0), (2, "n01440764", 0), (3, "n01443537", 0), (4, "n01440000", 2), (5, "n09999999", 0)]
# Image i of the validation folder: its devkit ID (line i of the ground truth).
GROUND_TRUTH = [2, 1, 3, 1, 5, 2]
VAL = "ILSVRC2012_val_{:08d}.JPEG"


def write_jpeg(path: Path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="JPEG")


@pytest.fixture
def classes(tmp_path):
    path = tmp_path / "imagenet_class_index.json"
    path.write_text(json.dumps(CLASS_INDEX))
    return path


EXPECTED_WEBVISION = {"flickr/q0001/000000.jpg": 0, "flickr/q0003/000000.jpg": 1, "google/q0001/000000.jpg": 0, "google/q0001/000001.jpg": 0, "google/q0002/000000.jpg": 2}


@pytest.fixture
def webvision(tmp_path) -> Path:
    """A WebVision 1.0 root: info/ lists, google/ and flickr/ query folders, one corrupt and one absent image."""
    root = tmp_path / "webvision"
    for name in ("google/q0001/000000.jpg", "google/q0001/000001.jpg", "google/q0002/000000.jpg", "flickr/q0001/000000.jpg", "flickr/q0003/000000.jpg"):
        write_jpeg(root / name, "red")
    (root / "google/q0002/000001.jpg").write_bytes(b"not a jpeg")
    (root / "info").mkdir()
    (root / "info/train_filelist_google.txt").write_text(
        "google/q0001/000000.jpg 0\ngoogle/q0001/000001.jpg 0\ngoogle/q0002/000000.jpg 2\n"
        "google/q0002/000001.jpg 2\ngoogle/q0002/000002.jpg 2\n"
    )
    (root / "info/train_filelist_flickr.txt").write_text("flickr/q0001/000000.jpg 0\nflickr/q0003/000000.jpg 1\n")
    return root


def write_meta(path: Path, synsets=DEVKIT_SYNSETS) -> Path:
    """The devkit's data/meta.mat: a synsets struct array (n x 1) with the devkit's fields."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"]
    table = np.empty((len(synsets), 1), dtype=[(f, object) for f in fields])
    for i, (ilsvrc_id, wnid, children) in enumerate(synsets):
        table[i, 0] = (ilsvrc_id, wnid, f"words of {wnid}", "a gloss", children, np.arange(1, children + 1, dtype=float), 0, 1300)
    savemat(path, {"synsets": table})
    return path


@pytest.fixture
def imagenet_val(tmp_path) -> Path:
    """The flat val/ folder as distributed: images 1-5 (4 corrupt), image 6 absent; the devkit's data/ and Kaggle's CSV beside it."""
    root = tmp_path / "imagenet"
    for i in (1, 2, 3, 5):
        write_jpeg(root / "val" / VAL.format(i), "blue")
    (root / "val" / VAL.format(4)).write_bytes(b"\xff\xd8 truncated")
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in GROUND_TRUTH))
    write_meta(data / "meta.mat")
    by_id = {i: wnid for i, wnid, _ in DEVKIT_SYNSETS}
    rows = [f"{VAL.format(i + 1)[:-5]},{by_id[gt]} 10 20 30 40 {by_id[gt]} 1 2 3 4" for i, gt in enumerate(GROUND_TRUTH)]
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n")
    return root


def devkit(root: Path) -> tuple[Path, Path]:
    data = root / "ILSVRC2012_devkit_t12" / "data"
    return data / "ILSVRC2012_validation_ground_truth.txt", data / "meta.mat"


def labels_of(frame: pd.DataFrame, root: Path) -> dict[str, int]:
    """{path relative to root: label}."""
    return {Path(p).relative_to(root).as_posix(): int(label) for p, label in zip(frame["path"], frame["label"])}


# ---- WebVision's file lists ----------------------------------------------------------


def test_webvision_file_lists_give_the_listed_labels(webvision, classes):
    table = index_real.read_class_index(classes)
    frame, counts = index_real.index_file_lists(webvision, ["info/train_filelist_google.txt", str(webvision / "info/train_filelist_flickr.txt")], table, "control", source="webvision", origin="control")
    assert list(frame.columns) == index_real.INDEX_COLUMNS
    # flickr/q0003 holds goldfish: the label is the list's, never the folder's.
    assert labels_of(frame, webvision) == EXPECTED_WEBVISION
    assert set(frame["class_name"]) == {"tench", "goldfish", "great white shark"}
    assert set(frame["source"]) == {"webvision"} and set(frame["origin"]) == {"control"} and set(frame["split"]) == {"control"}
    assert counts["found"] == 7 and counts["indexed"] == 5 and counts["skipped"] == 2 and counts["missing"] == 1
    assert dict(counts["skipped_examples"])[str(webvision / "google/q0002/000002.jpg")] == "missing"
    assert counts["empty_classes"] == 0


def test_webvision_labels_go_through_its_synsets_file(webvision, classes):
    table = index_real.read_class_index(classes)
    lists = ["info/train_filelist_google.txt", "info/train_filelist_flickr.txt"]
    # The shipped order agrees with the class index: the same labels as without the file.
    (webvision / "info/synsets.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish\nn01484850 great white shark\n")
    frame, counts = index_real.index_file_lists(webvision, lists, table, "control")
    assert labels_of(frame, webvision) == EXPECTED_WEBVISION and counts["labels_through"].endswith("info/synsets.txt")
    # Another order: labels follow the wnids, not the numbers.
    (webvision / "info/synsets.txt").write_text("n01484850 great white shark\nn01440764 tench\nn01443537 goldfish\n")
    frame, _ = index_real.index_file_lists(webvision, lists, table, "control")
    remapped = {path: {0: 2, 1: 0, 2: 1}[label] for path, label in EXPECTED_WEBVISION.items()}
    assert labels_of(frame, webvision) == remapped
    assert set(zip(frame["label"], frame["class_name"])) <= {(0, "tench"), (1, "goldfish"), (2, "great white shark")}
    (webvision / "info/synsets.txt").write_text("n01440764 tench\nn09999999 not in the index\n")
    with pytest.raises(ValueError, match=r"synsets.txt, line 2: wnid 'n09999999'"):
        index_real.index_file_lists(webvision, lists, table, "control")


def test_a_path_listed_twice_is_indexed_once(webvision, classes):
    (webvision / "info/extra.txt").write_text("google/q0001/000000.jpg 0\n")
    table = index_real.read_class_index(classes)
    frame, counts = index_real.index_file_lists(webvision, ["info/train_filelist_google.txt", "info/extra.txt"], table, "control")
    assert len(frame) == 3 and frame["path"].is_unique
    assert counts["listed_twice"] == 1 and counts["skipped"] == 3 and counts["found"] == 6


@pytest.mark.parametrize("line, message", [("google/q0001/000000.jpg 3", "label 3 is outside 0..2"), ("google/q0001/000000.jpg", "expected '<relative path> <label>'"), ("google/q0001/000000.jpg -1", "label -1")])
def test_a_bad_file_list_line_names_the_file_and_line(webvision, classes, line, message):
    (webvision / "info/train_filelist_flickr.txt").write_text(f"flickr/q0001/000000.jpg 0\n\n{line}\n")
    with pytest.raises(ValueError) as error:
        index_real.index_file_lists(webvision, ["info/train_filelist_flickr.txt"], index_real.read_class_index(classes), "control")
    assert "train_filelist_flickr.txt, line 3" in str(error.value) and message in str(error.value)


# ---- ImageNet's flat validation folder -------------------------------------------------

# Images 1-3 by their wnid: tench 0, shark 2, goldfish 1. Image 4 is corrupt,
# image 5 is of a class outside the index, image 6 is absent.
EXPECTED_VAL = {VAL.format(1): 0, VAL.format(2): 2, VAL.format(3): 1}


def check_val_index(frame, counts, val):
    assert list(frame.columns) == index_real.INDEX_COLUMNS
    assert labels_of(frame, val) == EXPECTED_VAL
    assert list(frame["class_name"]) == ["tench", "great white shark", "goldfish"]
    assert set(frame["split"]) == {"test"} and set(frame["origin"]) == {"real"} and set(frame["source"]) == {"real"}
    assert counts["found"] == 5 and counts["indexed"] == 3 and counts["skipped"] == 2 and counts["missing"] == 1
    assert counts["unknown_classes"] == ["n09999999"] and counts["unknown_class_images"] == 1
    assert counts["empty_classes"] == 0


def test_devkit_labels_go_through_the_wnid(imagenet_val, classes):
    ground_truth, meta = devkit(imagenet_val)
    assert label_files.read_devkit_synsets(meta) == {i: wnid for i, wnid, _ in DEVKIT_SYNSETS}
    frame, counts = index_real.index_flat_folder(imagenet_val / "val", ground_truth, index_real.read_class_index(classes), "test", [".jpeg"], meta)
    check_val_index(frame, counts, imagenet_val / "val")


def test_kaggle_solution_gives_the_same_labels(imagenet_val, classes):
    frame, counts = index_real.index_flat_folder(imagenet_val / "val", imagenet_val / "LOC_val_solution.csv", index_real.read_class_index(classes), "test", [".jpeg"])
    check_val_index(frame, counts, imagenet_val / "val")


def test_real_index_reads_train_folders_and_a_flat_val(imagenet_val, classes, make_image_folder):
    train = make_image_folder("train", [w for w, _ in CLASS_INDEX.values()], per_class=2)
    ground_truth, meta = devkit(imagenet_val)
    real = {"kind": "image_folder", "root": str(train), "test_root": str(imagenet_val / "val"), "class_index": str(classes), "num_classes": 3, "extensions": [".png", ".jpeg"], "test_labels": str(ground_truth), "test_labels_meta": str(meta)}
    frame, quality = index_real.index_real_folders(real)
    assert frame.groupby("split").size().to_dict() == {"test": 3, "train": 6}
    assert quality["train"]["indexed"] == 6 and quality["test"]["missing"] == 1
    assert labels_of(frame[frame["split"] == "test"], imagenet_val / "val") == EXPECTED_VAL


def test_flat_val_errors(imagenet_val, classes, tmp_path):
    table = index_real.read_class_index(classes)
    ground_truth, meta = devkit(imagenet_val)
    val = imagenet_val / "val"

    write_jpeg(val / VAL.format(7), "green")
    with pytest.raises(ValueError, match=r"real.test_labels: .* has no label for 1 images .*ILSVRC2012_val_00000007.JPEG"):
        index_real.index_flat_folder(val, ground_truth, table, "test", [".jpeg"], meta)
    (val / VAL.format(7)).unlink()

    bad = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    bad.write_text("2\n1\n3\n1\n5\n1001\n")
    with pytest.raises(ValueError, match=r"real.test_labels: .*, line 6: expected an ILSVRC2012_ID"):
        index_real.index_flat_folder(val, bad, table, "test", [".jpeg"], meta)

    with pytest.raises(ValueError, match="real.test_labels_meta: required"):
        label_files.read_test_labels(ground_truth)
    not_meta = tmp_path / "meta.mat"
    savemat(not_meta, {"classes": np.arange(3)})
    with pytest.raises(ValueError, match="real.test_labels_meta: .* is not the devkit's meta.mat"):
        label_files.read_test_labels(ground_truth, not_meta)

    no_header = tmp_path / "LOC_val_solution.csv"
    no_header.write_text("ILSVRC2012_val_00000001,n01440764 1 2 3 4\n")
    with pytest.raises(ValueError, match="real.test_labels: .* header ImageId,PredictionString"):
        label_files.read_test_labels(no_header)

    with pytest.raises(ValueError, match="real.test_labels: unknown labels format"):
        label_files.read_test_labels(tmp_path / "labels.json")

    other = tmp_path / "other_classes.json"
    other.write_text(json.dumps({"0": ["n02000000", "a"], "1": ["n02000001", "b"]}))
    with pytest.raises(ValueError, match="real.test_labels: none of the classes"):
        index_real.index_flat_folder(val, imagenet_val / "LOC_val_solution.csv", index_real.read_class_index(other), "test", [".jpeg"])

    by_wnid = tmp_path / "val_by_wnid"
    write_jpeg(by_wnid / "n01440764" / VAL.format(1), "red")
    with pytest.raises(ValueError, match="real.test_root: no images directly in"):
        index_real.index_flat_folder(by_wnid, imagenet_val / "LOC_val_solution.csv", table, "test", [".jpeg"])


# ---- config checks ---------------------------------------------------------------------


def imagenet_config(**real) -> dict:
    config = yaml.safe_load((REPO / "config" / "imagenet.yaml").read_text())
    config["real"].update(real)
    return config


@pytest.mark.parametrize(
    "real, key",
    [
        ({"test_labels": "/d/ILSVRC2012_validation_ground_truth.txt"}, "real.test_labels_meta: required"),
        ({"test_labels": "/d/LOC_val_solution.csv", "test_labels_meta": "/d/meta.mat"}, "real.test_labels_meta: only for the devkit"),
        ({"test_labels_meta": "/d/meta.mat"}, "real.test_labels_meta: only with real.test_labels"),
        ({"test_labels": "/d/val_labels.json"}, "real.test_labels: unknown labels format"),
    ],
)
def test_bad_test_labels_fail_naming_the_key(tmp_path, real, key):
    with pytest.raises(config_checks.ConfigError) as error:
        validated(imagenet_config(**real))
    assert key in str(error.value)


def test_shipped_layout_keys_only_where_they_apply(default_config):
    default_config["real"]["test_labels"] = "LOC_val_solution.csv"
    default_config["sources"]["control"]["file_lists"] = ["info/train_filelist_google.txt"]
    default_config["sources"]["generated"]["file_lists"] = ["info/train_filelist_google.txt"]
    with pytest.raises(config_checks.ConfigError) as error:
        validated(default_config)
    message = str(error.value)
    assert "real.test_labels: only with real.kind image_folder" in message
    assert "sources.control.file_lists: only for a control source with a root" in message
    assert "sources.generated.file_lists: only for control sources" in message


def test_shipped_layout_paths_are_checked_before_a_run(tmp_path):
    config = validated(imagenet_config(test_labels=str(tmp_path / "LOC_val_solution.csv")))
    config["sources"]["webvision"]["root"] = str(tmp_path)
    (tmp_path / "info").mkdir()
    (tmp_path / "info/train_filelist_google.txt").write_text("")
    problems = config_paths.missing_paths(config)
    assert any(p.startswith("real.test_labels:") and "LOC_val_solution.csv" in p for p in problems)
    assert any(p.startswith("sources.webvision.file_lists[1]:") and "train_filelist_flickr.txt" in p for p in problems)
    assert not any(p.startswith("sources.webvision.file_lists[0]") for p in problems)


# ---- the workflow ----------------------------------------------------------------------


def test_index_jobs_read_the_shipped_layouts(tmp_path, webvision, imagenet_val, classes, make_image_folder):
    """The two index jobs on the fake trees, through the Snakefile and the glue scripts."""
    train = make_image_folder("train", [w for w, _ in CLASS_INDEX.values()], per_class=2)
    config = imagenet_config(root=str(train), test_root=str(imagenet_val / "val"), class_index=str(classes), num_classes=3, test_labels=str(imagenet_val / "LOC_val_solution.csv"))
    config["sources"] = {"webvision": {"origin": "control", "root": str(webvision), "file_lists": ["info/train_filelist_google.txt", "info/train_filelist_flickr.txt"]}}
    config["generators"] = {}
    config["evaluation"]["ood_sets"] = {}
    config["analysis"] = {"enabled": False}
    config["resources"]["default"] = {"threads": 1, "mem_mb": 1000, "runtime": 10, "gpu": 0}
    path = write_yaml(tmp_path / "shipped.yaml", config)
    targets = ["results/imagenet/real/index.parquet", "results/imagenet/control/webvision/index.parquet"]
    run_snakemake(*targets, "--cores", "1", "--configfile", str(path), cwd=tmp_path, timeout=300)
    real = read_parquet(tmp_path / targets[0])
    assert labels_of(real[real["split"] == "test"], imagenet_val / "val") == EXPECTED_VAL
    control = read_parquet(tmp_path / targets[1])
    assert labels_of(control, webvision) == EXPECTED_WEBVISION and set(control["source"]) == {"webvision"}
    quality = json.loads((tmp_path / "results/imagenet/control/webvision/quality.json").read_text())
    assert quality["missing"] == 1 and quality["skipped"] == 2
