"""Stage generate_shard: make the images of one shard of a prompt table.

Shard k of S holds the prompt rows with ``row % S == k``: fixed before any data
is read, balanced across classes, and never needed to compute an image. Each
image is generated from its own seed (one ``torch.Generator`` per image), so it
is the same whatever shard or batch it runs in.

Images are written under ``images-<settings id>/`` (the id hashes every setting
that changes pixels), each to a temporary name then renamed, by a thread pool so
that encoding never stalls the model. A killed shard rerun keeps every image
already on disk and generates only the rest. The shard's Parquet index is
written last; a row exists only for a complete, valid image.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from contam.images import FORMATS, image_problem, is_complete_image, save_image
from contam.logs import Throughput

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["path", "row", "label", "class_name", "prompt", "seed", "image_id", "caption_id", "generator", "settings_id"]


class Sampler(Protocol):
    image_hw: tuple[int, int]

    def __call__(self, batch: pd.DataFrame) -> tuple[np.ndarray, list[bool]]:
        """Images (N,H,W,3 uint8) for the batch's rows, and whether each was flagged unsafe."""


def shard_rows(prompts: pd.DataFrame, shards: int, shard: int) -> pd.DataFrame:
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is outside 0..{shards - 1}")
    return prompts[prompts["row"] % shards == shard].sort_values("row", ignore_index=True)


def image_relpath(row: int, image_format: str) -> str:
    """Images go 10,000 to a folder so that no folder grows huge."""
    return f"{row // 10000:04d}/{row:08d}{FORMATS[image_format][1]}"


def per_image_generators(seeds, device: str = "cpu") -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


class EmbeddedSampler:
    """DDIM sampling of the embedded class-conditional UNet with classifier-free guidance."""

    def __init__(self, model_dir: str | Path, sample_config: dict, device: torch.device):
        from diffusers import DDIMScheduler, UNet2DModel

        self.unet = UNet2DModel.from_pretrained(Path(model_dir) / "unet", use_safetensors=True).to(device).eval()
        self.scheduler = DDIMScheduler.from_pretrained(Path(model_dir) / "scheduler")
        self.null_class = self.unet.config.num_class_embeds - 1
        self.steps = int(sample_config["steps"])
        self.guidance = float(sample_config["guidance"])
        self.eta = float(sample_config["eta"])
        self.device = device
        size = self.unet.config.sample_size
        self.image_hw = (size, size)

    @torch.no_grad()
    def __call__(self, batch: pd.DataFrame) -> tuple[np.ndarray, list[bool]]:
        generators = per_image_generators(batch["seed"])
        shape = (3, *self.image_hw)
        x = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(self.device)
        labels = torch.tensor(np.array(batch["label"], dtype=np.int64), device=self.device)
        self.scheduler.set_timesteps(self.steps)
        for t in self.scheduler.timesteps:
            if self.guidance > 0:
                both = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, torch.full_like(labels, self.null_class)])).sample
                cond, uncond = both.chunk(2)
                eps = cond + self.guidance * (cond - uncond)
            else:
                eps = self.unet(x, t, class_labels=labels).sample
            x = self.scheduler.step(eps, t, x, eta=self.eta, generator=generators if self.eta > 0 else None).prev_sample
        images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return images, [False] * len(batch)


SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler",
}


class DiffusersSampler:
    """Any diffusers text-to-image pipeline, by hub id or local folder (safetensors)."""

    def __init__(self, gen_config: dict, device: torch.device, attention: str = "sdpa", compile_unet: bool = False):
        import diffusers
        from diffusers import AutoPipelineForText2Image, DiffusionPipeline

        from contam.devices import DTYPES

        kwargs = {"torch_dtype": DTYPES[gen_config.get("dtype", "fp16")], "use_safetensors": True}
        if not gen_config.get("safety_checker", False):
            kwargs["safety_checker"] = None
            kwargs["requires_safety_checker"] = False
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(gen_config["model"], **kwargs)
        except (ValueError, KeyError):
            pipe = DiffusionPipeline.from_pretrained(gen_config["model"], **kwargs)
        scheduler_class = getattr(diffusers, SCHEDULERS[gen_config.get("scheduler", "ddim")])
        extra = {"algorithm_type": "dpmsolver++"} if gen_config.get("scheduler") == "dpmsolver++" else {}
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **extra)
        if attention != "sdpa" and hasattr(pipe.unet, "set_attn_processor"):
            from diffusers.models.attention_processor import AttnProcessor

            pipe.unet.set_attn_processor(AttnProcessor())
        pipe = pipe.to(device)
        if compile_unet:
            pipe.unet = torch.compile(pipe.unet)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.config = gen_config
        self.image_hw = (int(gen_config.get("height", 512)), int(gen_config.get("width", 512)))

    @torch.no_grad()
    def __call__(self, batch: pd.DataFrame) -> tuple[np.ndarray, list[bool]]:
        cfg = self.config
        negative = cfg.get("negative_prompt", "")
        result = self.pipe(
            prompt=list(batch["prompt"]),
            negative_prompt=[negative] * len(batch) if negative else None,
            num_inference_steps=int(cfg.get("steps", 50)),
            guidance_scale=float(cfg.get("guidance", 7.5)),
            eta=float(cfg.get("eta", 0.0)),
            height=self.image_hw[0],
            width=self.image_hw[1],
            # CPU generators: an image's noise is the same on any device.
            generator=per_image_generators(batch["seed"]),
            output_type="np",
        )
        images = (np.clip(result.images, 0, 1) * 255).round().astype(np.uint8)
        flags = getattr(result, "nsfw_content_detected", None) or [False] * len(batch)
        return images, [bool(f) for f in flags]


def generate_shard(
    rows: pd.DataFrame,
    images_dir: str | Path,
    sampler: Sampler | Callable,
    batch_size: int,
    generator_name: str,
    settings_id: str,
    image_format: str = "png",
    writer_threads: int = 4,
) -> tuple[pd.DataFrame, dict]:
    """Generate the missing images of ``rows``; return the shard index and counts."""
    images_dir = Path(images_dir)
    paths = [images_dir / image_relpath(int(r), image_format) for r in rows["row"]]
    done = np.array([is_complete_image(p) for p in paths], dtype=bool)
    todo = rows[~done]
    log.info("shard: %d images, %d already on disk, %d to generate", len(rows), int(done.sum()), len(todo))
    problems: dict[int, str] = {}
    meter = Throughput()
    pending: list[Future] = []
    with ThreadPoolExecutor(writer_threads) as writers, tqdm(total=len(todo), desc="generate", mininterval=10) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo.iloc[start : start + batch_size]
            images, flagged = sampler(batch)
            for row, image, unsafe in zip(batch["row"], images, flagged):
                reason = "flagged by the safety checker" if unsafe else image_problem(image, sampler.image_hw)
                if reason:
                    problems[int(row)] = reason
                    continue
                pending.append(writers.submit(save_image, image, images_dir / image_relpath(int(row), image_format), image_format))
            # Bound the queue so memory stays flat while the model keeps going.
            while len(pending) > 4 * batch_size:
                pending.pop(0).result()
            meter.add(len(batch))
            bar.update(len(batch))
        for future in pending:
            future.result()
    if len(todo):
        log.info("generated %s images", meter)
    for row, reason in list(problems.items())[:20]:
        log.warning("row %d not kept: %s", row, reason)

    kept = rows[[int(r) not in problems for r in rows["row"]]].copy()
    kept["path"] = [str(images_dir / image_relpath(int(r), image_format)) for r in kept["row"]]
    kept["generator"] = generator_name
    kept["settings_id"] = settings_id
    counts = {
        "rows": len(rows),
        "resumed": int(done.sum()),
        "generated": len(todo) - len(problems),
        "dropped_unsafe": sum(1 for r in problems.values() if r.startswith("flagged")),
        "dropped_invalid": sum(1 for r in problems.values() if not r.startswith("flagged")),
        "images_per_s": round(meter.rate, 3) if len(todo) else None,
    }
    return kept[INDEX_COLUMNS].reset_index(drop=True), counts
