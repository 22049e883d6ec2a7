"""Choosing the torch device and dtype from the config, and deterministic kernels."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import torch

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# cuBLAS is deterministic only with a fixed workspace; this is one of the two
# settings PyTorch documents as deterministic.
CUBLAS_WORKSPACE = ":4096:8"


class NoGPUError(RuntimeError):
    """A job that asked for GPUs found no CUDA device."""


def pick_device(setting: str = "auto", gpus: int = 0, allow_cpu_fallback: bool = False) -> torch.device:
    """The device for ``setting`` (auto, cpu, cuda, cuda:N, ...).

    A job given GPUs (``gpus`` > 0) that would run on CUDA but finds none
    raises NoGPUError: silently training on the CPU instead takes days and
    can change results. ``allow_cpu_fallback`` turns that into a warning.
    """
    wants_cuda = setting == "auto" or setting.startswith("cuda")
    if gpus > 0 and wants_cuda and not torch.cuda.is_available():
        problem = (
            f"the job asked for {gpus} GPU{'s' if gpus != 1 else ''} (device: {setting}) but torch sees no CUDA device "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}, "
            f"torch {torch.__version__} built for CUDA {torch.version.cuda or 'none (a CPU-only build)'})"
        )
        if not allow_cpu_fallback:
            raise NoGPUError(f"{problem}; to run on the CPU anyway set execution.allow_cpu_fallback: true")
        log.warning("%s; running on the CPU because execution.allow_cpu_fallback is true", problem)
        return torch.device("cpu")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def describe(device: torch.device) -> str:
    """What a job runs on, for its log: ``cuda:0 (NVIDIA H200, 1 visible)``, ``cpu (8 threads)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)}, {torch.cuda.device_count()} visible)"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def job_device(execution: dict, gpus: int) -> torch.device:
    """A job's device from the config's ``execution`` section and the GPUs it was given, logged."""
    device = pick_device(execution["device"], gpus=gpus, allow_cpu_fallback=execution["allow_cpu_fallback"])
    log.info("device: %s", describe(device))
    return device


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic kernels (or an error from an op that has none) while inside.

    Must be entered before the first cuBLAS call of the process, which reads
    CUBLAS_WORKSPACE_CONFIG once. The previous settings come back on exit, so
    one deterministic run does not change the kernels of what follows in the
    same process (tests). Does nothing when ``enabled`` is false.
    """
    if not enabled:
        yield
        return
    before = (os.environ.get("CUBLAS_WORKSPACE_CONFIG"), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    log.info("deterministic algorithms on (CUBLAS_WORKSPACE_CONFIG=%s, cudnn.benchmark off)", CUBLAS_WORKSPACE)
    try:
        yield
    finally:
        workspace, algorithms, warn_only, benchmark = before
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
