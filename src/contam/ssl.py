"""Self-supervised pretraining (SimSiam, BYOL) on a contaminated mix, and a linear probe.

The remedy: pretrain an encoder without labels on a training mix (real and
generated images alike), then fit a linear probe on the real training labels
and score it on the real test split.

Reference recipes:

* SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning",
  CVPR 2021): ResNet-50 on ImageNet at 224 px, a 3-layer projector MLP of
  2048 units ending in batch norm, a bottleneck predictor 2048-512-2048, the
  symmetric negative cosine loss with a stop-gradient on the projection, SGD
  (lr 0.05 x batch/256, momentum 0.9, weight decay 1e-4, cosine decay), batch
  512, 100-800 epochs, the MoCo v2 augmentations (random resized crop of scale
  0.2-1, flip, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale p 0.2,
  Gaussian blur p 0.5).
* BYOL (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020): the same
  online network and predictor, but the projection it predicts comes from a
  target encoder and projector that are an exponential moving average of the
  online ones, with the decay raised from 0.996 to 1 on a cosine; LARS, batch
  4096, 1000 epochs.

Scaled down for CPU: a small timm encoder (resnet10t) at about 24 px; the
2-layer projector of SimSiam's CIFAR variant (``projector_dim`` units) and a
predictor bottleneck of ``predictor_dim``; tens of epochs; SGD for both methods
(no LARS, no warmup), cosine decay for every parameter group (SimSiam's fixed
predictor learning rate is left out). The code is shared: BYOL is SimSiam
plus the EMA target (decay ``ema_decay`` raised to 1 on a cosine, as in BYOL),
and both use the negative cosine loss (BYOL's 2 - 2 cos differs only by scale
and offset).

Reproducibility follows ``contam.train``: the shuffle comes from
``EpochSampler`` (seed, epoch) and each image's two views from one generator
seeded by (seed, epoch, image) in ``ManifestDataset``, so results depend
neither on ``num_workers`` nor on where a run resumed. A checkpoint is written
atomically after every epoch beside the output folder; a rerun with the same
fingerprint takes it up and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from contam.evaluate import accuracy, predict
from contam.io import atomic_path
from contam.logs import Throughput
from contam.models import MEAN, STD, EpochSampler, ManifestDataset, create_model
from contam.train import capture_rng, lr_factor, restore_rng, steps_per_epoch

log = logging.getLogger(__name__)

SSL_METHODS = ("simsiam", "byol")
LOG_FIELDS = ["epoch", "loss", "images_per_s", "seconds"]
# Bumped when the checkpoint's contents change, so an older one is ignored.
CHECKPOINT_FORMAT = 1


def check_method(method: str) -> None:
    if method not in SSL_METHODS:
        raise ValueError(f"unknown self-supervised method {method!r}; offered: {', '.join(SSL_METHODS)}")


# ---- views -----------------------------------------------------------------------


def ssl_transform(image_size: int, augment: dict) -> v2.Compose:
    """One random view: SimSiam's (MoCo v2) augmentations, each switchable by ``augment``."""
    steps = [v2.ToImage(), v2.RandomResizedCrop(image_size, scale=tuple(augment.get("crop_scale", (0.2, 1.0))), antialias=True)]
    if augment.get("hflip", True):
        steps.append(v2.RandomHorizontalFlip())
    strength = float(augment.get("color_jitter", 0.4))
    if strength > 0:
        # 0.4 gives SimSiam's ColorJitter(0.4, 0.4, 0.4, 0.1); hue cannot exceed 0.5.
        jitter = v2.ColorJitter(strength, strength, strength, min(strength / 4, 0.5))
        steps += [v2.RandomApply([jitter], p=0.8), v2.RandomGrayscale(p=0.2)]
    if augment.get("blur", True):
        # SimSiam blurs 224 px images with a 23 px kernel: about a tenth of the side, odd.
        kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    return v2.Compose(steps)


class TwoViews:
    """Two views of one image, drawn one after the other from the same (per-image seeded) generator."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(image), self.transform(image)


def view_dataset(manifest: pd.DataFrame, settings: dict) -> ManifestDataset:
    """The manifest's images as pairs of views; labels are replaced by 0 so none can leak in."""
    table = pd.DataFrame({"path": manifest["path"].astype(str).to_numpy(), "label": np.zeros(len(manifest), dtype=np.int64)})
    return ManifestDataset(table, TwoViews(ssl_transform(int(settings["image_size"]), settings.get("augment", {}))))


# ---- the networks ------------------------------------------------------------------


def projection_mlp(in_dim: int, dim: int) -> torch.nn.Sequential:
    """SimSiam's CIFAR projector: two linear layers, batch norm after each (the last without affine)."""
    return torch.nn.Sequential(
        torch.nn.Linear(in_dim, dim, bias=False), torch.nn.BatchNorm1d(dim), torch.nn.ReLU(inplace=True),
        torch.nn.Linear(dim, dim, bias=False), torch.nn.BatchNorm1d(dim, affine=False),
    )


def prediction_mlp(dim: int, hidden: int) -> torch.nn.Sequential:
    """SimSiam's bottleneck predictor: dim -> hidden -> dim."""
    return torch.nn.Sequential(
        torch.nn.Linear(dim, hidden, bias=False), torch.nn.BatchNorm1d(hidden), torch.nn.ReLU(inplace=True),
        torch.nn.Linear(hidden, dim),
    )


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return -F.cosine_similarity(p, z, dim=-1).mean()


class Siamese(torch.nn.Module):
    """Online encoder, projector and predictor; with ``momentum_target`` also BYOL's EMA target."""

    def __init__(self, encoder: torch.nn.Module, projector_dim: int, predictor_dim: int, momentum_target: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projection_mlp(encoder.num_features, projector_dim)
        self.predictor = prediction_mlp(projector_dim, predictor_dim)
        self.target: torch.nn.Module | None = None
        if momentum_target:
            # BYOL starts the target as a copy of the online encoder and projector.
            self.target = copy.deepcopy(torch.nn.Sequential(self.encoder, self.projector)).requires_grad_(False)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [*self.encoder.parameters(), *self.projector.parameters(), *self.predictor.parameters()]

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """The symmetric loss: each view's prediction against the other view's (stopped) projection."""
        z1, z2 = self.projector(self.encoder(view1)), self.projector(self.encoder(view2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        if self.target is None:
            t1, t2 = z1.detach(), z2.detach()
        else:
            with torch.no_grad():
                t1, t2 = self.target(view1), self.target(view2)
        return 0.5 * (negative_cosine(p1, t2) + negative_cosine(p2, t1))

    @torch.no_grad()
    def update_target(self, decay: float) -> None:
        """target <- decay * target + (1 - decay) * online (parameters; the target's BN keeps its own statistics)."""
        online = [*self.encoder.parameters(), *self.projector.parameters()]
        for target, source in zip(self.target.parameters(), online):
            target.lerp_(source, 1.0 - decay)


def ema_decay(base: float, step: int, total_steps: int) -> float:
    """BYOL's schedule: ``base`` raised to 1 on a cosine over training."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(1.0, step / max(1, total_steps))) + 1.0) / 2.0


# ---- what a checkpoint holds ---------------------------------------------------------


@dataclass
class PretrainState:
    """Everything that changes during pretraining, saved and loaded as one checkpoint."""

    model: Siamese
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0
    history: list[dict] = field(default_factory=list)

    def save(self, path: Path, fingerprint: str, device: torch.device) -> None:
        history = torch.tensor([[float(row[f]) for f in LOG_FIELDS] for row in self.history], dtype=torch.float64)
        state = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": fingerprint,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "epoch": self.epoch,
            "history": history.reshape(-1, len(LOG_FIELDS)),
            "rng": capture_rng(device),
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def load(self, path: Path, fingerprint: str, device: torch.device) -> bool:
        """Take up the checkpoint at ``path`` (and its RNG states) if it is of these settings."""
        if not path.exists():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        if (state.get("format"), state.get("fingerprint")) != (CHECKPOINT_FORMAT, fingerprint):
            log.warning("ignoring checkpoint %s: it belongs to other settings or an older version", path)
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.epoch = int(state["epoch"])
        self.history = [dict(zip(LOG_FIELDS, row)) for row in state["history"].tolist()]
        restore_rng(state["rng"], device)
        log.info("resuming self-supervised pretraining from %s at epoch %d", path, self.epoch)
        return True


def new_state(settings: dict, device: torch.device, steps: int) -> PretrainState:
    """A freshly initialised network with SimSiam's optimiser and a cosine schedule."""
    encoder = create_model(settings["arch"], num_classes=0)
    model = Siamese(encoder, int(settings["projector_dim"]), int(settings["predictor_dim"]), settings["method"] == "byol").to(device)
    # SimSiam's linear scaling rule, and weight decay on every parameter as in its code.
    lr = float(settings["learning_rate"]) * int(settings["batch_size"]) / 256
    optimizer = torch.optim.SGD(model.trainable(), lr=lr, momentum=float(settings["momentum"]), weight_decay=float(settings["weight_decay"]))
    total_steps = steps * int(settings["epochs"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, 0))
    return PretrainState(model, optimizer, schedule)


# ---- one epoch ---------------------------------------------------------------------------


@dataclass
class Run:
    """What stays fixed for a run."""

    loader: DataLoader
    sampler: EpochSampler
    settings: dict
    seed: int
    device: torch.device
    steps: int  # optimiser steps per epoch


def train_epoch(state: PretrainState, run: Run) -> dict:
    """Train epoch ``state.epoch`` and return its history row (the caller advances and checkpoints)."""
    # The global RNG is seeded per epoch as in contam.train, so a resumed epoch draws as an uninterrupted one.
    torch.manual_seed(run.seed * 1_000_003 + state.epoch)
    run.sampler.set_epoch(state.epoch)
    state.model.train()
    meter, loss_sum = Throughput(), 0.0
    batch_size, total_steps = run.loader.batch_size, run.steps * int(run.settings["epochs"])
    step = state.epoch * run.steps
    for (view1, view2), _ in tqdm(run.loader, desc=f"{run.settings['method']} epoch {state.epoch}", mininterval=10, leave=False):
        if len(view1) == 1 < batch_size:
            continue  # batch norm cannot train on one image (steps_per_epoch leaves it out too)
        view1, view2 = view1.to(run.device, non_blocking=True), view2.to(run.device, non_blocking=True)
        loss = state.model.loss(view1, view2)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        state.schedule.step()
        step += 1
        if state.model.target is not None:
            state.model.update_target(ema_decay(float(run.settings["ema_decay"]), step, total_steps))
        loss_sum += float(loss.detach()) * len(view1)
        meter.add(len(view1))
    row = {"epoch": state.epoch, "loss": loss_sum / meter.count if meter.count else math.nan, "images_per_s": meter.rate, "seconds": meter.seconds}
    log.info("%s epoch %d loss %.4f lr %.2e %.1f images/s", run.settings["method"], state.epoch, row["loss"], state.schedule.get_last_lr()[0], row["images_per_s"])
    return row


# ---- the stage ------------------------------------------------------------------------------


def checkpoint_path(out_dir: str | Path) -> Path:
    """Beside ``out_dir``, not in it: Snakemake deletes a failed job's outputs."""
    out = Path(out_dir)
    return out.with_name(out.name + ".checkpoint.pt")


def pretrain(
    manifest: pd.DataFrame, settings: dict, seed: int, out_dir: str | Path, fingerprint: str, device: str | torch.device = "cpu", num_workers: int = 0
) -> dict:
    """Pretrain an encoder on ``manifest``'s images (labels unused), resuming from a matching checkpoint.

    Writes ``encoder.safetensors`` (stamped with ``fingerprint`` and the method)
    and ``history.csv`` into ``out_dir``; returns a summary.
    """
    check_method(settings["method"])
    started = time.perf_counter()
    device = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint_path(out)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    dataset = view_dataset(manifest, settings)
    sampler = EpochSampler(len(dataset), seed, with_seeds=True)
    batch_size = int(settings["batch_size"])
    steps = steps_per_epoch(len(dataset), batch_size)
    state = new_state(settings, device, steps)
    if steps == 0:
        warnings.warn(f"self-supervised pretraining got {len(dataset)} image(s), too few to train on; writing the untrained encoder", stacklevel=2)
    else:
        state.load(checkpoint, fingerprint, device)
        # One loader for the run (its workers persist); its own generator keeps it off the global RNG.
        loader = DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
            pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
        )
        run = Run(loader, sampler, settings, seed, device, steps)
        while state.epoch < int(settings["epochs"]):
            row = train_epoch(state, run)
            state.history.append(row)
            state.epoch += 1
            state.save(checkpoint, fingerprint, device)
    write_outputs(state, out, fingerprint, settings["method"])
    checkpoint.unlink(missing_ok=True)
    history = state.history
    seconds = sum(row["seconds"] for row in history)
    return {
        "method": settings["method"],
        "images": len(dataset),
        "epochs": len(history),
        "final_loss": history[-1]["loss"] if history else None,
        # Over all epochs, also those of a run this one resumed.
        "images_per_s": sum(row["images_per_s"] * row["seconds"] for row in history) / seconds if seconds else None,
        "seconds": time.perf_counter() - started,
    }


def write_outputs(state: PretrainState, out: Path, fingerprint: str, method: str) -> None:
    """history.csv, and encoder.safetensors (the online encoder) stamped with fingerprint and method."""
    with atomic_path(out / "history.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(state.history)
    weights = {k: v.detach().contiguous().cpu() for k, v in state.model.encoder.state_dict().items()}
    with atomic_path(out / "encoder.safetensors") as tmp:
        save_file(weights, str(tmp), metadata={"fingerprint": fingerprint, "method": method})
        sort_metadata(tmp)


METADATA_PREFIX = b'{"__metadata__":'


def sort_metadata(path: Path) -> None:
    """Put a safetensors file's metadata keys in sorted order, in place.

    safetensors writes metadata from a Rust HashMap, so with more than one key
    their order (and the file's bytes) changes from call to call. The sorted
    header has the same length, so only those bytes are rewritten.
    """
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = handle.read(size)
        if not header.startswith(METADATA_PREFIX):
            return
        text = header.decode()
        metadata, end = json.JSONDecoder().raw_decode(text, len(METADATA_PREFIX))
        ordered = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(ordered) != len(text[len(METADATA_PREFIX) : end].encode()):
            raise RuntimeError(f"{path}: unexpected metadata encoding in the safetensors header")
        handle.seek(8 + len(METADATA_PREFIX))
        handle.write(ordered)


def untrained_encoder(settings: dict, seed: int, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The encoder at random initialisation (seeded), in eval mode: what a probe gets without pretraining."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = create_model(settings["arch"], num_classes=0)
    return encoder.to(device).eval()


def load_encoder(weights: str | Path, settings: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The pretrained encoder (features only), in eval mode."""
    encoder = create_model(settings["arch"], num_classes=0)
    encoder.load_state_dict(load_file(str(weights)))
    return encoder.to(device).eval()


# ---- the linear probe ------------------------------------------------------------------------


def linear_probe(
    encoder: torch.nn.Module,
    image_size: int,
    train: pd.DataFrame,
    test_sets: dict[str, pd.DataFrame],
    num_classes: int,
    seed: int,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    num_workers: int = 0,
    C: float = 1.0,
) -> dict:
    """Fit a logistic regression on the frozen encoder's features of ``train`` and score it on each test set.

    Returns ``{"train_images": n, "sets": {name: contam.evaluate.accuracy(...)}}``:
    top-1/top-5 as fractions and per-class top-1 by class, as in metrics.json.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(train) == 0:
        raise ValueError("linear probe: the training set is empty")
    encoder.eval()

    def features(table: pd.DataFrame) -> np.ndarray:
        # No augmentation, the whole image: crop_ratio 1.
        return predict(encoder, table, image_size, 1.0, device, batch_size, num_workers).astype(np.float64)

    labels = train["label"].to_numpy(np.int64)
    classes = np.unique(labels)
    if len(classes) > 1:
        # lbfgs fits the multinomial (softmax) model for several classes.
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
        probe.fit(features(train), labels)
        scored = probe.classes_
    else:
        log.warning("linear probe: the training set holds one class (%d); it is predicted for every image", classes[0])
        probe, scored = None, classes
    results = {}
    for name, table in test_sets.items():
        targets = table["label"].to_numpy(np.int64)
        if len(table) == 0:
            results[name] = {"n": 0, "top1": None, "top5": None, "per_class_top1": {}}
            continue
        # Classes the probe never saw cannot be predicted.
        logits = np.full((len(table), num_classes), -np.inf)
        logits[:, scored] = probe.predict_log_proba(features(table)) if probe is not None else 0.0
        results[name] = accuracy(logits, targets, num_classes)
        log.info("linear probe %s: top-1 %.4f on %d images", name, results[name]["top1"], len(table))
    return {"train_images": int(len(train)), "sets": results}
