"""Benchmark: decoded images/s of our manifest-driven loader against ImageFolder.

Generates 256x256 JPEGs in class folders in a temporary folder, then reads them
all through (a) ``contam.models.ManifestDataset`` + DataLoader and (b)
torchvision's ``ImageFolder`` + DataLoader, with the same evaluation transform
(resize, center crop, normalise), batch size and workers, in the same run,
alternating the two over several rounds and keeping each one's best round.
Prints images/s of both and the ratio (ours / ImageFolder; target >= 0.95).

    python bench/loader.py [--images 2000] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from contam.models import ManifestDataset, eval_transform
from synthetic_images import make_jpegs


def rate(dataset, batch_size: int, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        table = make_jpegs(Path(tmp), args.images, args.classes, args.side)
        print(f"wrote {len(table)} JPEGs of {args.side}x{args.side} in {time.perf_counter() - start:.1f} s")
        transform = eval_transform(args.image_size)
        ours = ManifestDataset(table, transform)
        folder = ImageFolder(tmp, transform=transform)
        assert len(folder) == len(ours)
        best = {"ours": 0.0, "imagefolder": 0.0}
        for r in range(args.rounds):
            for name, dataset in (("ours", ours), ("imagefolder", folder)) if r % 2 == 0 else (("imagefolder", folder), ("ours", ours)):
                value = rate(dataset, args.batch_size, args.workers)
                best[name] = max(best[name], value)
                print(f"round {r}: {name:12s} {value:8.1f} images/s")
    print(f"ManifestDataset: {best['ours']:.1f} images/s (best of {args.rounds})")
    print(f"ImageFolder:     {best['imagefolder']:.1f} images/s (best of {args.rounds})")
    print(f"ratio ours / ImageFolder: {best['ours'] / best['imagefolder']:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
