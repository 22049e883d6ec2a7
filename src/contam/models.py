"""Classifiers (timm, from scratch) and the data pipeline that feeds them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2

from contam.images import load_rgb

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, timm's default
STD = (0.229, 0.224, 0.225)


def create_model(arch: str, num_classes: int, kwargs: dict | None = None) -> torch.nn.Module:
    import timm

    # The paper trains from scratch: never fetch pretrained weights.
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **(kwargs or {}))


def train_transform(image_size: int, augment: dict) -> v2.Compose:
    steps = [v2.ToImage(), v2.RandomResizedCrop(image_size, scale=tuple(augment.get("crop_scale", (0.08, 1.0))), antialias=True)]
    if augment.get("hflip", True):
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    return v2.Compose(steps)


def eval_transform(image_size: int, crop_ratio: float = 0.875) -> v2.Compose:
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(int(round(image_size / crop_ratio)), antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )


class ManifestDataset(Dataset):
    """Images listed in a manifest or index (``path``, ``label``), decoded with PIL."""

    def __init__(self, table: pd.DataFrame, transform):
        self.paths = table["path"].astype(str).to_numpy()
        self.labels = table["label"].to_numpy(np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(load_rgb(self.paths[i])), self.labels[i]


class EpochSampler(Sampler):
    """A shuffle that depends only on (seed, epoch), started at any position.

    Resuming mid-epoch from a checkpoint replays the same order and skips the
    batches already seen, without decoding them.
    """

    def __init__(self, size: int, seed: int, epoch: int, start: int = 0):
        self.size, self.seed, self.epoch, self.start = size, seed, epoch, start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g)[self.start :].tolist())

    def __len__(self) -> int:
        return self.size - self.start
