"""An ImageNet-style image-folder study through the workflow, with an OOD set.

Everything is made in a temporary folder: train/ and val/ folders of small PNGs
by class, a class index "folder<TAB>name, synonym", a control source folder and
an out-of-distribution set that covers only some of the classes. Bad files
(a truncated PNG, a CMYK JPEG, an upper-case .JPEG) are planted in the real
folders. The control arm trains through the multi-GPU path (``resources.train.gpu:
2``), which on CPU runs two gloo processes through ``accelerate launch``.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_yaml
from contam.io import read_parquet
from test_workflow import snakemake

FOLDERS = ["n001", "n002", "n003", "n004"]
NAMES = ["tench, Tinca tinca", "goldfish", "shark, great white shark", "hen"]
OOD_FOLDERS = FOLDERS[1:3]  # a subset of the classes


def image_folder(root: Path, folders: list[str], per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for label, folder in enumerate(folders):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            array = rng.integers(0, 200, (20, 20, 3), dtype=np.uint8)
            array[..., FOLDERS.index(folder) % 3] = 255
            Image.fromarray(array).save(root / folder / f"img{i}.png")
    return root


def plant_bad_images(root: Path) -> None:
    good = (root / FOLDERS[0] / "img0.png").read_bytes()
    (root / FOLDERS[0] / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.new("CMYK", (20, 20), (0, 255, 0, 0)).save(root / FOLDERS[1] / "cmyk.jpg", format="JPEG")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(root / FOLDERS[2] / "UPPER.JPEG", format="JPEG")


@pytest.mark.slow
def test_image_folder_study_with_ood_set(tmp_path):
    data = tmp_path / "data"
    train = image_folder(data / "train", FOLDERS, per_class=8, seed=0)
    val = image_folder(data / "val", FOLDERS, per_class=4, seed=1)
    plant_bad_images(train)
    control = image_folder(data / "webvision", FOLDERS, per_class=8, seed=2)
    ood = image_folder(data / "ood", OOD_FOLDERS, per_class=5, seed=3)
    (data / "classes.txt").write_text("".join(f"{f}\t{n}\n" for f, n in zip(FOLDERS, NAMES)))
    config = {
        "experiment": "folders",
        "real": {
            "kind": "image_folder", "root": str(train), "test_root": str(val),
            "class_index": str(data / "classes.txt"), "num_classes": len(FOLDERS),
        },
        "sources": {"web": {"origin": "control", "root": str(control)}},
        "mixing": {"ratios": [0.0, 0.5]},
        "training": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "augment": {"crop_scale": [0.5, 1.0]}},
        "models": {"resnet10t": {"arch": "resnet10t", "image_size": 16}},
        "seeds": [0],
        "evaluation": {"ood_sets": {"x": {"root": str(ood)}}},
        "analysis": {"enabled": False},
        # Two training processes over gloo on a machine without GPUs.
        "execution": {"device": "cpu", "eval_batch_size": 16, "allow_cpu_fallback": True},
        "resources": {"train": {"gpu": 2, "threads": 2}},
    }
    path = write_yaml(tmp_path / "folders.yaml", config)
    out = tmp_path / "results" / "folders"
    targets = [f"results/folders/runs/{run}/resnet10t/seed-0/metrics.json" for run in ("real/ratio-0.0", "web/ratio-0.5")]
    snakemake(*targets, "--cores", "2", "--configfile", str(path), cwd=tmp_path)

    quality = json.loads((out / "real" / "quality.json").read_text())
    assert quality["train"]["found"] == 4 * 8 + 3 and quality["train"]["skipped"] == 1
    assert "truncated.png" in quality["train"]["skipped_examples"][0][0]
    index = read_parquet(out / "real" / "index.parquet")
    names = set(index["path"].map(lambda p: Path(p).name))
    assert {"cmyk.jpg", "UPPER.JPEG"} <= names and "truncated.png" not in names
    assert (index["split"] == "test").sum() == 4 * 4

    for run in ("real/ratio-0.0", "web/ratio-0.5"):
        metrics = json.loads((out / "runs" / run / "resnet10t" / "seed-0" / "metrics.json").read_text())
        assert metrics["test"]["n"] == 16 and set(metrics["test"]["per_class_top1"]) == {"0", "1", "2", "3"}
        x = metrics["ood"]["x"]
        assert x["classes"] == len(OOD_FOLDERS) and x["n"] == 10
        assert set(x["per_class_top1"]) == {"1", "2"}
        assert all(0 <= v <= 1 for v in x["per_class_top1"].values())
    log = (tmp_path / "logs" / "folders" / "train" / "web" / "ratio-0.5" / "resnet10t" / "seed-0.log").read_text()
    assert "launching 2 processes" in log and "trained on 2 processes" in log
    history = (out / "runs" / "web" / "ratio-0.5" / "resnet10t" / "seed-0" / "train_log.csv").read_text()
    assert len(history.splitlines()) == 2
