"""Cached copies (contam.prepare), the loader that reads them, and GPU-decode options."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO, validated
from contam import layout, prepare
from contam.images import save_image
from contam.models import ManifestDataset, decode_device, decode_tensor, eval_transform, train_transform

SETTINGS = prepare.Settings(short_side=32, jpeg_quality=90)


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth content with some texture, like a photo (not noise)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(base).resize((width, height), Image.BILINEAR)).astype(np.int16)
    return (image + rng.integers(-8, 8, image.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture
def images(tmp_path):
    """A real JPEG (landscape), a generated PNG (square), a small image and a broken file."""
    paths = {
        "real": tmp_path / "real" / "n01" / "a.JPEG",
        "generated": tmp_path / "generated" / "images-x" / "0-k.png",
        "small": tmp_path / "real" / "n01" / "small.jpg",
        "broken": tmp_path / "real" / "n01" / "broken.jpg",
    }
    save_image(photo(100, 75), paths["real"], "jpeg", quality=95)
    save_image(photo(64, 64, 1), paths["generated"], "png")
    save_image(photo(20, 30, 2), paths["small"], "jpeg")
    paths["broken"].write_bytes(b"\xff\xd8\xff not a jpeg at all")
    return paths


def index_of(paths, names):
    return pd.DataFrame({"path": [str(paths[n]) for n in names], "label": range(len(names))})


def test_shorter_side_aspect_and_no_upscaling(images, tmp_path):
    records, counts = prepare.prepare_index(index_of(images, ["real", "generated", "small"]), tmp_path / "cache", SETTINGS)
    by = records.set_index("source_path")
    real, gen, small = (by.loc[str(images[n])] for n in ("real", "generated", "small"))
    assert (real.width, real.height, real.resized) == (43, 32, True)  # 100x75 -> shorter side 32
    assert (gen.width, gen.height, gen.resized) == (32, 32, True)
    assert (small.width, small.height, small.resized) == (20, 30, False)  # never upscaled
    assert (small.original_width, small.original_height) == (20, 30)
    for row in records.itertuples():
        with Image.open(row.path) as copy:
            assert copy.format == "JPEG" and copy.size == (row.width, row.height) and copy.mode == "RGB"
        assert row.bytes == os.path.getsize(row.path)
    assert set(records["format"]) == {"jpeg"} and set(records["quality"]) == {90}
    assert counts["resized"] == 2 and counts["kept_size"] == 1 and counts["written"] == 3


def test_real_and_generated_get_the_same_treatment(images, tmp_path):
    """One function and one encoder for both: the same pixels give the same bytes,
    whatever the source's format, folder or name."""
    pixels = photo(64, 48, 3)
    as_real, as_generated = tmp_path / "r" / "x.JPEG", tmp_path / "g" / "images-y" / "3-k.png"
    save_image(pixels, as_generated, "png")
    as_real.parent.mkdir(parents=True)
    Image.fromarray(pixels).save(as_real, format="PNG")  # a PNG named .JPEG, as ImageNet has one
    index = pd.DataFrame({"path": [str(as_real), str(as_generated)], "label": [0, 0]})
    records, _ = prepare.prepare_index(index, tmp_path / "cache", SETTINGS)
    a, b = (open(p, "rb").read() for p in records["path"])
    assert a == b
    assert records.drop(columns=["source_path", "path"]).nunique().max() == 1


def test_copies_are_deterministic_and_resume_writes_nothing(images, tmp_path):
    index = index_of(images, ["real", "generated", "small"])
    first, counts = prepare.prepare_index(index, tmp_path / "one", SETTINGS, workers=2)
    again, _ = prepare.prepare_index(index, tmp_path / "two", SETTINGS)
    assert [open(p, "rb").read() for p in first["path"]] == [open(p, "rb").read() for p in again["path"]]
    mtimes = [os.stat(p).st_mtime_ns for p in first["path"]]
    resumed, counts = prepare.prepare_index(index, tmp_path / "one", SETTINGS)
    assert counts["written"] == 0 and counts["reused"] == 3
    assert [os.stat(p).st_mtime_ns for p in first["path"]] == mtimes
    pd.testing.assert_frame_equal(resumed, first)


def test_settings_and_content_name_the_copies(images, tmp_path):
    index = index_of(images, ["real"])
    assert prepare.Settings(32, 90).id != prepare.Settings(32, 80).id != prepare.Settings(64, 80).id
    assert prepare.copy_name(images["real"], "1:2") != prepare.copy_name(images["real"], "1:3")
    records, _ = prepare.prepare_index(index.assign(content_id="1:2"), tmp_path / "c", SETTINGS)
    assert records["path"][0].startswith(str(tmp_path / "c")) and records["path"][0].endswith(".jpg")


def test_unreadable_images_are_skipped_and_counted(images, tmp_path):
    records, counts = prepare.prepare_index(index_of(images, ["real", "broken"]), tmp_path / "cache", SETTINGS)
    assert list(records["source_path"]) == [str(images["real"])]
    assert counts["skipped"] == 1 and counts["found"] == 2 and counts["cached"] == 1
    assert counts["skipped_examples"][0][0] == str(images["broken"])


def test_the_loader_reads_the_cached_copies(images, tmp_path):
    manifest = index_of(images, ["real", "generated"])
    records, _ = prepare.prepare_index(manifest, tmp_path / "cache", SETTINGS)
    cached = prepare.cached_paths(manifest, [records])
    assert list(cached["source_path"]) == list(manifest["path"])
    assert list(cached["path"]) == list(records["path"])
    dataset = ManifestDataset(cached, train_transform(24, {"crop_scale": (0.5, 1.0)}))
    image, label = dataset[(0, 7)]
    assert image.shape == (3, 24, 24) and label == 0
    assert dataset.load(0).size == (43, 32)  # the copy, not the 100x75 original
    with pytest.raises(prepare.MissingCopy, match="broken.jpg"):
        prepare.cached_paths(index_of(images, ["real", "broken"]), [records])


def test_torchvision_decode_path_matches_pil(images):
    """execution.decode: cuda runs decode_tensor on the GPU; here the same code on the CPU."""
    table = index_of(images, ["real", "generated", "small"])
    pil = ManifestDataset(table, eval_transform(16, 1.0))
    tv = ManifestDataset(table, eval_transform(16, 1.0), decode=torch.device("cpu"))
    for i in range(len(table)):
        decoded = decode_tensor(table["path"][i], torch.device("cpu"))
        reference = torch.from_numpy(np.array(pil.load(i))).permute(2, 0, 1)
        assert decoded.dtype == torch.uint8 and decoded.shape == reference.shape
        assert (decoded.int() - reference.int()).abs().float().mean() < 1.0  # IDCT rounding only
        assert torch.allclose(tv[i][0], pil[i][0], atol=0.1)
    # Seeded augmentation draws on the CPU generator on either path: the same crop.
    train = train_transform(12, {"crop_scale": (0.3, 1.0), "hflip": True})
    a = ManifestDataset(table, train)[(0, 5)][0]
    b = ManifestDataset(table, train, decode=torch.device("cpu"))[(0, 5)][0]
    assert torch.allclose(a, b, atol=0.15)
    assert tv.loader_options(4, True) == {"num_workers": 4, "pin_memory": True}


def test_gpu_decode_fails_at_job_start_naming_the_key():
    assert decode_device("cpu", torch.device("cpu")) is None
    assert decode_device("cuda", torch.device("cuda:1")) == torch.device("cuda:1")
    with pytest.raises(RuntimeError, match="execution.decode"):
        decode_device("cuda", torch.device("cpu"))
    cuda = ManifestDataset(pd.DataFrame({"path": [], "label": []}), None, decode="cuda:0")
    assert cuda.loader_options(8, True) == {"num_workers": 0, "pin_memory": False}


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["prepare"].update(jpeg_quality=0), "jpeg_quality"),
        (lambda c: c["prepare"].update(jpeg_quality=101), "jpeg_quality"),
        (lambda c: c["prepare"].update(short_side=0), "short_side"),
        (lambda c: c["prepare"].update(short_side=-256), "short_side"),
        (lambda c: c["prepare"].update(typo=1), "typo"),
        # Copies smaller than the evaluation resize (24 / 1.0) would be upscaled.
        (lambda c: c["prepare"].update(short_side=20), "prepare.short_side"),
        (lambda c: c.update(task="generation"), "prepare.enabled"),
        (lambda c: c["execution"].update(decode="nvjpeg"), "decode"),
        (lambda c: c["execution"].update(decode="cuda", device="cpu"), "execution.decode"),
    ],
)
def test_bad_prepare_config_fails_naming_the_key(default_config, mutate, key):
    default_config["prepare"] = {"enabled": True}
    mutate(default_config)
    with pytest.raises(Exception) as error:
        validated(default_config)
    assert key in str(error.value)


def test_prepare_is_off_by_default_and_described(default_config):
    config = validated(default_config)
    assert config["prepare"] == {"enabled": False, "short_side": 256, "jpeg_quality": 90}
    assert config["execution"]["decode"] == "cpu"
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    for section in ("prepare",):
        for name, key in schema["properties"][section]["properties"].items():
            assert key.get("description"), f"{section}.{name} has no description"
    assert schema["properties"]["execution"]["properties"]["decode"]["description"]
    assert layout.job_file("logs/x", "prepare_cached_copies", "log", collection="real") == "logs/x/prepare_cached_copies/real.log"


def test_default_study_plans_no_copies_and_imagenet_plans_them(tmp_path):
    """A dry run: the default plans no prepare job; the paper preset with prepare on plans one per collection."""
    def plan(*args):
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "-d", str(tmp_path), "--snakefile", str(REPO / "Snakefile"), *args],
            cwd=REPO, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout + result.stderr

    assert "prepare_cached_copies" not in plan("--configfile", str(REPO / "config" / "config.yaml"))
    text = plan("--configfile", str(REPO / "config" / "imagenet.yaml"), "--config", "prepare={enabled: true}")
    counts = dict(line.split()[:2] for line in text.splitlines() if line.startswith("prepare_cached_copies"))
    assert counts == {"prepare_cached_copies": "8"}  # real, 2 generated, WebVision, 4 OOD sets
