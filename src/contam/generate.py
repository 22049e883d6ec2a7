"""Stage generate_shard: make the images of one shard of a prompt table.

Shard k of S holds the prompt rows with ``row % S == k``: fixed before any data
is read, balanced across classes, and never needed to compute an image. Each
image is generated from its own seed (one ``torch.Generator`` per image), so its
noise is the same whatever shard or batch it runs in.

Two samplers: the embedded class-conditional UNet (``EmbeddedSampler``) and any
diffusers text-to-image pipeline (``DiffusersSampler``). Images the pipeline's
safety checker flags are never written; they are regenerated with the next
seed or dropped (``UnsafePolicy``), and counted either way. Images of one flat
colour or of the wrong size are dropped and counted.

Images are written under ``images-<settings id>/`` (the id hashes every setting
that changes pixels or files, and the generator's weight files), each named by
its prompt row and a key of the row's prompt, label and seed
(``contam.identity``), to a temporary name then renamed, by a thread pool so
that encoding never stalls the model. A killed shard rerun keeps
every image already on disk and generates only the rest. The shard's Parquet
index is written last; a row exists only for a complete, valid image.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from contam.images import FORMATS, image_problem, is_complete_image, save_image
from contam.identity import row_keys
from contam.logs import Throughput

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["path", "row", "label", "class_name", "prompt", "seed", "regenerations", "image_id", "caption_id", "generator", "settings_id"]


class Sampler(Protocol):
    image_hw: tuple[int, int]

    def __call__(self, batch: pd.DataFrame) -> tuple[np.ndarray, list[bool]]:
        """Images (N,H,W,3 uint8) for the batch's rows, and whether each was flagged unsafe."""


def shard_rows(prompts: pd.DataFrame, shards: int, shard: int) -> pd.DataFrame:
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is outside 0..{shards - 1}")
    return prompts[prompts["row"] % shards == shard].sort_values("row", ignore_index=True)


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
        self.digits_storage = bool(sample_config.get("digits_storage", False))
        self.device = device
        size = self.unet.config.sample_size
        self.image_hw = (size, size)

    @torch.no_grad()
    def __call__(self, batch: pd.DataFrame) -> tuple[np.ndarray, list[bool]]:
        generators = per_image_generators(batch["seed"])
        shape = (self.unet.config.in_channels, *self.image_hw)
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
        # A grey model's images are stored as RGB with equal channels, like the real digits.
        images = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
        if self.digits_storage:
            from contam.index_real import stored_like_a_digit

            images = np.stack([stored_like_a_digit(image) for image in images])
        return images, [False] * len(batch)


SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler",
}


def load_text_to_image(gen_config: dict, device: torch.device | str = "cpu", attention: str = "sdpa", compile_unet: bool = False):
    """A diffusers text-to-image pipeline from a hub id or a local folder (safetensors only)."""
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    from contam.devices import DTYPES

    kwargs = {"dtype": DTYPES[gen_config.get("dtype", "fp16")], "use_safetensors": True}
    if gen_config.get("variant"):
        kwargs["variant"] = gen_config["variant"]
    if not gen_config.get("safety_checker", False):
        kwargs["safety_checker"] = None
        kwargs["requires_safety_checker"] = False
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(gen_config["model"], **kwargs)
    except (ValueError, KeyError):
        # Pipelines that AutoPipeline does not map (community or custom ones).
        pipe = DiffusionPipeline.from_pretrained(gen_config["model"], **kwargs)
    if gen_config.get("safety_checker", False) and getattr(pipe, "safety_checker", None) is None:
        raise ValueError(f"safety_checker is on, but the pipeline at {gen_config['model']} has no safety checker")
    return prepare_pipeline(pipe, gen_config, device, attention, compile_unet)


def prepare_pipeline(pipe, gen_config: dict, device: torch.device | str = "cpu", attention: str = "sdpa", compile_unet: bool = False):
    """Set a loaded pipeline's scheduler, attention, device and compilation."""
    import diffusers

    scheduler_name = gen_config.get("scheduler", "ddim")
    extra = {"algorithm_type": "dpmsolver++"} if scheduler_name == "dpmsolver++" else {}
    pipe.scheduler = getattr(diffusers, SCHEDULERS[scheduler_name]).from_config(pipe.scheduler.config, **extra)
    if attention == "classic":
        # The CompVis-era attention (explicit softmax(QK^T)V), for comparison with SDPA.
        from diffusers.models.attention_processor import AttnProcessor

        pipe.unet.set_attn_processor(AttnProcessor())
    pipe = pipe.to(device)
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class DiffusersSampler:
    """Generates a batch of prompt rows with a diffusers text-to-image pipeline.

    The starting noise of each image comes from its own CPU ``torch.Generator``,
    so an image depends only on its prompt and seed, on any device and in any
    batch, up to the float rounding of batched kernels (see
    docs/architecture.md). Safety-checker flags are returned with the images.
    """

    def __init__(self, gen_config: dict, device: torch.device, attention: str = "sdpa", compile_unet: bool = False, pipe=None):
        self.pipe = pipe if pipe is not None else load_text_to_image(gen_config, device, attention, compile_unet)
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
            generator=per_image_generators(batch["seed"]),
            output_type="np",
        )
        images = (np.clip(result.images, 0, 1) * 255).round().astype(np.uint8)
        flags = getattr(result, "nsfw_content_detected", None) or [False] * len(batch)
        return images, [bool(f) for f in flags]


@dataclass(frozen=True)
class ImageOptions:
    """How generated images are stored; each changes the files, so each is a rule param."""

    image_format: str = "png"
    quality: int = 95
    storage_size: int | None = None

    @classmethod
    def of(cls, gen_config: dict) -> "ImageOptions":
        return cls(gen_config.get("image_format", "png"), int(gen_config.get("image_quality", 95)), gen_config.get("storage_size"))


@dataclass(frozen=True)
class UnsafePolicy:
    """What happens to an image the safety checker flags: it is never written.

    ``regenerate`` tries the next seed (seed + 1, + 2, ...) up to
    ``max_regenerations`` times, then drops the row; ``drop`` drops it at once.
    """

    action: str = "regenerate"
    max_regenerations: int = 3

    @classmethod
    def of(cls, gen_config: dict) -> "UnsafePolicy":
        return cls(gen_config.get("on_unsafe", "regenerate"), int(gen_config.get("max_regenerations", 3)))

    @property
    def attempts(self) -> int:
        return 1 + (self.max_regenerations if self.action == "regenerate" else 0)


def attempt_seed(seed: int, attempt: int) -> int:
    """The seed of a regeneration: the next seeds after the row's own, in 63 bits."""
    return (int(seed) + int(attempt)) % (1 << 63)


def image_path(images_dir: Path, row: int, key: str, attempt: int, image_format: str) -> Path:
    """Images go 10,000 to a folder so that no folder grows huge. The name
    carries the row's key (its prompt, label and seed: contam.identity.row_keys),
    so a changed prompt table never reuses an image, and a regenerated image's
    attempt, so a resumed shard knows which seed made it."""
    suffix = f"-r{attempt}" if attempt else ""
    return images_dir / f"{row // 10000:04d}" / f"{row:08d}-{key}{suffix}{FORMATS[image_format][1]}"


def _finished_attempt(images_dir: Path, row: int, key: str, options: ImageOptions, attempts: int) -> int | None:
    for attempt in range(attempts):
        if is_complete_image(image_path(images_dir, row, key, attempt, options.image_format)):
            return attempt
    return None


def _remove_stale_temporaries(images_dir: Path, rows: list[int]) -> int:
    """Delete temporary files a killed run of this shard left (other shards share the folders)."""
    mine = {f"{r:08d}" for r in rows}
    removed = 0
    for folder in {images_dir / f"{r // 10000:04d}" for r in rows}:
        if not folder.is_dir():
            continue
        for path in folder.glob(".*.tmp"):
            if path.name[1:9] in mine:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


@dataclass
class ShardProgress:
    """What happened to a shard's rows: the attempt kept per row, and what was not kept."""

    kept: dict[int, int]
    resumed: int
    invalid: dict[int, str] = field(default_factory=dict)
    dropped_unsafe: list[int] = field(default_factory=list)
    flagged: list[list[int]] = field(default_factory=list)
    meter: Throughput = field(default_factory=Throughput)

    def take(self, batch: pd.DataFrame, images: np.ndarray, unsafe_flags: list[bool], image_hw, attempts: int) -> tuple[list, list[int]]:
        """Sort one sampled batch into images to write and rows to retry."""
        to_write, retry = [], []
        for (row, key, seed, attempt), image, is_unsafe in zip(batch[["row", "key", "seed", "attempt"]].itertuples(index=False), images, unsafe_flags):
            row = int(row)
            if is_unsafe:
                self.flagged.append([row, int(seed)])
                (retry if attempt + 1 < attempts else self.dropped_unsafe).append(row)
                continue
            reason = image_problem(image, image_hw)
            if reason:
                self.invalid[row] = reason
                continue
            self.kept[row] = int(attempt)
            to_write.append((row, key, int(attempt), image))
        self.meter.add(len(batch))
        return to_write, retry

    def counts(self, rows: int) -> dict:
        return {
            "rows": rows,
            "resumed": self.resumed,
            "generated": len(self.kept) - self.resumed,
            "regenerated": int(sum(1 for a in self.kept.values() if a > 0)),
            "flagged": len(self.flagged),
            "dropped_unsafe": len(self.dropped_unsafe),
            "dropped_invalid": len(self.invalid),
            "images_per_s": round(self.meter.rate, 3) if self.meter.count else None,
            "flagged_rows": self.flagged,
        }


def _find_finished(images_dir: Path, rows: pd.DataFrame, options: ImageOptions, unsafe: UnsafePolicy, threads: int) -> dict[int, int]:
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        found = pool.map(lambda rk: _finished_attempt(images_dir, rk[0], rk[1], options, unsafe.attempts), zip(rows["row"].astype(int), rows["key"]))
        return {int(r): a for r, a in zip(rows["row"], found) if a is not None}


def _sample_missing(work: pd.DataFrame, progress: ShardProgress, images_dir: Path, sampler, batch_size: int, options: ImageOptions, unsafe: UnsafePolicy, writer_threads: int) -> None:
    """Sample every row of ``work`` (retrying flagged ones) while a thread pool writes images."""
    pending: list[Future] = []
    with ThreadPoolExecutor(max(writer_threads, 1)) as writers, tqdm(total=len(work), desc="generate", mininterval=10) as bar:
        while len(work):
            retry = []
            for start in range(0, len(work), batch_size):
                batch = work.iloc[start : start + batch_size]
                images, unsafe_flags = sampler(batch)
                to_write, again = progress.take(batch, images, unsafe_flags, sampler.image_hw, unsafe.attempts)
                retry += again
                for row, key, attempt, image in to_write:
                    path = image_path(images_dir, row, key, attempt, options.image_format)
                    pending.append(writers.submit(save_image, image, path, options.image_format, options.quality, options.storage_size))
                # Bound the queue so memory stays flat while the model keeps going.
                while len(pending) > 4 * batch_size:
                    pending.pop(0).result()
                bar.update(len(batch))
            work = _next_attempts(work, retry)
            bar.total += len(work)
            bar.refresh()
        for future in pending:
            future.result()


def generate_shard(
    rows: pd.DataFrame,
    images_dir: str | Path,
    sampler: Sampler | Callable,
    batch_size: int,
    generator_name: str,
    settings_id: str,
    options: ImageOptions = ImageOptions(),
    unsafe: UnsafePolicy = UnsafePolicy(),
    writer_threads: int = 4,
) -> tuple[pd.DataFrame, dict]:
    """Generate the missing images of ``rows``; return the shard index and counts."""
    images_dir = Path(images_dir)
    rows = rows.assign(key=row_keys(rows))
    stale = _remove_stale_temporaries(images_dir, [int(r) for r in rows["row"]])
    kept = _find_finished(images_dir, rows, options, unsafe, writer_threads)
    progress = ShardProgress(kept=kept, resumed=len(kept))
    work = rows[~rows["row"].isin(kept)].assign(attempt=0)
    log.info("shard: %d images, %d already on disk, %d to generate (%d stale temporary files removed)", len(rows), len(kept), len(work), stale)
    _sample_missing(work, progress, images_dir, sampler, batch_size, options, unsafe, writer_threads)
    if progress.meter.count:
        log.info("generated %s images", progress.meter)
    if progress.dropped_unsafe:
        log.warning("%d rows dropped after %d flagged attempts each, e.g. rows %s", len(progress.dropped_unsafe), unsafe.attempts, progress.dropped_unsafe[:20])
    for row, reason in list(progress.invalid.items())[:20]:
        log.warning("row %d not kept: %s", row, reason)
    return _shard_index(rows, progress.kept, images_dir, options, generator_name, settings_id), progress.counts(len(rows))


def _shard_index(rows: pd.DataFrame, kept: dict[int, int], images_dir: Path, options: ImageOptions, generator_name: str, settings_id: str) -> pd.DataFrame:
    """One row per kept image, with the seed that made it and its file."""
    index = rows[rows["row"].isin(kept)].copy()
    attempts = np.array([kept[int(r)] for r in index["row"]], dtype=np.int64)
    index["seed"] = [attempt_seed(s, a) for s, a in zip(index["seed"], attempts)]
    index["regenerations"] = attempts
    index["path"] = [str(image_path(images_dir, int(r), k, int(a), options.image_format)) for r, k, a in zip(index["row"], index["key"], attempts)]
    index["generator"] = generator_name
    index["settings_id"] = settings_id
    return index[INDEX_COLUMNS].reset_index(drop=True)


def _next_attempts(work: pd.DataFrame, rows: list[int]) -> pd.DataFrame:
    """The rows to try again, each with its next seed."""
    again = work[work["row"].isin(rows)].copy()
    again["attempt"] += 1
    again["seed"] = [attempt_seed(s, 1) for s in again["seed"]]
    return again


def load_sampler(generator: dict, model_dir, device: torch.device, execution: dict) -> Sampler:
    if generator["kind"] == "embedded":
        return EmbeddedSampler(model_dir, generator["sample"], device)
    return DiffusersSampler(generator, device, attention=execution["generate_attention"], compile_unet=execution["generate_compile"])


def run_shard(settings: dict, prompts: pd.DataFrame, shards: int, shard: int, model_dir, images_root, execution: dict, gpus: int, threads: int, index_path, counts_path) -> dict:
    """One generate_shard job: fingerprint the weights, generate what is missing, write the index."""
    from contam import identity
    from contam.devices import job_device
    from contam.io import write_json, write_parquet

    generator = settings["generator"]
    device = job_device(execution, gpus)
    # Computed once per shard: a model replaced in place must never reuse old images.
    weights = identity.weights_fingerprint(model_dir if generator["kind"] == "embedded" else generator["model"])
    settings_id = identity.settings_id(settings, weights)
    images_dir = Path(images_root) / f"images-{settings_id}"
    index, counts = generate_shard(
        shard_rows(prompts, shards, shard),
        images_dir,
        load_sampler(generator, model_dir, device, execution),
        batch_size=execution["generate_batch_size"],
        generator_name=settings["generator_name"],
        settings_id=settings_id,
        options=ImageOptions.of(generator),
        unsafe=UnsafePolicy.of(generator),
        writer_threads=max(threads, 2),
    )
    log.info("shard %d: %s", shard, {k: v for k, v in counts.items() if k != "flagged_rows"})
    write_json({**counts, "settings": settings, "weights_fingerprint": weights, "settings_id": settings_id}, counts_path)
    write_parquet(index, index_path)
    return counts
