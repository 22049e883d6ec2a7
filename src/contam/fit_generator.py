"""Stage fit_generator: train the embedded class-conditional diffusion model.

A diffusers ``UNet2DModel`` with one class embedding per class plus a "no class"
embedding (for classifier-free guidance) learns to denoise the real training
images. It stands in for "a generator trained on the web" in the embedded world,
and it is the model the generative study trains on every mix (``contam.generative``).
The weights saved are the exponential moving average, as safetensors.

A fit survives a kill: every ``checkpoint_every`` steps it writes (atomically) the
UNet, its average, the optimiser, the schedule, the RNG state and the log, and a
rerun with the same settings and data resumes there and ends with the same
weights as an uninterrupted fit. A checkpoint of other settings is ignored.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from tqdm import tqdm

from contam.images import load_rgb
from contam.io import atomic_path, write_json
from contam.logs import Throughput

log = logging.getLogger(__name__)

TRAIN_TIMESTEPS = 1000
HISTORY_FIELDS = ("step", "loss", "lr", "images_per_s")
SCHEDULE = "squaredcos_cap_v2"


def build_unet(image_size: int, num_classes: int, block_channels: list[int], layers_per_block: int, attention: bool = True, channels: int = 3) -> UNet2DModel:
    """A small UNet; attention (if any) only at the lowest resolution, where it is cheap.

    ``channels`` is 3 (RGB) or 1 (grey: the sampler writes it out as RGB with
    equal channels, as the real digits are stored).
    """
    levels = len(block_channels)
    down = ["DownBlock2D"] * (levels - 1) + ["AttnDownBlock2D" if attention else "DownBlock2D"]
    up = ["AttnUpBlock2D" if attention else "UpBlock2D"] + ["UpBlock2D"] * (levels - 1)
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(block_channels),
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        layers_per_block=layers_per_block,
        norm_num_groups=min(8, min(block_channels)),
        attention_head_dim=8,
        num_class_embeds=num_classes + 1,  # the last one means "no class"
    )


def noise_schedulers() -> tuple[DDPMScheduler, DDIMScheduler]:
    kwargs = dict(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule=SCHEDULE, clip_sample=True, prediction_type="epsilon")
    return DDPMScheduler(**kwargs), DDIMScheduler(**kwargs)


def load_images(index: pd.DataFrame, image_size: int, channels: int = 3) -> torch.Tensor:
    """The training images as a float tensor in [-1, 1], RGB or (``channels`` 1) grey."""
    arrays = []
    for path in index["path"]:
        image = load_rgb(path)
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size))
        if channels == 1:
            image = image.convert("L")
        arrays.append(np.asarray(image).reshape(image_size, image_size, channels))
    stacked = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return stacked / 127.5 - 1.0


class Stopped(RuntimeError):
    """Raised (for tests) after a checkpoint was saved at ``stop_after`` steps."""


CHECKPOINT_FORMAT = 1


def fit(
    train_index: pd.DataFrame,
    num_classes: int,
    out_dir: str | os.PathLike,
    image_size: int,
    fit_config: dict,
    seed: int,
    device: torch.device,
    *,
    checkpoint: str | os.PathLike | None = None,
    fingerprint: str = "",
    checkpoint_every: int = 100,
    init_from: str | os.PathLike | None = None,
    stop_after: int | None = None,
    keep_final: bool = False,
) -> dict:
    """Train the UNet and save it (EMA weights) with its scheduler under ``out_dir``.

    ``checkpoint``: a file to resume from and save to (every ``checkpoint_every``
    steps), used only if it was written with the same ``fingerprint``; it is
    removed once the model is saved. ``init_from``: a fitted model folder whose
    weights (its average) start the fit, i.e. fine-tuning instead of a fit from
    scratch. ``stop_after`` (for tests) saves a checkpoint and raises Stopped.
    ``keep_final`` keeps the finished fit's checkpoint instead: a rerun with the
    same fingerprint (to rescore, say) saves the model again without refitting.
    """
    torch.manual_seed(seed)
    channels = int(fit_config.get("channels", 3))
    images = load_images(train_index, image_size, channels).to(device)
    labels = torch.as_tensor(train_index["label"].to_numpy(), dtype=torch.long, device=device)
    unet = build_unet(image_size, num_classes, fit_config["block_channels"], fit_config["layers_per_block"], fit_config.get("attention", True), channels)
    if init_from is not None:
        start = UNet2DModel.from_pretrained(Path(init_from) / "unet", use_safetensors=True)
        unet.load_state_dict(start.state_dict())
    unet = unet.to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    train_scheduler, sample_scheduler = noise_schedulers()
    steps, batch_size = int(fit_config["steps"]), int(fit_config["batch_size"])
    optimizer = torch.optim.AdamW(unet.parameters(), lr=fit_config["learning_rate"], weight_decay=0.0)
    warmup = max(1, steps // 20)
    lr_lambda = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))  # noqa: E731
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    null_class = num_classes
    generator = torch.Generator(device="cpu").manual_seed(seed)
    history: list[dict] = []
    first = 0
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if (state.get("format"), state.get("fingerprint")) == (CHECKPOINT_FORMAT, fingerprint):
            unet.load_state_dict(state["unet"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            lr_schedule.load_state_dict(state["schedule"])
            generator.set_state(state["rng"])
            history = [{**dict(zip(HISTORY_FIELDS, row)), "step": int(row[0])} for row in state["history"].tolist()]
            first = int(state["step"])
            log.info("resuming from checkpoint at step %d of %d", first, steps)
        else:
            log.warning("ignoring checkpoint %s: it belongs to other settings or data", checkpoint)

    def save_checkpoint(done: int) -> None:
        table = torch.tensor([[float(h[f]) for f in HISTORY_FIELDS] for h in history], dtype=torch.float64)
        state = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": fingerprint,
            "step": done,
            "unet": unet.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": lr_schedule.state_dict(),
            "rng": generator.get_state(),
            "history": table.reshape(-1, len(HISTORY_FIELDS)),
        }
        with atomic_path(checkpoint) as tmp:
            torch.save(state, tmp)

    meter = Throughput()
    log.info("fitting a %.2fM-parameter UNet on %d images for %d steps (%s)", sum(p.numel() for p in unet.parameters()) / 1e6, len(images), steps, f"from {init_from}" if init_from else "from scratch")
    for step in tqdm(range(first, steps), desc="fit generator", mininterval=10, initial=first, total=steps):
        pick = torch.randint(len(images), (batch_size,), generator=generator).to(device)
        clean = images[pick]
        cond = labels[pick].clone()
        drop = torch.rand(batch_size, generator=generator).to(device) < fit_config["label_dropout"]
        cond[drop] = null_class
        noise = torch.randn(clean.shape, generator=generator).to(device)
        t = torch.randint(TRAIN_TIMESTEPS, (batch_size,), generator=generator).to(device)
        noisy = train_scheduler.add_noise(clean, noise, t)
        loss = F.mse_loss(unet(noisy, t, class_labels=cond).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        decay = min(fit_config["ema_decay"], (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        meter.add(batch_size)
        if step % 100 == 0 or step == steps - 1:
            history.append({"step": step, "loss": float(loss), "lr": lr_schedule.get_last_lr()[0], "images_per_s": meter.rate})
            log.info("step %d loss %.4f (%s images)", step, float(loss), meter)
        done = step + 1
        if checkpoint is not None and done < steps and (done % checkpoint_every == 0 or done == stop_after):
            save_checkpoint(done)
        if stop_after is not None and done == stop_after:
            raise Stopped(f"stopped after step {done}; checkpoint saved")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ema.save_pretrained(out / "unet", safe_serialization=True)
    sample_scheduler.save_pretrained(out / "scheduler")
    with atomic_path(out / "fit_log.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    summary = {"steps": steps, "final_loss": history[-1]["loss"], "seconds": meter.seconds, "num_classes": num_classes, "image_size": image_size, "resumed_at": first}
    write_json(summary, out / "fit_summary.json")
    if checkpoint is not None and keep_final:
        if first < steps:
            save_checkpoint(steps)
    elif checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return summary
