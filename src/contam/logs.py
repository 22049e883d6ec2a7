"""Logging set-up shared by the glue scripts, and a throughput meter."""

from __future__ import annotations

import logging
import os
import sys
import time


def setup(log_path: str | None, threads: int | None = None) -> logging.Logger:
    """Send logging, warnings and stderr (tqdm) to the rule's log file."""
    if log_path:
        stream = open(log_path, "a", buffering=1)
        sys.stderr = stream
        sys.stdout = stream
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.captureWarnings(True)
    # The hub libraries read this once, at import: it tells whether this job could download.
    logging.getLogger("contam").info("HF_HUB_OFFLINE=%s", os.environ.get("HF_HUB_OFFLINE", "<unset>"))
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return logging.getLogger("contam")


class Throughput:
    """Counts items and reports items/s since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.count = 0

    def add(self, n: int) -> None:
        self.count += n

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return self.count / max(self.seconds, 1e-9)

    def __str__(self) -> str:
        return f"{self.count} in {self.seconds:.1f} s ({self.rate:.1f}/s)"
