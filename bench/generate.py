"""Benchmark: text-to-image throughput of contam's diffusers path.

An SD-1.5-shaped pipeline (the real UNet, VAE and CLIP text-encoder configs
with random weights: the FLOPs of the real model, no download) generates
batches through ``contam.generate.DiffusersSampler``, the code the workflow
runs (per-image CPU generators, DDIM, classifier-free guidance, uint8
conversion). Writing files is left out: the workflow does it in a thread pool.

Each configuration is ``dtype:attention:batch[:compile]``. The baseline is the
paper's CompVis-era setting, fp32 with classic attention at batch 1, measured
in the same run; every row prints seconds per image, images/s and the speed-up
over it. With --unet-flops the UNet alone is timed as well, and its achieved
TFLOP/s is given against the GPU's dense bf16/fp16 peak.

    python bench/generate.py                          # CPU: 64x64, 10 steps
    python bench/generate.py --device cuda --unet-flops   # GPU: 512x512, 50 steps

Figures go to bench/RESULTS.md with the date and the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import diffusers
import numpy as np
import pandas as pd
import torch

from contam import generate, random_pipelines
from contam.devices import DTYPES, pick_device

BASELINE = "fp32:classic:1"
CPU_CONFIGS = [BASELINE, "fp32:sdpa:1", "fp32:sdpa:4", "bf16:sdpa:1", "bf16:sdpa:4"]
GPU_CONFIGS = [BASELINE, "fp32:sdpa:1", "fp16:sdpa:1", "fp16:sdpa:1:compile", "fp16:sdpa:8", "fp16:sdpa:32", "bf16:sdpa:1", "bf16:sdpa:8", "bf16:sdpa:32", "bf16:sdpa:32:compile"]
# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0, "RTX 4090": 165.2}


def parse(config: str) -> dict:
    parts = config.split(":")
    if len(parts) not in (3, 4) or parts[0] not in DTYPES or parts[1] not in ("sdpa", "classic") or (len(parts) == 4 and parts[3] != "compile"):
        raise SystemExit(f"bad configuration {config!r}: use dtype:attention:batch[:compile], e.g. bf16:sdpa:8:compile")
    return {"name": config, "dtype": parts[0], "attention": parts[1], "batch": int(parts[2]), "compile": len(parts) == 4}


def prompts(n: int) -> pd.DataFrame:
    names = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead"]
    return pd.DataFrame({"row": np.arange(n), "prompt": [f"photo of {names[i % len(names)]}" for i in range(n)], "seed": np.arange(n) + 42})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def unet_inputs(pipe, batch: int, height: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and text context of one guided UNet call (2 x batch rows)."""
    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    latents = torch.randn(2 * batch, 4, height // 8, height // 8, device=device, dtype=unet.dtype)
    context = torch.randn(2 * batch, 77, unet.config.cross_attention_dim, device=device, dtype=unet.dtype)
    return latents, context


def unet_flops_per_step(pipe, batch: int, height: int, device: torch.device) -> int:
    """FLOPs of one UNet call for ``batch`` images with guidance, counted on the
    eager UNet (a compiled one hides its operations from the counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    latents, context = unet_inputs(pipe, batch, height, device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        getattr(pipe.unet, "_orig_mod", pipe.unet)(latents, 500, encoder_hidden_states=context)
    return counter.get_total_flops()


def time_unet(pipe, batch: int, height: int, steps: int, device: torch.device) -> float:
    unet = pipe.unet
    latents, context = unet_inputs(pipe, batch, height, device)
    with torch.no_grad():
        unet(latents, 500, encoder_hidden_states=context)
        sync(device)
        start = time.perf_counter()
        for t in range(steps):
            unet(latents, 999 - t, encoder_hidden_states=context)
        sync(device)
    return time.perf_counter() - start


def measure(master, config: dict, args, device: torch.device, flops: dict) -> dict:
    """One configuration: s/image over ``args.repeats`` timed batches after a warm-up batch.

    The row also holds the timed ``images`` and ``seconds`` and the ``setup_s``
    of copying the pipeline to the device (bench/all.py writes them to the ledger).
    """
    start = time.perf_counter()
    pipe = copy.deepcopy(master).to(DTYPES[config["dtype"]])
    gen_config = {"scheduler": "ddim", "steps": args.steps, "guidance": 7.5, "eta": 0.0, "height": args.height, "width": args.height}
    pipe = generate.prepare_pipeline(pipe, gen_config, device, config["attention"], config["compile"])
    sampler = generate.DiffusersSampler(gen_config, device, pipe=pipe)
    batch = prompts(config["batch"])
    setup = time.perf_counter() - start
    start = time.perf_counter()
    sampler(batch)  # warm-up: allocator, kernels, and compilation when asked
    sync(device)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.repeats):
        images, _ = sampler(batch)
    sync(device)
    timed = time.perf_counter() - start
    seconds = timed / (args.repeats * config["batch"])
    row = {**config, "s_per_image": seconds, "images_per_s": 1 / seconds, "warmup_s": warmup, "setup_s": setup,
           "images": args.repeats * config["batch"], "seconds": timed, "image_std": float(images.std())}
    if args.unet_flops:
        # The operation count depends on the batch only, not on dtype or kernels.
        if config["batch"] not in flops:
            flops[config["batch"]] = unet_flops_per_step(pipe, config["batch"], args.height, device)
        unet_seconds = time_unet(pipe, config["batch"], args.height, args.steps, device)
        row["unet_share"] = unet_seconds / (seconds * config["batch"])
        row["unet_tflops"] = flops[config["batch"]] * args.steps / unet_seconds / 1e12
        peak = peak_tflops(device)
        row["unet_peak_fraction"] = row["unet_tflops"] / peak if peak and config["dtype"] != "fp32" else None
    del pipe, sampler
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--shape", choices=sorted(random_pipelines.SHAPES), default="sd15", help="pipeline shape (tiny: for tests)")
    parser.add_argument("--height", type=int, help="image side in pixels (default 512 on a GPU, 64 on CPU)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default 50 on a GPU, 10 on CPU)")
    parser.add_argument("--repeats", type=int, default=2, help="timed batches per configuration, after one warm-up batch")
    parser.add_argument("--configs", nargs="+", help=f"dtype:attention:batch[:compile]; the first is the baseline (default {BASELINE} plus a per-device list)")
    parser.add_argument("--unet-flops", action="store_true", help="also time the UNet alone and report its TFLOP/s and share of the peak")
    parser.add_argument("--json", help="write the rows to this file as well")
    args = parser.parse_args(argv)
    diffusers.utils.logging.set_verbosity_error()  # not the per-copy dtype-cast notes
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    args.height = args.height or (512 if gpu else 64)
    args.steps = args.steps or (50 if gpu else 10)
    configs = [parse(c) for c in (args.configs or (GPU_CONFIGS if gpu else CPU_CONFIGS))]
    name = torch.cuda.get_device_name(device) if gpu else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# {args.shape} pipeline, {args.height}x{args.height}, {args.steps} DDIM steps, guidance 7.5, on {name}; torch {torch.__version__}")

    start = time.perf_counter()
    master = random_pipelines.build_pipeline(args.shape)
    print(f"# built the random pipeline in {time.perf_counter() - start:.1f} s")
    rows, flops = [], {}
    for config in configs:
        row = measure(master, config, args, device, flops)
        row["speedup"] = rows[0]["s_per_image"] / row["s_per_image"] if rows else 1.0
        rows.append(row)
        extra = f", UNet {row['unet_tflops']:.3g} TFLOP/s" if args.unet_flops else ""
        print(f"# {config['name']}: {row['s_per_image']:.3f} s/image ({row['speedup']:.2f}x baseline){extra}", flush=True)

    print("\n| configuration | s/image | images/s | vs baseline | warm-up s |" + (" UNet TFLOP/s | UNet share of time | of bf16 peak |" if args.unet_flops else ""))
    print("| --- | ---: | ---: | ---: | ---: |" + (" ---: | ---: | ---: |" if args.unet_flops else ""))
    for row in rows:
        line = f"| {row['name']}{' (baseline)' if row is rows[0] else ''} | {row['s_per_image']:.3f} | {row['images_per_s']:.2f} | {row['speedup']:.2f}x | {row['warmup_s']:.1f} |"
        if args.unet_flops:
            fraction = f"{100 * row['unet_peak_fraction']:.0f} %" if row["unet_peak_fraction"] else "n/a"
            line += f" {row['unet_tflops']:.3g} | {100 * row['unet_share']:.0f} % | {fraction} |"
        print(line)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": name, "height": args.height, "steps": args.steps, "rows": rows}, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
