"""Benchmark: training items/s of the captioner's dataset, with its in-memory cache against without.

Draws digit-scene-like PNGs (32x32, two coloured blocks on black, five captions
each) in a temporary folder, then reads epochs of training items
``(index, augmentation seed)`` through ``contam.captioner.CaptionDataset`` +
DataLoader at the digits preset's settings (16 px, batch 16, no augmentation)
twice: with the dataset's cache (decoded pixels kept after their first read,
the default for a dataset under ``CACHE_BYTES``) and with the cache off (every
item decoded from its file, as before the cache). Alternates the two over the
rounds and keeps each one's best round. Prints items/s of both and the ratio
(cached / uncached); the first epoch of a cached run decodes every file, so
``--epochs`` sets how many epochs one round reads (the preset trains 12).

    python bench/caption_loader.py [--images 800] [--epochs 12] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

from contam.captioner import CaptionDataset, Vocabulary, caption_lists

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def make_scenes(root: Path, count: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        pixels = np.zeros((32, 32, 3), np.uint8)
        for cell, colour in zip(rng.choice(4, 2, replace=False), rng.choice(4, 2)):
            row, col = divmod(int(cell), 2)
            pixels[row * 16 + 3 : row * 16 + 13, col * 16 + 5 : col * 16 + 11] = COLOURS[int(colour)]
        path = root / f"{i}.png"
        Image.fromarray(pixels).save(path)
        rows.append({"image_id": i, "path": str(path), "captions": [f"scene {i % 10} caption {k}" for k in range(5)]})
    return pd.DataFrame(rows)


def items_per_s(dataset: CaptionDataset, epochs: int, batch_size: int) -> float:
    keys = [(i, 1000 * epoch + i) for epoch in range(epochs) for i in range(len(dataset))]
    loader = DataLoader(keys, batch_size=batch_size, shuffle=False, collate_fn=lambda batch: [dataset[k] for k in batch])
    start = time.perf_counter()
    for _ in loader:
        pass
    return len(keys) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_scenes(Path(tmp), args.images)
        vocab = Vocabulary.build(c for captions in caption_lists(manifest) for c in captions)
        best = {"cached": 0.0, "uncached": 0.0}
        for _ in range(args.rounds):
            for name in best:
                dataset = CaptionDataset(manifest, vocab, args.image_size, 16)
                if name == "uncached":
                    dataset.cache = None
                best[name] = max(best[name], items_per_s(dataset, args.epochs, args.batch_size))
    print(f"{args.images} images x {args.epochs} epochs, {args.image_size} px, batch {args.batch_size}, best of {args.rounds} rounds")
    print(f"uncached (decode every item): {best['uncached']:,.0f} items/s")
    print(f"cached (decode once per run): {best['cached']:,.0f} items/s")
    print(f"ratio cached / uncached: {best['cached'] / best['uncached']:.2f}x")


if __name__ == "__main__":
    main()
