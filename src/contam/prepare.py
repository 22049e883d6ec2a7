"""Cached copies: every image of an index resized once, re-encoded once, reused by every run.

At ImageNet scale JPEG decoding on the CPU, not the GPU, limits a ResNet-50:
an average ImageNet image (~500x375) has 2.9x the pixels of a 256-short-side
copy, and a 512x512 generated PNG has 4x and decodes slower still. The rule
``prepare_cached_copies`` runs ``prepare_index`` once per collection of images
(the real index, each generated or folder control source, each OOD set) and
every later training or evaluation run decodes the small copies.

What is done to an image, the same for real and generated ones (one function,
``prepare_image``, with one ``Settings``), so caching adds no format
difference between the arms:

- decoded defensively (``contam.images.load_rgb``: CMYK, grayscale, palette
  and 16-bit files become RGB);
- resized so its shorter side is ``short_side`` pixels with Lanczos (the filter
  ``contam.images.save_image`` uses for ``storage_size``), keeping the aspect
  ratio; an image whose shorter side is already at most ``short_side`` keeps its
  size (never upscaled; its record says ``resized: false``);
- written as a baseline JPEG at ``jpeg_quality`` with 4:2:0 chroma subsampling
  (libjpeg's default, and how most ImageNet photos are stored), no EXIF or ICC
  profile, atomically.

Every argument of the encoder is fixed here rather than left to Pillow's
defaults, so the same source gives byte-identical copies on every rerun with
the same Pillow (tested). A copy's name is a hash of its source path and
content id, under a folder named by the settings, so changed settings or an
image rewritten in place never reuse a stale copy; a copy that exists is never
redone (resume after a kill). An image that cannot be decoded is skipped and
counted, as at indexing.

The training and evaluation loaders find the copies through ``cached_paths``:
manifests keep listing the original paths (so caching never changes which
images a mix picks) and each job swaps in the cached path before building
``contam.models.ManifestDataset``.
"""

from __future__ import annotations

import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from contam.images import DECODE_ERRORS, load_rgb
from contam.io import atomic_path, stable_hash
from contam.logs import Throughput

log = logging.getLogger(__name__)

# Bump when what prepare_image does changes: copies then go to a new folder.
VERSION = 1
RESAMPLE = Image.Resampling.LANCZOS
SUBSAMPLING = "4:2:0"
RECORD_COLUMNS = [
    "source_path", "path", "original_width", "original_height", "width", "height",
    "resized", "format", "quality", "bytes",
]


@dataclass(frozen=True)
class Settings:
    """What a cached copy is: the config's ``prepare`` section minus ``enabled``."""

    short_side: int = 256
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if int(self.short_side) < 1:
            raise ValueError(f"prepare.short_side: must be at least 1, got {self.short_side}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ValueError(f"prepare.jpeg_quality: must be 1..100, got {self.jpeg_quality}")

    @classmethod
    def from_config(cls, section: dict) -> "Settings":
        return cls(short_side=int(section.get("short_side", 256)), jpeg_quality=int(section.get("jpeg_quality", 90)))

    @property
    def id(self) -> str:
        """Names the copies' folder: everything that decides their bytes."""
        return stable_hash({**asdict(self), "version": VERSION, "resample": "lanczos", "subsampling": SUBSAMPLING})


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side at ``short_side``; unchanged if already no larger."""
    shorter = min(width, height)
    if shorter <= short_side:
        return width, height
    if width <= height:
        return short_side, max(1, round(height * short_side / width))
    return max(1, round(width * short_side / height)), short_side


def encode(image: Image.Image, settings: Settings) -> tuple[bytes, tuple[int, int]]:
    """The cached copy's JPEG bytes and its (width, height)."""
    size = target_size(image.width, image.height, settings.short_side)
    if size != image.size:
        image = image.resize(size, RESAMPLE)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(settings.jpeg_quality), subsampling=SUBSAMPLING,
               optimize=False, progressive=False)
    return buffer.getvalue(), size


def copy_name(source_path: str, content_id: str | None = None) -> str:
    """A copy's path relative to the images folder: 256 fan-out folders of hashed names."""
    key = stable_hash({"path": str(source_path), "content": content_id}, length=20)
    return f"{key[:2]}/{key}.jpg"


def _record(source_path: str, path: str, original: tuple[int, int], size: tuple[int, int], settings: Settings, nbytes: int) -> dict:
    return {
        "source_path": str(source_path), "path": str(path),
        "original_width": int(original[0]), "original_height": int(original[1]),
        "width": int(size[0]), "height": int(size[1]),
        "resized": tuple(size) != tuple(original), "format": "jpeg",
        "quality": int(settings.jpeg_quality), "bytes": int(nbytes),
    }


def prepare_image(source_path: str | os.PathLike, cached_path: str | os.PathLike, settings: Settings) -> tuple[dict, bool]:
    """Write one cached copy unless it exists; returns (its record, whether it was written).

    Raises one of ``contam.images.DECODE_ERRORS`` for a source that cannot be decoded.
    """
    cached = Path(cached_path)
    if cached.exists():
        # Written atomically, so it exists only complete: read sizes from headers only.
        with Image.open(source_path) as source, Image.open(cached) as copy:
            original, size = source.size, copy.size
        return _record(source_path, cached, original, size, settings, cached.stat().st_size), False
    image = load_rgb(source_path)
    data, size = encode(image, settings)
    with atomic_path(cached) as tmp:
        tmp.write_bytes(data)
    return _record(source_path, cached, image.size, size, settings, len(data)), True


def prepare_index(index: pd.DataFrame, images_dir: str | os.PathLike, settings: Settings, workers: int = 1) -> tuple[pd.DataFrame, dict]:
    """Cached copies of every image of ``index`` (a ``path`` column, optionally ``content_id``).

    Returns the records (``RECORD_COLUMNS``, one row per image copied, in the
    index's order) and counts: images found, written now, reused from an earlier
    run, skipped because they could not be decoded (with examples), resized and
    kept at their size, and the bytes before and after. Pillow releases the GIL
    while decoding, resizing and encoding, so threads scale.
    """
    images_dir = Path(images_dir)
    paths = index["path"].astype(str).tolist()
    contents = index["content_id"].astype(str).tolist() if "content_id" in index else [None] * len(paths)
    targets = [images_dir / copy_name(p, c) for p, c in zip(paths, contents)]

    def one(item):
        source, target = item
        try:
            return prepare_image(source, target, settings)
        except DECODE_ERRORS as error:
            return f"{type(error).__name__}: {error}", None

    meter = Throughput()
    with ThreadPoolExecutor(max(1, int(workers))) as pool:
        results = []
        for result in tqdm(pool.map(one, zip(paths, targets)), total=len(paths), desc="cached copies", mininterval=10):
            results.append(result)
            meter.add(1)
    log.info("cached copies: %s images", meter)
    records = [record for record, written in results if written is not None]
    skipped = [(path, why) for path, (why, written) in zip(paths, results) if written is None]
    for path, why in skipped[:20]:
        log.warning("skipping image %s (%s)", path, why)
    frame = pd.DataFrame(records, columns=RECORD_COLUMNS)
    source_bytes = sum(_size(p) for p in frame["source_path"])
    counts = {
        "settings": asdict(settings) | {"id": settings.id, "version": VERSION},
        "found": len(paths),
        "cached": len(records),
        "written": sum(bool(w) for _, w in results if w is not None),
        "reused": sum(w is False for _, w in results),
        "skipped": len(skipped),
        "skipped_examples": skipped[:20],
        "resized": int(frame["resized"].sum()),
        "kept_size": int((~frame["resized"]).sum()),
        "source_bytes": int(source_bytes),
        "cached_bytes": int(frame["bytes"].sum()),
        "pillow": Image.__version__,
    }
    return frame, counts


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


class MissingCopy(LookupError):
    """A manifest row whose image has no cached copy."""


def cached_paths(table: pd.DataFrame, records: list[pd.DataFrame]) -> pd.DataFrame:
    """``table`` with each ``path`` replaced by its cached copy's (``source_path`` keeps the original).

    Every row must have a copy: a row without one (its image could not be
    decoded when the copies were made) raises MissingCopy naming it, since
    reading the original instead would mix storage formats in one run.
    """
    lookup = pd.concat(records, ignore_index=True)[["source_path", "path"]].drop_duplicates("source_path")
    mapping = pd.Series(lookup["path"].to_numpy(), index=lookup["source_path"].astype(str).to_numpy())
    original = table["path"].astype(str)
    cached = original.map(mapping)
    missing = cached.isna()
    if missing.any():
        first = original[missing].iloc[0]
        raise MissingCopy(
            f"{int(missing.sum())} image(s) have no cached copy, e.g. {first}; see the counts of rule "
            "prepare_cached_copies (skipped images), or set prepare.enabled: false"
        )
    return table.assign(path=cached.to_numpy(), source_path=original.to_numpy())
