"""Stage gather_generated: join a source's shard indexes into one table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from contam.io import read_parquet


def gather(shard_indexes: list[str | Path], shard_counts: list[str | Path]) -> tuple[pd.DataFrame, dict]:
    frames = [read_parquet(p) for p in shard_indexes]
    index = pd.concat(frames, ignore_index=True).sort_values("row", ignore_index=True)
    if index["row"].duplicated().any():
        raise ValueError(f"row {index['row'][index['row'].duplicated()].iloc[0]} appears in two shards")
    totals: dict = {"shards": len(frames), "images": len(index)}
    for path in shard_counts:
        for key, value in json.loads(Path(path).read_text()).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "images_per_s":
                totals[key] = totals.get(key, 0) + value
    return index, totals
