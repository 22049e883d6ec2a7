"""Benchmark: training images/s of contam.train against a minimal PyTorch loop.

Four measurements in one run, all with the same timm model, precision, batch
size, optimiser (SGD + Nesterov) and device:

1. baseline, synthetic: a plain PyTorch loop over in-memory tensors;
2. contam.train, synthetic: our loop (sampler, schedule, checkpoint code path,
   accounting) over the same in-memory tensors;
3. baseline, files: the plain loop over torchvision ImageFolder on JPEGs;
4. contam.train, files: our loop over the same JPEGs through ManifestDataset;

with the same augmentation transform for 3 and 4. Each is measured on its
second epoch (the first warms up allocators, workers and caches). Prints
images/s and the ratios 2/1 and 4/3.

Defaults are a CPU-sized configuration (resnet18 at 64 px, batch 32, 12 steps per
epoch). The paper's size on a GPU:

    python bench/train.py --arch resnet50 --image-size 224 --batch-size 256 \\
        --steps 30 --precision bf16 --channels-last --workers 8
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder

from contam import train
from contam.devices import DTYPES, pick_device
from contam.models import create_model, train_transform
from synthetic_images import make_jpegs

CLASSES = 10


class Synthetic(Dataset):
    """In-memory images; accepts contam's (index, seed) keys and plain indices."""

    def __init__(self, size: int, image_size: int, pool: int = 256):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(min(pool, size), 3, image_size, image_size, generator=g)
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        return self.images[i % len(self.images)], i % CLASSES


def plain_loop(args, device, loader) -> tuple[int, float]:
    """The baseline: what one writes first, no extras. Returns (images, seconds) of epoch 2."""
    torch.manual_seed(0)
    model = create_model(args.arch, CLASSES).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    model.train()
    seen, seconds = 0, 0.0
    for epoch in range(2):
        start, seen = time.perf_counter(), 0
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=DTYPES[args.precision], enabled=args.precision != "fp32"):
                loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            float(loss.detach())  # what our loop logs per step, and a device sync
            seen += len(labels)
        seconds = time.perf_counter() - start
    return seen, seconds


def ours(args, device, manifest, dataset, out: Path) -> tuple[int, float]:
    """contam.train for two epochs. Returns (images, seconds) of epoch 2, from its train_log.csv."""
    recipe = {
        "epochs": 2, "batch_size": args.batch_size, "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
        "weight_decay": 1e-4, "warmup_epochs": 0, "label_smoothing": 0.1, "precision": args.precision,
        "channels_last": args.channels_last, "augment": {"crop_scale": [0.08, 1.0], "hflip": True},
    }
    model = {"arch": args.arch, "image_size": args.image_size, "kwargs": {}}
    train.train(manifest, model, recipe, CLASSES, seed=0, out_dir=out, fingerprint="bench", device=device, num_workers=args.workers, dataset=dataset)
    second = pd.read_csv(out / "train_log.csv").iloc[1]
    return int(round(second["images_per_s"] * second["seconds"])), float(second["seconds"])


def measure_all(args, device, tmp: Path, budget=None) -> tuple[dict[str, tuple[int, float]], pd.DataFrame]:
    """The four measurements: {name: (images, seconds) of epoch 2}, and the JPEGs' (path, label) table.

    ``budget`` (bench/all.py) is asked before each measurement whether it still
    fits: ``budget(name, seconds_guess)`` returns False to skip it.
    """
    n = args.steps * args.batch_size
    pin = device.type == "cuda"
    results = {}

    def run(name: str, measure) -> None:
        # Two epochs of the last measurement, with a margin for start-up.
        guess = 3 * max((s for _, s in results.values()), default=0.0)
        if budget is None or budget(name, guess):
            results[name] = measure()

    synthetic = Synthetic(n, args.image_size)
    run("baseline, synthetic", lambda: plain_loop(args, device, DataLoader(synthetic, batch_size=args.batch_size, shuffle=True, pin_memory=pin)))
    index = pd.DataFrame({"path": ["-"] * n, "label": np.arange(n) % CLASSES})
    run("contam, synthetic", lambda: ours(args, device, index, synthetic, tmp / "ours-synthetic"))
    side = int(round(args.image_size * 8 / 7))
    manifest = make_jpegs(tmp / "images", n, CLASSES, side)
    transform = train_transform(args.image_size, {})

    def baseline_files():
        folder = DataLoader(
            ImageFolder(tmp / "images", transform=transform), batch_size=args.batch_size, shuffle=True,
            num_workers=args.workers, pin_memory=pin, persistent_workers=args.workers > 0,
        )
        return plain_loop(args, device, folder)

    run("baseline, files", baseline_files)
    run("contam, files", lambda: ours(args, device, manifest, None, tmp / "ours-files"))
    return results, manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="steps per epoch")
    parser.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"{args.arch} at {args.image_size} px, batch {args.batch_size}, {args.steps} steps/epoch, {args.precision}, {device}, {args.workers} workers, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        timed, _ = measure_all(args, device, Path(tmp))
    results = {name: images / seconds for name, (images, seconds) in timed.items()}
    print(flush=True)
    for name, value in results.items():
        print(f"{name:22s} {value:9.1f} images/s")
    print(f"ratio contam / baseline, synthetic: {results['contam, synthetic'] / results['baseline, synthetic']:.3f}")
    print(f"ratio contam / baseline, files:     {results['contam, files'] / results['baseline, files']:.3f}")


if __name__ == "__main__":
    main()
