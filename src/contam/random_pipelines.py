"""Stable Diffusion pipelines built from configs with random weights.

They load through exactly the code that loads real weights (``save_pretrained``
then ``from_pretrained`` by path), with no download, so they serve three uses:

* ``tiny``: a pipeline of a few MB that the tests run on CPU in seconds;
* ``sd15``: the real SD-1.5 shapes (UNet, VAE, CLIP ViT-L/14 text encoder), so
  a benchmark does the same FLOPs as the real weights without fetching them;
* a smoke test of a cluster before the real weights are copied there::

      python -m contam.random_pipelines --shape sd15 /scratch/sd15-random

The images are noise, of course; only their cost and their plumbing are real.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

# DDIM as the authors sampled SD v1.1 (beta schedule of the v1 checkpoints).
SD_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

SHAPES = {
    "tiny": {
        "unet": {
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": 32,
            "attention_head_dim": 4,
            "sample_size": 16,
        },
        "vae": {"block_out_channels": (32, 64), "layers_per_block": 1, "sample_size": 32},
        "text": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4, "projection_dim": 32},
        "vision": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "projection_dim": 32},
    },
    # diffusers' and OpenAI's published configs of SD 1.5 and CLIP ViT-L/14.
    "sd15": {
        "unet": {
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            "sample_size": 64,
        },
        "vae": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "sample_size": 512},
        "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "projection_dim": 768},
        "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "projection_dim": 768},
    },
}


def byte_symbols() -> list[str]:
    """The 256 printable characters that byte-level BPE uses for the bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def byte_level_tokenizer(max_length: int = 77):
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols, with no merges.

    Any text tokenizes (one token per character), so prompts of every kind run
    through the real tokenizer code; ``model_max_length`` is CLIP's 77.
    """
    from transformers import CLIPTokenizer

    symbols = byte_symbols()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab[symbol] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def build_pipeline(shape: str = "tiny", seed: int = 0, safety_checker: bool = False):
    """A StableDiffusionPipeline of the named shape with seeded random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig

    spec = SHAPES[shape]
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    vocab_size = 49408 if shape == "sd15" else len(tokenizer)
    text_config = CLIPTextConfig(
        vocab_size=vocab_size, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1, **spec["text"]
    )
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, norm_num_groups=32, **spec["unet"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(spec["vae"]["block_out_channels"]),
        up_block_types=("UpDecoderBlock2D",) * len(spec["vae"]["block_out_channels"]),
        norm_num_groups=32,
        **spec["vae"],
    )
    checker, processor = None, None
    if safety_checker:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

        vision = CLIPVisionConfig(hidden_act="quick_gelu", **spec["vision"])
        checker = StableDiffusionSafetyChecker(CLIPConfig(text_config=text_config.to_dict(), vision_config=vision.to_dict(), projection_dim=spec["vision"]["projection_dim"]))
        side = spec["vision"]["image_size"]
        processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=CLIPTextModel(text_config).eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DDIMScheduler(**SD_SCHEDULER),
        safety_checker=checker,
        feature_extractor=processor,
        requires_safety_checker=safety_checker,
    )


def save_pipeline(out: str | Path, shape: str = "tiny", seed: int = 0, safety_checker: bool = False) -> Path:
    """Build and save a random pipeline as safetensors; returns the folder."""
    out = Path(out)
    build_pipeline(shape, seed, safety_checker).save_pretrained(out, safe_serialization=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to save the pipeline into")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--safety-checker", action="store_true", help="include a (random) safety checker")
    args = parser.parse_args(argv)
    print(save_pipeline(args.out, args.shape, args.seed, args.safety_checker))


if __name__ == "__main__":
    main()
