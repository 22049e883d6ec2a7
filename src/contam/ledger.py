"""The ledger of measured jobs that the cost plan is fitted on.

One Parquet file per device kind (``ledger/cuda-nvidia-h200.parquet``,
``ledger/cpu-amd-epyc-9b14.parquet``), one row per measured job: the rule, the
work it did in the rule's own unit (see ``contam.work``), and what it cost
(wall and CPU seconds, peak memory). Two kinds of rows flow in:

- Snakemake's ``benchmark:`` files of a finished run, through
  ``gather_benchmarks`` (``python -m contam.plan gather``);
- the bench/ scripts (``make bench-gpu``), through ``append``.

Rows are keyed, so gathering the same run twice adds nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
import re
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

from contam import io

COLUMNS = {
    "device_kind": "string",  # "cpu:AMD EPYC 9B14", "cuda:NVIDIA H200"
    "rule": "string",  # a Snakemake rule, or the rule a bench stands in for
    "job": "string",  # the job's wildcards, or the bench configuration
    "work": "float64",  # in the rule's unit (contam.work.UNITS)
    "work_unit": "string",
    "wall_s": "float64",
    "cpu_s": "float64",  # user + system; NaN where not measured
    "max_rss_mb": "float64",
    "threads": "int64",
    "gpus": "int64",
    "settings": "string",  # JSON: the settings the rate depends on (precision, batch)
    "origin": "string",  # "benchmark:<file>" or "bench:<script>"
    "experiment": "string",
    "measured_at": "string",  # ISO date-time of the measurement
    "host": "string",
}
KEY = ["rule", "job", "origin", "experiment", "measured_at"]


class LedgerError(ValueError):
    """A row that cannot go into the ledger (a missing column, a negative time)."""


def this_cpu() -> str:
    """The CPU's model name, as /proc/cpuinfo (or platform) gives it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    return platform.processor() or platform.machine() or "unknown"


def cpu_kind() -> str:
    return f"cpu:{this_cpu()}"


def cuda_kind(index: int = 0) -> str:
    import torch

    return f"cuda:{torch.cuda.get_device_name(index)}"


def this_device_kind(device: str = "cpu") -> str:
    """``cuda:<name>`` for a CUDA device, else the CPU's kind."""
    return cuda_kind() if device.startswith("cuda") else cpu_kind()


def slug(device_kind: str) -> str:
    """A file name for a device kind: ``cuda:NVIDIA H200`` -> ``cuda-nvidia-h200``."""
    return re.sub(r"[^a-z0-9]+", "-", device_kind.lower()).strip("-")


def ledger_file(ledger_dir: str | os.PathLike, device_kind: str) -> Path:
    return Path(ledger_dir) / f"{slug(device_kind)}.parquet"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def settings_json(settings: dict | None) -> str:
    return json.dumps(settings or {}, sort_keys=True, separators=(",", ":"))


def frame(rows: Iterable[dict]) -> pd.DataFrame:
    """Rows as a ledger table: every column present and typed, nothing negative."""
    table = pd.DataFrame(list(rows))
    for column in ("cpu_s", "max_rss_mb"):
        if column not in table:
            table[column] = float("nan")
    for column, default in (("threads", 1), ("gpus", 0), ("settings", "{}"), ("experiment", ""), ("host", platform.node())):
        if column not in table:
            table[column] = default
    if "measured_at" not in table:
        table["measured_at"] = now()
    missing = [c for c in COLUMNS if c not in table]
    if missing:
        raise LedgerError(f"ledger rows lack column(s) {missing}")
    table = table[list(COLUMNS)].astype(COLUMNS)
    bad = table[(table["wall_s"] < 0) | (table["work"] <= 0) | table["wall_s"].isna()]
    if len(bad):
        first = bad.iloc[0]
        raise LedgerError(f"ledger row for rule {first['rule']!r} job {first['job']!r}: wall_s must be >= 0 and work > 0")
    return table


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two bench scripts (or a bench and a gather) may append at once.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read(ledger_dir: str | os.PathLike, device_kind: str | None = None) -> pd.DataFrame:
    """One device kind's rows, or every kind's when ``device_kind`` is None."""
    files = [ledger_file(ledger_dir, device_kind)] if device_kind else sorted(Path(ledger_dir).glob("*.parquet"))
    tables = [io.read_parquet(f) for f in files if f.exists()]
    if not tables:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})
    return pd.concat(tables, ignore_index=True).astype(COLUMNS)


def append(rows: Iterable[dict], ledger_dir: str | os.PathLike) -> dict[str, int]:
    """Add rows to their device kinds' files; a row already there (same key) is kept once.

    Returns the number of new rows per device kind.
    """
    new = frame(rows)
    added = {}
    for kind, group in new.groupby("device_kind", sort=True):
        path = ledger_file(ledger_dir, kind)
        with _locked(path):
            old = io.read_parquet(path).astype(COLUMNS) if path.exists() else group.iloc[:0]
            merged = pd.concat([old, group], ignore_index=True).drop_duplicates(KEY, keep="first")
            added[kind] = len(merged) - len(old)
            merged = merged.sort_values(["rule", "measured_at", "job", "origin"], kind="stable")
            io.write_parquet(merged, path)
    return added


def read_benchmark_file(path: str | os.PathLike) -> dict:
    """Wall, CPU and peak memory of one Snakemake ``benchmark:`` file (its last repeat).

    Snakemake writes ``s``, ``max_rss`` (MB) and ``cpu_time`` (s); a column it
    could not measure is "-" or "NA".
    """
    table = pd.read_csv(path, sep="\t")
    if table.empty or "s" not in table:
        raise LedgerError(f"{path}: not a Snakemake benchmark file (no 's' column)")
    last = table.iloc[-1]

    def number(column: str) -> float:
        value = pd.to_numeric(last.get(column, float("nan")), errors="coerce")
        return float(value)

    return {"wall_s": number("s"), "cpu_s": number("cpu_time"), "max_rss_mb": number("max_rss")}
