"""Benchmark: disk per image and write + read time of each storage choice for generated images.

Generated images are 512x512 (SD v1's size). The content is photographic:
crops of scikit-learn's two sample photographs (bench/synthetic_images.py,
``photo_crops``), since sizes and codec times depend on image statistics and
noise would make every lossless format look hopeless and every lossy one
huge. Each choice writes every image (``contam.images.save_image``, the
generator's own writer, so its encoder settings are the workflow's) and reads
it back (``contam.images.load_rgb``, the loader's decoder), in the same run,
alternating the order of the choices over the rounds and keeping each one's
best round. Prints bytes per image, the ratio against PNG (the paper's format
and the default ``image_format``), write and read ms per image, the PSNR of
lossy choices against the pixels, and the disk for the paper's 2.6M generated
images (two sources of 1,300 per class for 1,000 classes).

    python bench/storage.py [--images 48] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from contam.images import load_rgb, save_image
from synthetic_images import photo_crops

PAPER_IMAGES = 2 * 1000 * 1300
# (name, contam image_format, quality or None for lossless)
CHOICES = [
    ("png", "png", None),
    ("jpeg q75", "jpeg", 75),
    ("jpeg q90", "jpeg", 90),
    ("jpeg q95", "jpeg", 95),
    ("webp q80", "webp", 80),
    ("webp q90", "webp", 90),
    ("webp lossless", "webp", None),
    # What prepare.enabled stores beside the originals (contam.prepare, the defaults).
    ("cached copy 256 px q90", "cache", 90),
]


def save(array: np.ndarray, path: Path, image_format: str, quality: int | None) -> None:
    if image_format == "cache":
        from PIL import Image

        from contam import prepare

        data, _ = prepare.encode(Image.fromarray(array), prepare.Settings(short_side=256, jpeg_quality=quality))
        path.write_bytes(data)
        return
    if image_format == "webp" and quality is None:
        # save_image has no lossless WebP; Pillow's lossless=True at its default method.
        from PIL import Image

        from contam.io import atomic_path

        with atomic_path(path) as tmp:
            Image.fromarray(array).save(tmp, format="WEBP", lossless=True)
        return
    save_image(array, path, image_format, quality=quality or 95)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def one_round(images: list[np.ndarray], folder: Path, name: str, image_format: str, quality: int | None) -> dict:
    suffix = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "cache": ".jpg"}[image_format]
    paths = [folder / f"{i:04d}{suffix}" for i in range(len(images))]
    start = time.perf_counter()
    for array, path in zip(images, paths):
        save(array, path, image_format, quality)
    write = (time.perf_counter() - start) / len(images)
    start = time.perf_counter()
    decoded = [np.asarray(load_rgb(path)) for path in paths]
    read = (time.perf_counter() - start) / len(images)
    return {
        "bytes": float(np.mean([path.stat().st_size for path in paths])),
        "write_ms": write * 1e3,
        "read_ms": read * 1e3,
        # A cached copy has fewer pixels than the image: no PSNR against it.
        "psnr": float(np.mean([psnr(a, b) for a, b in zip(images, decoded)])) if image_format != "cache" else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = photo_crops(args.images, args.side, args.side)
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = CHOICES if r % 2 == 0 else CHOICES[::-1]
            for name, image_format, quality in order:
                folder = Path(tmp) / f"{name.replace(' ', '-')}-{r}"
                folder.mkdir()
                result = one_round(images, folder, name, image_format, quality)
                kept = best.setdefault(name, result)
                kept["write_ms"] = min(kept["write_ms"], result["write_ms"])
                kept["read_ms"] = min(kept["read_ms"], result["read_ms"])
            print(f"round {r} done")
    png = best["png"]
    print(f"\n{args.images} photographic {args.side}x{args.side} images; times: best of {args.rounds} alternating rounds, one thread\n")
    print(f"| choice | kB per image | vs PNG | write ms | read ms | PSNR dB | disk for {PAPER_IMAGES / 1e6:.1f}M images |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, _, _ in CHOICES:
        b = best[name]
        quality = "lossless" if b["psnr"] == float("inf") else "n/a" if np.isnan(b["psnr"]) else f"{b['psnr']:.1f}"
        print(
            f"| {name} | {b['bytes'] / 1e3:.1f} | {b['bytes'] / png['bytes']:.3f} | {b['write_ms']:.1f} | {b['read_ms']:.1f} | "
            f"{quality} | {b['bytes'] * PAPER_IMAGES / 1e9:,.0f} GB |"
        )


if __name__ == "__main__":
    main()
