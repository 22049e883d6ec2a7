"""Atomic, deterministic writing of the workflow's files.

Every output goes to a temporary name in the same folder and is renamed into
place, so a killed job never leaves a half-written file under the final name.
Parquet tables are written with a fixed layout so the same rows give the same
bytes (the manifests' byte-identity rests on this).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write ``frame`` atomically; identical frames give identical bytes.

    ``metadata`` (JSON-able) is stored under the schema key ``contam``, with
    sorted keys so it too is byte-stable; :func:`parquet_metadata` reads it.
    """
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    # pandas' schema metadata records nothing run-specific, but drop it anyway so
    # a file depends only on the column data and types.
    table = table.replace_schema_metadata({b"contam": json.dumps(metadata, sort_keys=True, default=str)} if metadata is not None else None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    return pq.read_table(path, columns=columns).to_pandas()


def parquet_metadata(path: str | os.PathLike) -> dict | None:
    """The ``metadata`` a table was written with by :func:`write_parquet`, or None."""
    stored = (pq.read_schema(path).metadata or {}).get(b"contam")
    return json.loads(stored) if stored is not None else None


def write_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stable_hash(obj: Any, length: int = 12) -> str:
    """Short hash of a JSON-able object, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]
