"""Benchmark: decoded images/s of our manifest-driven loader against ImageFolder.

Generates 256x256 JPEGs in class folders in a temporary folder, then reads them
all through (a) ``contam.models.ManifestDataset`` + DataLoader and (b)
torchvision's ``ImageFolder`` + DataLoader, with the same evaluation transform
(resize, center crop, normalise), batch size and workers, in the same run,
alternating the two over several rounds and keeping each one's best round.
Prints images/s of both and the ratio (ours / ImageFolder; target >= 0.95).

``--mode cache`` measures what cached copies (contam.prepare) buy: it writes
ImageNet-sized JPEGs (500x375, quality 90, crops of real photos), makes their
cached copies once (short side 256, JPEG quality 90; the one-time cost is
printed in images/s), then reads both through ManifestDataset with the training
transform (RandomResizedCrop 224 + flip + normalise, seeded per image as in
training), alternating the two over the rounds and keeping each one's best.
Prints images/s of both and the ratio (cached / originals).

    python bench/loader.py [--images 2000] [--workers 2] [--rounds 3]
    python bench/loader.py --mode cache [--images 1000] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from contam import prepare
from contam.models import ManifestDataset, eval_transform, train_transform
from synthetic_images import make_jpegs, make_photo_jpegs


def rate(dataset, batch_size: int, workers: int, sampler=None) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False, sampler=sampler)
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def cache_mode(args) -> None:
    """Decode + training augmentation from the originals against their cached copies."""
    settings = prepare.Settings(short_side=args.short_side, jpeg_quality=args.cache_quality)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        table = make_photo_jpegs(Path(tmp) / "originals", args.images, args.classes, args.width, args.height)
        print(f"wrote {len(table)} JPEGs of {args.width}x{args.height} (quality 90) in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        records, counts = prepare.prepare_index(table, Path(tmp) / "cached", settings, workers=args.workers)
        seconds = time.perf_counter() - start
        print(
            f"prepared {counts['written']} cached copies (short side {settings.short_side}, JPEG q{settings.jpeg_quality}) "
            f"with {args.workers} thread(s) in {seconds:.1f} s: {counts['written'] / seconds:.1f} images/s, once; "
            f"{counts['source_bytes'] / len(table) / 1e3:.1f} kB -> {counts['cached_bytes'] / len(table) / 1e3:.1f} kB per image"
        )
        cached = prepare.cached_paths(table, [records])
        transform = train_transform(args.image_size, {"crop_scale": (0.08, 1.0), "hflip": True})
        datasets = {"originals": ManifestDataset(table, transform), "cached": ManifestDataset(cached, transform)}
        # (index, seed) keys as in training: the same crops on both sides.
        keys = [(i, 1000 + i) for i in range(len(table))]
        best = dict.fromkeys(datasets, 0.0)
        decode = dict.fromkeys(datasets, 0.0)
        for r in range(args.rounds):
            order = list(datasets) if r % 2 == 0 else list(reversed(datasets))
            for name in order:
                value = rate(datasets[name], args.batch_size, args.workers, sampler=keys)
                best[name] = max(best[name], value)
                # Decode alone, one thread in this process: where the time goes.
                start = time.perf_counter()
                for i in range(len(table)):
                    datasets[name].load(i)
                alone = len(table) / (time.perf_counter() - start)
                decode[name] = max(decode[name], alone)
                print(f"round {r}: {name:9s} {value:8.1f} images/s decode + augment; decode alone {alone:.1f} images/s/thread")
    print(f"originals ({args.width}x{args.height}): {best['originals']:.1f} images/s (best of {args.rounds})")
    print(f"cached copies ({settings.short_side} short side): {best['cached']:.1f} images/s (best of {args.rounds})")
    print(f"ratio cached / originals: {best['cached'] / best['originals']:.2f}")
    print(f"decode alone, one thread: originals {decode['originals']:.1f}, cached {decode['cached']:.1f} images/s, ratio {decode['cached'] / decode['originals']:.2f}")
    print(f"one-time preparation: {counts['written'] / seconds:.1f} images/s with {args.workers} thread(s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", choices=["imagefolder", "cache"], default="imagefolder")
    parser.add_argument("--width", type=int, default=500, help="cache mode: original width")
    parser.add_argument("--height", type=int, default=375, help="cache mode: original height")
    parser.add_argument("--short-side", type=int, default=256, help="cache mode: prepare.short_side")
    parser.add_argument("--cache-quality", type=int, default=90, help="cache mode: prepare.jpeg_quality")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.mode == "cache":
        cache_mode(args)
        return
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
