"""Stage train: one timm classifier on one manifest with one seed.

The recipe (epochs, optimiser, warmup + cosine schedule, label smoothing,
precision, channels-last, compile) comes from the config. Training survives
preemption: a checkpoint (model, optimiser, schedule, scaler, RNG states, epoch
and step) is written atomically after every epoch and when SLURM sends SIGTERM or
SIGUSR1; a rerun resumes from it and ends with the same weights as an
uninterrupted run. A checkpoint is used only if its fingerprint (manifest, model,
recipe, seed) matches, so a changed config never resumes stale work.

Several processes (GPUs of one node) train one model through ``accelerate``
(``contam.train_cli`` launches them): every rank draws the same global shuffle
and takes its slice, gradients are averaged by DistributedDataParallel, and only
the main process writes checkpoints, weights and the log. A single process runs
the same code without any wrapping. Augmentation is seeded per (seed, epoch,
image), so results depend neither on ``num_workers`` nor on where a run resumed.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from contam.devices import DTYPES
from contam.io import atomic_path
from contam.logs import Throughput
from contam.models import EpochSampler, ManifestDataset, create_model, train_transform

log = logging.getLogger(__name__)

LOG_FIELDS = ["epoch", "loss", "train_top1", "lr", "images_per_s", "seconds"]


class Preempted(RuntimeError):
    """Raised after a checkpoint was saved on SIGTERM/SIGUSR1."""


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: torch.nn.Module, recipe: dict) -> torch.optim.Optimizer:
    # No weight decay on biases and norm parameters, as in timm's and torchvision's recipes.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=recipe["learning_rate"], momentum=recipe.get("momentum", 0.9), nesterov=True)
    return torch.optim.AdamW(groups, lr=recipe["learning_rate"])


class _StopFlag:
    def __init__(self) -> None:
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(
    manifest: pd.DataFrame,
    model_config: dict,
    recipe: dict,
    num_classes: int,
    seed: int,
    out_dir: str | Path,
    fingerprint: str,
    device: torch.device,
    num_workers: int = 0,
    stop_after_steps: int | None = None,
    dataset: Dataset | None = None,
) -> dict:
    """Train, resuming from ``out_dir/checkpoint.pt`` when it matches ``fingerprint``.

    Writes ``model.safetensors`` and ``train_log.csv``. ``stop_after_steps`` (for
    tests) saves a checkpoint and raises Preempted after that many steps.
    ``dataset`` (for benchmarks) replaces the images of ``manifest``; its items
    are looked up with ``(index, augmentation seed)`` keys. Under a multi-process
    launch (``accelerate launch``) the device is the process's own.
    """
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if world > 1:
        device = accelerator.device
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "checkpoint.pt"
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)

    model = create_model(model_config["arch"], num_classes, model_config.get("kwargs")).to(device)
    if recipe.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, recipe)
    if dataset is None:
        dataset = ManifestDataset(manifest, train_transform(model_config["image_size"], recipe.get("augment", {})))
    batch_size = int(recipe["batch_size"])
    sampler = EpochSampler(len(dataset), seed, rank=rank, world_size=world, with_seeds=True)
    # A last batch of one image is skipped: batch norm cannot train on it (and
    # every rank has as many images, so all ranks skip it together).
    steps_per_epoch = sampler.per_rank // batch_size + (1 if sampler.per_rank % batch_size > 1 else 0)
    total_steps = steps_per_epoch * int(recipe["epochs"])
    warmup_steps = int(round(recipe.get("warmup_epochs", 0) * steps_per_epoch))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup_steps))
    precision = recipe.get("precision", "fp32")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=recipe.get("label_smoothing", 0.0))
    history: list[dict] = []
    epoch, step_in_epoch = 0, 0
    epoch_stats = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, seen (this rank)

    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") == fingerprint and state.get("world_size", 1) == world:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"][rank].clone())
            epoch_stats = state["epoch_stats"][rank].clone()
            epoch, step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
            history = [dict(zip(LOG_FIELDS, row)) for row in state["history"].tolist()]
            log.info("resuming from checkpoint at epoch %d, step %d", epoch, step_in_epoch)
        else:
            log.warning("ignoring checkpoint %s: it belongs to other settings (or another process count)", checkpoint_path)
        del state

    def per_rank(tensor: torch.Tensor) -> torch.Tensor:
        """Stack one tensor from every rank (a collective: all ranks call it)."""
        if world == 1:
            return tensor[None].clone()
        return accelerator.gather(tensor[None].to(device)).cpu()

    def save_checkpoint() -> None:
        rng_states, stats = per_rank(torch.get_rng_state()), per_rank(epoch_stats)
        if main:
            state = {
                "fingerprint": fingerprint,
                "world_size": world,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(),
                "torch_rng": rng_states,
                "epoch_stats": stats,
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "history": torch.tensor([[float(h[f]) for f in LOG_FIELDS] for h in history], dtype=torch.float64).reshape(-1, len(LOG_FIELDS)),
            }
            with atomic_path(checkpoint_path) as tmp:
                torch.save(state, tmp)
        accelerator.wait_for_everyone()

    def agreed(flag: bool) -> bool:
        """True on every rank when it is true on any (a collective when world > 1)."""
        if world == 1:
            return flag
        return bool(accelerator.reduce(torch.tensor([float(flag)], device=device), "sum").item() > 0)

    # One DataLoader for the whole run: its workers (if any) persist across
    # epochs; set_epoch moves its sampler on. Its own generator keeps loader
    # creation from drawing on the global RNG.
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    # DistributedDataParallel only with several processes: one process trains the
    # bare model, exactly as without accelerate.
    ddp_model = accelerator.prepare_model(model) if world > 1 else model
    fit_model = torch.compile(ddp_model) if recipe.get("compile") else ddp_model
    autocast = torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32")
    steps_done = 0
    meter = Throughput()
    with _StopFlag() as stop:
        while epoch < int(recipe["epochs"]):
            if step_in_epoch == 0:
                # Model randomness (dropout, drop-path) draws from the global
                # RNG; seed it per epoch and rank. Rank 0 of one process keeps
                # the historical seed.
                torch.manual_seed(seed * 1_000_003 + epoch + 7_919 * rank)
                epoch_stats = torch.zeros(3, dtype=torch.float64)
            meter = Throughput()
            sampler.set_epoch(epoch, start=step_in_epoch * batch_size)
            model.train()
            for images, labels in tqdm(loader, desc=f"epoch {epoch}", mininterval=10, leave=False, disable=not main):
                if len(labels) == 1 < batch_size:
                    continue
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                if recipe.get("channels_last"):
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast:
                    logits = fit_model(images)
                    loss = criterion(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(scaler.scale(loss))
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                step_in_epoch += 1
                steps_done += 1
                epoch_stats += torch.tensor([float(loss.detach()) * len(labels), int((logits.argmax(1) == labels).sum()), len(labels)], dtype=torch.float64)
                meter.add(len(labels))
                if agreed(stop.signal is not None or (stop_after_steps is not None and steps_done >= stop_after_steps)):
                    save_checkpoint()
                    raise Preempted(f"stopped at epoch {epoch} step {step_in_epoch}; checkpoint saved")
            totals = per_rank(epoch_stats).sum(0)
            rate = float(per_rank(torch.tensor([meter.rate], dtype=torch.float64)).sum())
            row = {
                "epoch": epoch,
                "loss": float(totals[0]) / max(1.0, float(totals[2])),
                "train_top1": float(totals[1]) / max(1.0, float(totals[2])),
                "lr": schedule.get_last_lr()[0],
                "images_per_s": rate,
                "seconds": meter.seconds,
            }
            history.append(row)
            if main:
                log.info("epoch %d loss %.4f train top-1 %.3f lr %.2e %.1f images/s", epoch, row["loss"], row["train_top1"], row["lr"], row["images_per_s"])
            epoch, step_in_epoch = epoch + 1, 0
            save_checkpoint()

    if main:
        with atomic_path(out / "train_log.csv") as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(history)
        with atomic_path(out / "model.safetensors") as tmp:
            save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp), metadata={"fingerprint": fingerprint})
        checkpoint_path.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return {"epochs": len(history), "final_loss": history[-1]["loss"] if history else None, "processes": world}
