"""Reading images defensively and writing them atomically.

Real datasets hold truncated files, grayscale and CMYK JPEGs, palette PNGs and
upper-case extensions. Everything is converted to RGB on read; a file that cannot
be decoded is reported to the caller, which skips and counts it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from contam.io import atomic_path

FORMATS = {"png": ("PNG", ".png"), "jpeg": ("JPEG", ".jpg"), "webp": ("WEBP", ".webp")}
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image fully and return it as RGB (raises on a bad file)."""
    with Image.open(path) as image:
        image.load()
        # convert() handles L, LA, P, CMYK and RGBA alike; 16-bit grayscale is
        # scaled down first since PIL would clip it.
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = image.point(lambda v: v / 256).convert("L")
        return image.convert("RGB") if image.mode != "RGB" else image.copy()


def check_image(path: str | os.PathLike) -> str | None:
    """None if the file decodes, else a short reason."""
    try:
        load_rgb(path)
    except DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}"
    return None


def save_image(array: np.ndarray, path: str | os.PathLike, image_format: str = "png", quality: int = 95, storage_size: int | None = None) -> None:
    """Write an HxWx3 uint8 array atomically (temporary name, then rename).

    ``quality`` applies to JPEG and WebP; ``storage_size`` scales the image so
    its shorter side has that many pixels (Lanczos), keeping the aspect ratio.
    """
    pil_format, _ = FORMATS[image_format]
    image = Image.fromarray(array)
    if storage_size and min(image.size) != storage_size:
        scale = storage_size / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    with atomic_path(path) as tmp:
        kwargs = {} if pil_format == "PNG" else {"quality": quality}
        image.save(tmp, format=pil_format, **kwargs)


def image_problem(array: np.ndarray, expected_hw: tuple[int, int]) -> str | None:
    """Why a generated image is unusable (one flat colour, wrong size), or None."""
    if array.shape[:2] != tuple(expected_hw):
        return f"wrong size {array.shape[1]}x{array.shape[0]}, expected {expected_hw[1]}x{expected_hw[0]}"
    if int(array.max()) - int(array.min()) == 0:
        return "one flat colour"
    return None


def is_complete_image(path: Path) -> bool:
    """A file written by save_image exists only complete; still, check it decodes."""
    return path.exists() and check_image(path) is None
