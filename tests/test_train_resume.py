"""Exact resume: every RNG training draws from survives a checkpoint, on CPU and on CUDA."""

import os
import random

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from contam import train
from contam.index_real import index_image_folder

CLASSES = pd.DataFrame({"label": [0, 1, 2], "folder": ["a", "b", "c"], "names": ["a", "b", "c"]})
# Dropout and drop path draw from the global torch RNG of the training device.
MODEL = {"arch": "resnet10t", "image_size": 16, "kwargs": {"drop_rate": 0.3, "drop_path_rate": 0.2}}
RECIPE = {
    "epochs": 2, "batch_size": 4, "optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9,
    "weight_decay": 1e-4, "warmup_epochs": 0.5, "label_smoothing": 0.1, "precision": "fp32",
    "augment": {"crop_scale": [0.5, 1.0], "hflip": True}, "deterministic": True,
}
NO_CUDA = (
    "needs a CUDA device: torch.cuda.is_available() is false "
    f"(torch {torch.__version__}, CUDA build {torch.version.cuda}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})"
)


@pytest.fixture
def manifest(make_image_folder):
    root = make_image_folder("train", ["a", "b", "c"], per_class=5, size=20)
    frame, _ = index_image_folder(root, CLASSES, "train", [".png"])
    return frame


def straight_and_resumed(tmp_path, device, manifest=None, dataset=None, model=MODEL, recipe=RECIPE) -> tuple[dict, dict]:
    """Weights of an uninterrupted run and of one stopped mid-way through epoch 2 of 2, then resumed."""

    def run(out, **kwargs):
        return train.train(manifest, model, recipe, 3, seed=1, out_dir=out, fingerprint="f", device=device, dataset=dataset, **kwargs)

    run(tmp_path / "straight")
    with pytest.raises(train.Preempted):
        run(tmp_path / "resumed", stop_after_steps=6)  # 15 images in batches of 4: 4 steps an epoch
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert state["rng"]["cuda"].numel() > 0 if device.type == "cuda" else state["rng"]["cuda"].numel() == 0
    run(tmp_path / "resumed")
    return load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_resume_on_cuda_is_exact(manifest, tmp_path):
    # Resuming mid-epoch skips the per-epoch torch.manual_seed, so the CUDA
    # generator that dropout and drop path draw from must come from the checkpoint.
    assert_same(*straight_and_resumed(tmp_path, torch.device("cuda"), manifest))


def test_resume_on_cpu_is_exact(manifest, tmp_path):
    assert_same(*straight_and_resumed(tmp_path, torch.device("cpu"), manifest))
    assert not torch.are_deterministic_algorithms_enabled()  # the run's setting did not outlive it


class GlobalRngImages(Dataset):
    """Synthetic images augmented with NumPy's or Python's global RNG, as many third-party augmentations are."""

    def __init__(self, rng: str, n: int = 15, size: int = 16):
        generator = torch.Generator().manual_seed(0)
        self.rng = rng
        self.labels = torch.arange(n) % 3
        self.images = torch.randn(n, 3, size, size, generator=generator)
        self.images[torch.arange(n), self.labels] += 2.0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        i, _ = key
        if self.rng == "numpy":
            # An odd number of normals leaves NumPy's cached Gaussian set.
            noise = torch.from_numpy(np.random.standard_normal(3 * 16 * 16 + 1)[1:].astype(np.float32)).reshape(3, 16, 16)
            return self.images[i] + 0.5 * noise, int(self.labels[i])
        return self.images[i] * (1.0 + 0.2 * random.gauss(0.0, 1.0)), int(self.labels[i])


@pytest.mark.parametrize("rng", ["numpy", "python"])
def test_resume_restores_numpy_and_python_rngs(rng, tmp_path):
    model = {**MODEL, "kwargs": {}}
    a, b = straight_and_resumed(tmp_path, torch.device("cpu"), dataset=GlobalRngImages(rng), model=model, recipe={**RECIPE, "deterministic": False})
    assert_same(a, b)


def draws(device: torch.device) -> list:
    values = [torch.rand(4).tolist(), np.random.rand(3).tolist(), np.random.standard_normal(3).tolist(), random.random(), random.gauss(0, 1)]
    if device.type == "cuda":
        values.append(torch.rand(4, device=device).tolist())
    return values


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA))])
def test_rng_states_round_trip_through_a_checkpoint(device, tmp_path):
    device = torch.device(device)
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    # Leave NumPy's and Python's cached Gaussians set: they are state too.
    np.random.standard_normal(1), random.gauss(0, 1)
    torch.save(train.capture_rng(device), tmp_path / "rng.pt")
    first = draws(device)
    assert draws(device) != first
    train.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True), device)
    assert draws(device) == first
