"""Benchmark: the optimiser step of contam.train against PyTorch's CPU default.

On CPU tensors PyTorch picks the per-tensor loop for AdamW and SGD
(``foreach=None``); ``contam.train.build_optimizer`` asks for the multi-tensor
(``foreach``) kernels. Both compute the same update. The baseline, measured in
the same run, is the default; alternating rounds, best of each. Prints ms per
step for both and the speed ratio.

    python bench/optimizer.py [--arch resnet18] [--steps 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import torch


def time_steps(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: int) -> float:
    for p in params:
        p.grad = torch.randn_like(p)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from contam.models import create_model
    from contam.train import build_optimizer

    recipe = {"optimizer": args.optimizer, "learning_rate": 1e-3, "weight_decay": 0.05, "momentum": 0.9}
    model = create_model(args.arch, 10)
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": 0.05}, {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if args.optimizer == "sgd":
        baseline = torch.optim.SGD(groups, lr=1e-3, momentum=0.9, nesterov=True)
    else:
        baseline = torch.optim.AdamW(groups, lr=1e-3)
    ours = build_optimizer(model, recipe)
    best = {"baseline (PyTorch CPU default)": float("inf"), "contam (foreach)": float("inf")}
    for _ in range(args.rounds):
        best["baseline (PyTorch CPU default)"] = min(best["baseline (PyTorch CPU default)"], time_steps(baseline, params, args.steps))
        best["contam (foreach)"] = min(best["contam (foreach)"], time_steps(ours, params, args.steps))
    count = sum(p.numel() for p in params) / 1e6
    print(f"{args.optimizer} step over {args.arch} ({count:.1f}M parameters), 1 thread, best of {args.rounds} rounds of {args.steps} steps:")
    for name, ms in best.items():
        print(f"  {name:32s} {ms:8.1f} ms/step")
    base, mine = best.values()
    print(f"speed-up: {base / mine:.2f}x")


if __name__ == "__main__":
    main()
