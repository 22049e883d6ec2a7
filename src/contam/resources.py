"""Job sizes that grow with the retry attempt, capped at the partition limit.

Rules ask only for standard resources (threads, mem_mb, runtime, gpu); a job
that ran out of time or memory is retried with more, never past the cap.
"""

from __future__ import annotations

def resource_set(config: dict, rule: str) -> dict:
    """``resources.default`` with the rule's own entry on top (the schema fills the defaults)."""
    sizes = config["resources"]
    return {**sizes["default"], **sizes.get(rule, {})}


def scaled(base: float, attempt: int, growth: float, cap: float) -> int:
    """``base * growth**(attempt-1)``, never more than ``cap``."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    return int(min(base * growth ** (attempt - 1), cap))


def runtime_minutes(config: dict, rule: str, attempt: int) -> int:
    sizes = config["resources"]
    return scaled(resource_set(config, rule)["runtime"], attempt, sizes["growth"], sizes["max_runtime"])


def mem_mb(config: dict, rule: str, attempt: int) -> int:
    sizes = config["resources"]
    return scaled(resource_set(config, rule)["mem_mb"], attempt, sizes["growth"], sizes["max_mem_mb"])
