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


def photo_crops(count: int, width: int, height: int) -> list[np.ndarray]:
    """``count`` distinct HxWx3 photos: crops of scikit-learn's two sample photos.

    scikit-learn ships two real photographs (427x640: a temple in China, a
    flower), so no download is needed. Each is scaled (Lanczos) so the crop fits
    with room to move, then cropped at spread-out offsets, mirrored on every other
    image: natural-image statistics, which decide JPEG/PNG/WebP sizes and decode
    times, unlike noise. Crops overlap, so they are not independent photos.
    """
    from sklearn.datasets import load_sample_images

    scaled = []
    for array in load_sample_images().images:
        photo = Image.fromarray(array)
        scale = 1.25 * max(width / photo.width, height / photo.height)
        scaled.append(np.asarray(photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.LANCZOS)))
    out = []
    for i in range(count):
        source = scaled[i % len(scaled)]
        step = i // len(scaled)
        x = (step * 37) % (source.shape[1] - width + 1)
        y = (step * 23) % (source.shape[0] - height + 1)
        crop = source[y : y + height, x : x + width]
        out.append(np.ascontiguousarray(crop[:, ::-1] if step % 2 else crop))
    return out


def make_photo_jpegs(root: Path, count: int, classes: int, width: int = 500, height: int = 375, quality: int = 90) -> pd.DataFrame:
    """ImageNet-like files: ``count`` JPEGs of ``width`` x ``height`` (ImageNet's
    typical 500x375) at ``quality``, from ``photo_crops``; returns (path, label)."""
    rows = []
    for i, array in enumerate(photo_crops(count, width, height)):
        label = i % classes
        folder = Path(root) / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:06d}.JPEG"
        Image.fromarray(array).save(path, quality=quality)
        rows.append((str(path), label))
    return pd.DataFrame(rows, columns=["path", "label"])
