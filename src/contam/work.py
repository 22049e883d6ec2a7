"""The work a job does, in its rule's own unit: what the cost plan scales by.

A job's time is modelled as a fixed start-up cost plus a rate times its work
(``contam.plan``), so each rule needs one number that the time grows with:

- generating images: images x sampling steps x megapixels (x 2 with
  classifier-free guidance, which runs the UNet on two batches);
- fitting a diffusion model: training steps x batch x megapixels;
- training a classifier: images x epochs x the model's GMACs per image;
- evaluating and extracting features: images x GMACs per image;
- indexing, mixing, gathering: rows;
- reports and other one-off jobs: 1 (their cost is the fixed part).

The same functions size a measured job (for the ledger, from its real row
counts) and a planned one (from the config), so the two can be compared.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

# Sizes of the presets' models, counted by model_size itself (a test keeps the
# two equal): importing timm and torch costs ~10 s, more than a plan may take.
KNOWN_SIZES_FILE = Path(__file__).with_name("data") / "model_sizes.csv"

UNITS = {
    "image_step_mpx": "image x step x megapixel",
    "sample_step_mpx": "training sample x step x megapixel",
    "image_epoch_gmac": "image x epoch x GMAC",
    "image_gmac": "image x GMAC",
    "row": "row",
    "pair": "feature pair (n^2)",
    "job": "job",
}


def megapixels(height: int, width: int | None = None) -> float:
    return height * (width if width is not None else height) / 1e6


def generation(images: int, steps: int, height: int, width: int | None = None, guided: bool = False) -> float:
    """Images x steps x megapixels, doubled when classifier-free guidance runs the UNet twice.

    diffusers guides when guidance > 1, the embedded sampler when guidance > 0
    (``guides``).
    """
    return images * steps * megapixels(height, width) * (2.0 if guided else 1.0)


def guides(kind: str, guidance: float) -> bool:
    """Whether a generator of ``kind`` (diffusers or embedded) runs the unconditional pass too."""
    return guidance > (1.0 if kind == "diffusers" else 0.0)


def fitting(steps: int, batch_size: int, height: int, width: int | None = None) -> float:
    return steps * batch_size * megapixels(height, width)


def training(images: int, epochs: float, gmacs: float) -> float:
    return images * epochs * gmacs


def inference(images: int, gmacs: float) -> float:
    return images * gmacs


def model_gmacs(arch: str, image_size: int, num_classes: int = 1000, in_chans: int = 3) -> float:
    """A timm model's multiply-accumulates per image (GMAC)."""
    return model_size(arch, image_size, num_classes, in_chans)[0]


@functools.lru_cache(maxsize=1)
def known_sizes() -> dict[tuple[str, int, int, int], tuple[float, int]]:
    with open(KNOWN_SIZES_FILE, newline="") as handle:
        return {
            (row["arch"], int(row["image_size"]), int(row["num_classes"]), int(row["in_chans"])): (float(row["gmacs"]), int(row["params"]))
            for row in csv.DictReader(handle)
        }


def model_size(arch: str, image_size: int, num_classes: int = 1000, in_chans: int = 3) -> tuple[float, int]:
    """A timm model's GMACs per image and its parameter count (from the table where known)."""
    key = (arch, int(image_size), int(num_classes), int(in_chans))
    return known_sizes().get(key) or count_model_size(*key)


@functools.lru_cache(maxsize=64)
def count_model_size(arch: str, image_size: int, num_classes: int = 1000, in_chans: int = 3) -> tuple[float, int]:
    """A timm model's GMACs per image and its parameter count, counted on the meta device.

    Nothing is allocated or downloaded: the model is built with ``pretrained=False``
    on torch's meta device and FlopCounterMode counts its forward pass.
    """
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans).eval()
        batch = torch.empty(1, in_chans, image_size, image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(batch)
    # FlopCounterMode counts a multiply-add as 2 FLOPs.
    return counter.get_total_flops() / 2e9, sum(p.numel() for p in model.parameters())
