"""Job sizes that grow with the retry attempt, capped at the partition limit.

Rules ask only for standard resources (threads, mem_mb, runtime, gpu); a job
that ran out of time or memory is retried with more, never past the cap.
"""

from __future__ import annotations

RULES_WITH_SIZES = ("fit_generator", "generate_shard", "train", "evaluate")


def resource_set(config: dict, rule: str) -> dict:
    sizes = config.get("resources", {})
    base = {"threads": 1, "mem_mb": 2000, "runtime": 30, "gpu": 0}
    base.update(sizes.get("default", {}))
    base.update(sizes.get(rule, {}))
    return base


def scaled(base: float, attempt: int, growth: float, cap: float) -> int:
    """``base * growth**(attempt-1)``, never more than ``cap``."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    return int(min(base * growth ** (attempt - 1), cap))


def runtime_minutes(config: dict, rule: str, attempt: int) -> int:
    sizes = config.get("resources", {})
    return scaled(resource_set(config, rule)["runtime"], attempt, sizes.get("growth", 2.0), sizes.get("max_runtime", 2880))


def mem_mb(config: dict, rule: str, attempt: int) -> int:
    sizes = config.get("resources", {})
    return scaled(resource_set(config, rule)["mem_mb"], attempt, sizes.get("growth", 2.0), sizes.get("max_mem_mb", 256000))
