"""Stage train: one timm classifier on one manifest with one seed.

The recipe (epochs, optimiser, warmup + cosine schedule, label smoothing,
precision, channels-last, compile, deterministic kernels) comes from the config.
Training survives preemption: a checkpoint (model, optimiser, schedule, scaler,
the RNG states of torch on CPU and CUDA, NumPy and Python, epoch and step) is
written atomically after every epoch and when SLURM sends SIGTERM or SIGUSR1; a
rerun resumes from it and ends with the same weights as an uninterrupted run (on
a GPU with ``deterministic: true``). A checkpoint is used only if its
fingerprint (manifest, model, recipe, seed) and process count match, so a
changed config never resumes stale work.

Several processes (GPUs of one node) train one model through ``accelerate``
(``contam.train_cli`` launches them): every rank draws the same global shuffle
and takes its slice, gradients are averaged by DistributedDataParallel, and only
the main process writes checkpoints, weights and the log. The process count is
a setting (it multiplies the effective batch): ``train`` refuses to run under
another count than it was given. A single process runs the same code without
any wrapping. Augmentation is seeded per (seed, epoch, image), so results depend
neither on ``num_workers`` nor on where a run resumed.

The code falls in three parts: :class:`Processes` (this process among the
training processes), :class:`TrainState` (what a checkpoint holds, with its
``save`` and ``load``) and :class:`Trainer` (what stays fixed for the run: the
loader, the loss, one step and one epoch).
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import os
import random
import signal
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from contam.devices import DTYPES, deterministic
from contam.io import atomic_path
from contam.logs import Throughput
from contam.models import EpochSampler, ManifestDataset, create_model, decode_device, train_transform

log = logging.getLogger(__name__)

LOG_FIELDS = ["epoch", "loss", "train_top1", "lr", "images_per_s", "seconds"]

# Bumped when the checkpoint's contents change: an older checkpoint is ignored
# rather than resumed without the RNG states it lacks.
CHECKPOINT_FORMAT = 2


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
        return torch.optim.SGD(groups, lr=recipe["learning_rate"], momentum=recipe.get("momentum", 0.9), nesterov=True, foreach=True)
    # foreach: PyTorch picks the per-tensor loop on CPUs; the multi-tensor kernels compute
    # the same update a little faster (bench/optimizer.py).
    return torch.optim.AdamW(groups, lr=recipe["learning_rate"], foreach=True)


# ---- RNG states ---------------------------------------------------------------
#
# Checkpoints load with weights_only=True, which admits tensors but not NumPy
# arrays or Python's state tuples, so every state travels as a tensor. Floats
# (the cached Gaussians) travel as their 64 bits, so nothing is rounded.


def _bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def capture_rng(device: torch.device) -> dict[str, torch.Tensor]:
    """The states of every RNG training draws from: torch on CPU and on ``device``, NumPy, Python."""
    _, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # Empty off CUDA, so that every rank's states have the same shapes for gathering.
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.zeros(0, dtype=torch.uint8),
        "numpy": torch.tensor([*keys.tolist(), pos, has_gauss, _bits(gauss)], dtype=torch.int64),
        "python": torch.tensor([version, *internal, gauss_next is not None, _bits(gauss_next or 0.0)], dtype=torch.int64),
    }


def restore_rng(states: dict[str, torch.Tensor], device: torch.device) -> None:
    """Set the RNGs to ``states`` from :func:`capture_rng`."""
    torch.set_rng_state(states["torch"].clone())
    if device.type == "cuda" and len(states["cuda"]):
        torch.cuda.set_rng_state(states["cuda"].clone(), device)
    numpy = states["numpy"].tolist()
    np.random.set_state(("MT19937", np.array(numpy[:-3], dtype=np.uint32), numpy[-3], numpy[-2], _float(numpy[-1])))
    python = states["python"].tolist()
    random.setstate((python[0], tuple(python[1:-2]), _float(python[-1]) if python[-2] else None))


# ---- the training processes ----------------------------------------------------


class Processes:
    """This process among the training processes (one, or several under accelerate)."""

    def __init__(self, device: torch.device, expected: int):
        # Only a multi-process launch (which sets WORLD_SIZE) gets an
        # Accelerator: one process needs none of it, and its state is a
        # process-wide singleton that refuses a CPU run after a CUDA one.
        self.accelerator = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import Accelerator

            self.accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
        self.world = self.accelerator.num_processes if self.accelerator else 1
        if self.world != expected:
            raise ValueError(
                f"training was set up for {expected} process(es) but runs in {self.world}: the process count "
                f"multiplies the effective batch, so it is a setting (launch through contam.train_cli with as many processes)"
            )
        self.rank = self.accelerator.process_index if self.accelerator else 0
        self.main = self.rank == 0
        # Under a multi-process launch every process has its own device.
        self.device = self.accelerator.device if self.accelerator else device

    def per_rank(self, tensor: torch.Tensor) -> torch.Tensor:
        """Stack one tensor from every rank (a collective: all ranks call it)."""
        if self.world == 1:
            return tensor[None].clone()
        return self.accelerator.gather(tensor[None].to(self.device)).cpu()

    def agreed(self, flag: bool) -> bool:
        """True on every rank when it is true on any (a collective when world > 1)."""
        if self.world == 1:
            return flag
        return bool(self.accelerator.reduce(torch.tensor([float(flag)], device=self.device), "sum").item() > 0)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def wait(self) -> None:
        if self.accelerator:
            self.accelerator.wait_for_everyone()


class _StopFlag:
    """Set by SIGTERM/SIGUSR1 (SLURM's preemption warning), or after a number of steps (tests)."""

    def __init__(self, after_steps: int | None = None) -> None:
        self.signal: int | None = None
        self.after_steps, self.steps = after_steps, 0
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

    def count_step(self) -> bool:
        """Count a finished step; true when training should stop after it."""
        self.steps += 1
        return self.signal is not None or (self.after_steps is not None and self.steps >= self.after_steps)


# ---- what a checkpoint holds -----------------------------------------------------


@dataclass
class TrainState:
    """Everything that changes as training goes on, saved and loaded as one checkpoint."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    epoch: int = 0
    step_in_epoch: int = 0
    # loss sum, correct, seen: this rank's, for the epoch so far
    epoch_stats: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))
    history: list[dict] = field(default_factory=list)
    # This rank's RNG states from a checkpoint, restored when training goes on
    # (not at load: building the loader and the wrapped model comes in between).
    rng: dict[str, torch.Tensor] | None = None

    def save(self, path: Path, fingerprint: str, processes: Processes) -> None:
        """Write the checkpoint (a collective: every rank calls it, the main rank writes)."""
        rng = {name: processes.per_rank(state) for name, state in capture_rng(processes.device).items()}
        stats = processes.per_rank(self.epoch_stats)
        if processes.main:
            history = torch.tensor([[float(h[f]) for f in LOG_FIELDS] for h in self.history], dtype=torch.float64)
            state = {
                "format": CHECKPOINT_FORMAT,
                "fingerprint": fingerprint,
                "world_size": processes.world,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "epoch_stats": stats,
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "history": history.reshape(-1, len(LOG_FIELDS)),
            }
            with atomic_path(path) as tmp:
                torch.save(state, tmp)
        processes.wait()

    def load(self, path: Path, fingerprint: str, processes: Processes) -> bool:
        """Take up the checkpoint at ``path`` if it is of these settings and process count."""
        if not path.exists():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        same = (state.get("format"), state.get("fingerprint"), state.get("world_size")) == (CHECKPOINT_FORMAT, fingerprint, processes.world)
        if not same:
            log.warning("ignoring checkpoint %s: it belongs to other settings, another process count or an older version", path)
            return False
        rank = processes.rank
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.rng = {name: states[rank].clone() for name, states in state["rng"].items()}
        self.epoch_stats = state["epoch_stats"][rank].clone()
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.history = [dict(zip(LOG_FIELDS, row)) for row in state["history"].tolist()]
        log.info("resuming from checkpoint at epoch %d, step %d", self.epoch, self.step_in_epoch)
        return True


def new_state(
    model_config: dict, recipe: dict, num_classes: int, device: torch.device, steps_per_epoch: int, build_model: Callable[[], torch.nn.Module] | None = None
) -> TrainState:
    """A freshly initialised model with its optimiser, schedule and loss scaler.

    ``build_model`` makes another task's model (the captioner); by default a timm classifier.
    """
    model = (build_model() if build_model else create_model(model_config["arch"], num_classes, model_config.get("kwargs"))).to(device)
    if recipe.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, recipe)
    total_steps = steps_per_epoch * int(recipe["epochs"])
    warmup_steps = int(round(recipe.get("warmup_epochs", 0) * steps_per_epoch))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.get("precision", "fp32") == "fp16")
    return TrainState(model, optimizer, schedule, scaler)


def steps_per_epoch(per_rank: int, batch_size: int) -> int:
    # A last batch of one image is skipped: batch norm cannot train on it (and
    # every rank has as many images, so all ranks skip it together).
    return per_rank // batch_size + (1 if per_rank % batch_size > 1 else 0)


# ---- what stays fixed for a run ---------------------------------------------------

# (model, inputs, targets) -> (mean loss, correct predictions, predictions): a
# classifier counts images, the captioner counts caption tokens.
LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, int, int]]


def classification_loss(label_smoothing: float = 0.0) -> LossFn:
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss_fn(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        logits = model(images)
        return criterion(logits, labels), int((logits.argmax(1) == labels).sum()), len(labels)

    return loss_fn



@dataclass
class Trainer:
    """The loader, the loss and the wrapped model of a run; one step and one epoch of training."""

    processes: Processes
    fit_model: torch.nn.Module  # the model as trained: wrapped for several processes, compiled
    loss_fn: "LossFn"
    autocast: torch.autocast
    channels_last: bool
    loader: DataLoader
    sampler: EpochSampler
    seed: int
    checkpoint: Callable[[], None]

    def epoch(self, state: TrainState, stop: _StopFlag) -> None:
        """Train to the end of ``state.epoch`` (from where it stands); checkpoint and raise Preempted on ``stop``."""
        if state.step_in_epoch == 0:
            # Model randomness (dropout, drop-path) draws from the global RNG;
            # seed it per epoch and rank. Rank 0 of one process keeps the
            # historical seed.
            torch.manual_seed(self.seed * 1_000_003 + state.epoch + 7_919 * self.processes.rank)
            state.epoch_stats = torch.zeros(3, dtype=torch.float64)
        meter = Throughput()
        batch_size = self.loader.batch_size
        self.sampler.set_epoch(state.epoch, start=state.step_in_epoch * batch_size)
        state.model.train()
        batches = tqdm(self.loader, desc=f"epoch {state.epoch}", mininterval=10, leave=False, disable=not self.processes.main)
        for inputs, targets in batches:
            if len(targets) == 1 < batch_size:
                continue
            self.step(state, inputs, targets)
            meter.add(len(targets))
            if self.processes.agreed(stop.count_step()):
                self.checkpoint()
                raise Preempted(f"stopped at epoch {state.epoch} step {state.step_in_epoch}; checkpoint saved")
        state.history.append(self.log_row(state, meter))
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
        self.checkpoint()

    def step(self, state: TrainState, images: torch.Tensor, targets: torch.Tensor) -> None:
        device = self.processes.device
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast:
            loss, correct, count = self.loss_fn(self.fit_model, images, targets)
        state.optimizer.zero_grad(set_to_none=True)
        self.processes.backward(state.scaler.scale(loss))
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.schedule.step()
        state.step_in_epoch += 1
        state.epoch_stats += torch.tensor([float(loss.detach()) * count, correct, count], dtype=torch.float64)

    def log_row(self, state: TrainState, meter: Throughput) -> dict:
        """The epoch's line of train_log.csv, over all ranks (a collective)."""
        totals = self.processes.per_rank(state.epoch_stats).sum(0)
        rate = float(self.processes.per_rank(torch.tensor([meter.rate], dtype=torch.float64)).sum())
        seen = max(1.0, float(totals[2]))
        row = {
            "epoch": state.epoch,
            "loss": float(totals[0]) / seen,
            "train_top1": float(totals[1]) / seen,
            "lr": state.schedule.get_last_lr()[0],
            "images_per_s": rate,
            "seconds": meter.seconds,
        }
        if self.processes.main:
            log.info("epoch %d loss %.4f train top-1 %.3f lr %.2e %.1f images/s", state.epoch, row["loss"], row["train_top1"], row["lr"], rate)
        return row


def make_trainer(
    state: TrainState,
    recipe: dict,
    processes: Processes,
    dataset: Dataset,
    sampler: EpochSampler,
    num_workers: int,
    seed: int,
    checkpoint: Callable[[], None],
    loss_fn: LossFn | None = None,
) -> Trainer:
    device = processes.device
    # One DataLoader for the whole run: its workers (if any) persist across
    # epochs; set_epoch moves its sampler on. Its own generator keeps loader
    # creation from drawing on the global RNG.
    # A dataset that decodes on the GPU (execution.decode: cuda) needs no workers and no pinning.
    options = {"num_workers": num_workers, "pin_memory": device.type == "cuda"}
    if hasattr(dataset, "loader_options"):
        options = dataset.loader_options(**options)
    num_workers = options["num_workers"]
    loader = DataLoader(
        dataset,
        batch_size=int(recipe["batch_size"]),
        sampler=sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=options["pin_memory"],
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    # DistributedDataParallel only with several processes: one process trains the
    # bare model, exactly as without accelerate.
    ddp_model = processes.accelerator.prepare_model(state.model) if processes.world > 1 else state.model
    fit_model = torch.compile(ddp_model) if recipe.get("compile") else ddp_model
    precision = recipe.get("precision", "fp32")
    return Trainer(
        processes=processes,
        fit_model=fit_model,
        loss_fn=loss_fn or classification_loss(recipe.get("label_smoothing", 0.0)),
        autocast=torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32"),
        channels_last=bool(recipe.get("channels_last")),
        loader=loader,
        sampler=sampler,
        seed=seed,
        checkpoint=checkpoint,
    )


# ---- the stage -----------------------------------------------------------------------


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
    processes: int = 1,
    decode: str = "cpu",
    build_model: Callable[[], torch.nn.Module] | None = None,
    loss_fn: LossFn | None = None,
) -> dict:
    """Train, resuming from ``out_dir/checkpoint.pt`` when it matches ``fingerprint``.

    Writes ``model.safetensors`` and ``train_log.csv``. ``stop_after_steps`` (for
    tests) saves a checkpoint and raises Preempted after that many steps.
    ``dataset`` (for benchmarks) replaces the images of ``manifest``; its items
    are looked up with ``(index, augmentation seed)`` keys. ``processes`` is the
    number of training processes the run is meant for; under a multi-process
    launch (``accelerate launch``) the device is the process's own. ``decode``
    is execution.decode: ``cuda`` decodes JPEGs on that device (see
    ``contam.models.decode_device``). ``build_model`` and ``loss_fn`` train
    another task's model on the same machinery (``contam.captioner``).
    """
    with deterministic(bool(recipe.get("deterministic", False))):
        procs = Processes(device, processes)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        checkpoint = out / "checkpoint.pt"
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        if dataset is None:
            transform = train_transform(model_config["image_size"], recipe.get("augment", {}))
            dataset = ManifestDataset(manifest, transform, decode=decode_device(decode, procs.device))
        if len(dataset) == 0:
            # A filtered twin can drop every row (the oracle at ratio 1.0): the
            # run is then its initial weights, which evaluate measures honestly.
            log.warning("the manifest has no rows: the model keeps its initial (random) weights")
            state = new_state(model_config, recipe, num_classes, procs.device, 0, build_model)
            if procs.main:
                write_outputs(state, out, fingerprint)
            procs.wait()
            return {"epochs": 0, "final_loss": None, "processes": procs.world}
        sampler = EpochSampler(len(dataset), seed, rank=procs.rank, world_size=procs.world, with_seeds=True)
        state = new_state(model_config, recipe, num_classes, procs.device, steps_per_epoch(sampler.per_rank, int(recipe["batch_size"])), build_model)
        state.load(checkpoint, fingerprint, procs)
        save = functools.partial(state.save, checkpoint, fingerprint, procs)
        trainer = make_trainer(state, recipe, procs, dataset, sampler, num_workers, seed, save, loss_fn)
        with _StopFlag(stop_after_steps) as stop:
            if state.rng is not None:
                restore_rng(state.rng, procs.device)
            while state.epoch < int(recipe["epochs"]):
                trainer.epoch(state, stop)
        if procs.main:
            write_outputs(state, out, fingerprint)
            checkpoint.unlink(missing_ok=True)
        procs.wait()
    history = state.history
    return {"epochs": len(history), "final_loss": history[-1]["loss"] if history else None, "processes": procs.world}


def write_outputs(state: TrainState, out: Path, fingerprint: str) -> None:
    """train_log.csv, and model.safetensors stamped with the run's fingerprint."""
    with atomic_path(out / "train_log.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(state.history)
    weights = {k: v.contiguous().cpu() for k, v in state.model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(weights, str(tmp), metadata={"fingerprint": fingerprint})
