"""Synthetic JPEG folders shared by the benchmarks (root/c<label>/<i>.jpg)."""

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def make_jpegs(root: Path, count: int, classes: int, side: int) -> pd.DataFrame:
    """``count`` JPEGs of ``side`` px in ``classes`` folders; returns (path, label)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (max(1, side // 8), max(1, side // 8), 3), dtype=np.uint8)
    rows = []
    for i in range(count):
        label = i % classes
        folder = Path(root) / f"c{label:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        # Smooth content plus noise: JPEG sizes like photos, not like pure noise.
        image = Image.fromarray(np.roll(base, i, axis=0)).resize((side, side), Image.BILINEAR)
        array = np.asarray(image).astype(np.int16) + rng.integers(-20, 20, (side, side, 3))
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(array.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        rows.append((str(path), label))
    return pd.DataFrame(rows, columns=["path", "label"])
