"""Classifiers (timm, from scratch) and the data pipeline that feeds them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2

from contam.images import load_rgb
from contam.seeds import image_seeds

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


JPEG_MAGIC = b"\xff\xd8\xff"


def decode_tensor(path: str, device: torch.device) -> torch.Tensor:
    """An image as a 3xHxW uint8 RGB tensor on ``device``, decoded by torchvision.

    JPEGs go through ``torchvision.io.decode_jpeg`` on ``device`` (nvJPEG on a
    CUDA device, libjpeg-turbo on the CPU); anything else (the PNGs a generator
    writes, a PNG named .JPEG) and any JPEG that decoder refuses (CMYK, a few
    truncated files) take the defensive PIL path and are moved to ``device``.
    The pixels may differ from PIL's by rounding of the inverse DCT only.
    """
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    data = read_file(str(path))
    if bytes(data[:3].tolist()) == JPEG_MAGIC:
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            pass
    array = np.asarray(load_rgb(path))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous().to(device)


class ManifestDataset(Dataset):
    """Images listed in a manifest or index (``path``, ``label``), decoded with PIL.

    ``decode`` None (execution.decode: cpu) decodes with PIL, as always; a
    device (execution.decode: cuda gives the job's GPU) decodes with
    ``decode_tensor`` on it, and the transform then runs on that device too, so
    items come back as tensors already there. A loader over a CUDA-decoding
    dataset must have no workers (CUDA does not survive a fork) and no pinned
    memory; ``loader_options`` says so.

    An item key is an index, or ``(index, seed)``: then the random transform
    draws from a generator seeded with ``seed`` alone (the global RNG of the
    calling process is left as it was). So an augmented image is a function of
    (seed, epoch, image) only, the same in the main process or in any worker, on
    any rank and after any resume; ``num_workers`` never changes results.
    """

    def __init__(self, table: pd.DataFrame, transform, decode: str | torch.device | None = None):
        self.paths = table["path"].astype(str).to_numpy()
        self.labels = table["label"].to_numpy(np.int64)
        self.transform = transform
        self.decode = torch.device(decode) if decode is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int):
        if self.decode is None:
            return load_rgb(self.paths[i])
        return decode_tensor(self.paths[i], self.decode)

    def loader_options(self, num_workers: int, pin_memory: bool) -> dict:
        """DataLoader workers and pinning that work with where this dataset decodes."""
        if self.decode is not None and self.decode.type == "cuda":
            return {"num_workers": 0, "pin_memory": False}
        return {"num_workers": num_workers, "pin_memory": pin_memory}

    def __getitem__(self, key):
        if isinstance(key, tuple):
            i, seed = key
            image = self.load(i)
            # The random draws of the transforms are CPU draws, also when the
            # pixels are on a GPU: the crop of an image depends on its seed only.
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(int(seed))
                return self.transform(image), self.labels[i]
        return self.transform(self.load(key)), self.labels[key]


DECODES = ("cpu", "cuda")


def decode_device(setting: str, device: torch.device) -> torch.device | None:
    """ManifestDataset's ``decode`` for ``execution.decode`` in a job running on ``device``.

    ``cpu`` keeps PIL; ``cuda`` decodes on the job's own GPU, and fails at job
    start, naming the key, when the job has none.
    """
    if setting not in DECODES:
        raise ValueError(f"execution.decode: expected one of {DECODES}, got {setting!r}")
    if setting == "cpu":
        return None
    if device.type != "cuda":
        raise RuntimeError(
            f"execution.decode: cuda decodes JPEGs on the job's GPU, but this job runs on {device} "
            f"(torch sees {'a' if torch.cuda.is_available() else 'no'} CUDA device); set execution.decode: cpu, "
            "or give the job a GPU (resources.<rule>.gpu, execution.device)"
        )
    return device


def shard_order(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s share of a global order: every ``world_size``-th item.

    The order is first padded by wrapping around to a multiple of
    ``world_size``, so every rank gets the same number of items (and of
    batches, which DistributedDataParallel needs). One rank gets ``order``.
    """
    if world_size == 1:
        return order
    per_rank = -(-len(order) // world_size)
    padded = np.resize(order, per_rank * world_size) if len(order) else order
    return padded[rank::world_size]


class EpochSampler(Sampler):
    """A shuffle that depends only on (seed, epoch), started at any position.

    Every rank computes the same global permutation and takes its own slice
    (``shard_order``). Resuming mid-epoch from a checkpoint replays the same
    order and skips the ``start`` items (of this rank) already seen, without
    decoding them. With ``with_seeds`` it yields ``(index, augmentation seed)``
    keys for ManifestDataset. ``set_epoch`` moves one sampler (and so one
    DataLoader with persistent workers) to the next epoch.
    """

    def __init__(self, size: int, seed: int, epoch: int = 0, start: int = 0, rank: int = 0, world_size: int = 1, with_seeds: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.size, self.seed, self.rank, self.world_size, self.with_seeds = size, seed, rank, world_size, with_seeds
        self.set_epoch(epoch, start)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    @property
    def per_rank(self) -> int:
        return -(-self.size // self.world_size)

    def order(self) -> np.ndarray:
        """This rank's indices for the whole epoch (before skipping ``start``)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return shard_order(torch.randperm(self.size, generator=g).numpy(), self.rank, self.world_size)

    def __iter__(self):
        indices = self.order()[self.start :]
        if not self.with_seeds:
            return iter(indices.tolist())
        seeds = image_seeds(self.seed * 1_000_003 + self.epoch, indices)
        return iter(zip(indices.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)
