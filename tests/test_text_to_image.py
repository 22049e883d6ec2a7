"""The text-to-image path on a tiny Stable Diffusion pipeline with random weights.

The pipeline is built from configs, saved with save_pretrained and loaded by
path through the same code that loads real weights (contam.generate).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from contam import generate, prompts, random_pipelines
from contam.images import image_problem

from conftest import REPO, images_of

CLASSES = pd.DataFrame({"label": range(3), "folder": ["n1", "n2", "n3"], "names": ["tench, Tinca tinca", "goldfish", "great white shark, white shark"]})
CPU = torch.device("cpu")


def gen_config(model: Path, **overrides) -> dict:
    return {"kind": "diffusers", "model": str(model), "scheduler": "ddim", "steps": 3, "guidance": 7.5, "eta": 0.0, "height": 32, "width": 32, "dtype": "fp32", **overrides}


def rows_of(per_class: int = 4) -> pd.DataFrame:
    return prompts.complex_prompts(CLASSES, per_class, base_seed=42)


def test_tiny_pipeline_loads_by_path_with_every_scheduler(tiny_sd):
    assert (tiny_sd / "unet" / "diffusion_pytorch_model.safetensors").exists()
    for name, class_name in generate.SCHEDULERS.items():
        # PNDM needs a few steps for its warm-up, whatever the model.
        sampler = generate.DiffusersSampler(gen_config(tiny_sd, scheduler=name, steps=6), CPU)
        assert type(sampler.pipe.scheduler).__name__ == class_name
        assert sampler.pipe.tokenizer.model_max_length == 77
        batch = rows_of(1).iloc[:2].copy()
        batch.loc[batch.index[0], "prompt"] = "a long caption " * 12  # over 77 tokens: truncated, not an error
        images, flags = sampler(batch)
        assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
        assert flags == [False, False]
        assert image_problem(images[0], (32, 32)) is None


def test_images_depend_only_on_row_and_seed(tiny_sd, tmp_path):
    sampler = generate.DiffusersSampler(gen_config(tiny_sd), CPU)
    rows = rows_of(per_class=4)
    whole, counts = generate.generate_shard(rows, tmp_path / "a", sampler, batch_size=1, generator_name="sd", settings_id="x")
    a = images_of(whole)
    assert a.keys() == set(range(12)) and not np.array_equal(a[0], a[1])
    assert counts["generated"] == 12 and counts["images_per_s"] > 0
    assert list(whole["seed"]) == list(rows["seed"]) and (whole["regenerations"] == 0).all()
    # One image at a time, the pixels never depend on the shard count or order.
    parts = [generate.generate_shard(generate.shard_rows(rows, 3, k).iloc[::-1], tmp_path / "b", sampler, 1, "sd", "x")[0] for k in range(3)]
    b = images_of(pd.concat(parts))
    assert all(np.array_equal(a[row], b[row]) for row in a)
    # In batches, each row is still made from its own noise and prompt, but
    # batched kernels round by position (GEMM tiles, oneDNN convolutions): a
    # rare pixel value may move by one level, never more.
    for batch_size, shards in ((4, 3), (5, 1), (12, 1)):
        parts = [generate.generate_shard(generate.shard_rows(rows, shards, k), tmp_path / f"c{batch_size}", sampler, batch_size, "sd", "x")[0] for k in range(shards)]
        c = images_of(pd.concat(parts))
        differences = np.stack([np.abs(a[r].astype(int) - c[r]) for r in a])
        assert differences.max() <= 1 and (differences > 0).mean() < 1e-3, (batch_size, shards)


def test_classic_attention_computes_the_same_images(tiny_sd):
    batch = rows_of(1)
    sdpa, _ = generate.DiffusersSampler(gen_config(tiny_sd), CPU)(batch)
    classic, _ = generate.DiffusersSampler(gen_config(tiny_sd), CPU, attention="classic")(batch)
    assert np.abs(sdpa.astype(int) - classic.astype(int)).max() <= 1


def test_storage_format_quality_and_size(tiny_sd, tmp_path):
    sampler = generate.DiffusersSampler(gen_config(tiny_sd), CPU)
    rows = rows_of(1)
    for image_format, suffix in (("jpeg", ".jpg"), ("webp", ".webp")):
        options = generate.ImageOptions(image_format, quality=80, storage_size=16)
        index, _ = generate.generate_shard(rows, tmp_path / image_format, sampler, 3, "sd", "x", options=options)
        for path in index["path"]:
            assert path.endswith(suffix)
            with Image.open(path) as image:
                assert image.size == (16, 16) and image.format == image_format.upper()


@pytest.fixture(scope="module")
def checked_sd(tmp_path_factory) -> Path:
    """A tiny pipeline whose (random) safety checker flags about half the images.

    One concept's threshold is set at the median score of the test's first
    images; the other concepts never fire. It is saved and loaded by path.
    """
    pipe = random_pipelines.build_pipeline("tiny", safety_checker=True)
    checker = pipe.safety_checker
    torch.manual_seed(1)
    checker.concept_embeds.data = torch.randn_like(checker.concept_embeds)
    checker.concept_embeds_weights.data.fill_(10.0)
    checker.special_care_embeds_weights.data.fill_(10.0)
    images, flags = generate.DiffusersSampler(gen_config(Path("unused")), CPU, pipe=pipe)(rows_of())
    assert not any(flags)
    clip_input = pipe.feature_extractor([Image.fromarray(i) for i in images], return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = checker.visual_projection(checker.vision_model(clip_input)[1])
        scores = torch.nn.functional.cosine_similarity(embeds, checker.concept_embeds[:1], dim=-1)
    checker.concept_embeds_weights.data[0] = scores.median() + 1e-4
    out = tmp_path_factory.mktemp("models") / "checked-sd"
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def test_flagged_images_are_regenerated_with_the_next_seed(checked_sd, tmp_path):
    config = gen_config(checked_sd, safety_checker=True)
    sampler = generate.DiffusersSampler(config, CPU)
    rows = rows_of()
    policy = generate.UnsafePolicy("regenerate", max_regenerations=6)
    index, counts = generate.generate_shard(rows, tmp_path / "images", sampler, 5, "sd", "x", unsafe=policy)
    assert counts["flagged"] >= 3 and counts["regenerated"] >= 3
    assert counts["regenerated"] + counts["dropped_unsafe"] <= counts["flagged"]
    assert len(index) == 12 - counts["dropped_unsafe"]
    regenerated = index[index["regenerations"] > 0]
    assert len(regenerated) == counts["regenerated"]
    for _, row in regenerated.iterrows():
        original = int(rows.loc[rows["row"] == row["row"], "seed"].iloc[0])
        assert row["seed"] == original + row["regenerations"]
        assert Path(row["path"]).name.endswith(f"-r{row['regenerations']}.png")
        # The kept image is what its recorded seed gives, and not flagged; it
        # was made in a batch of 5, so a rare value may differ by one level.
        again, flags = sampler(pd.DataFrame([row]))
        assert not flags[0]
        differences = np.abs(again[0].astype(int) - np.asarray(Image.open(row["path"])))
        assert differences.max() <= 1 and (differences > 0).mean() < 1e-3
    for path in index["path"]:
        assert image_problem(np.asarray(Image.open(path)), (32, 32)) is None  # never a black frame
    flagged_rows = {r for r, _ in counts["flagged_rows"]}
    assert set(regenerated["row"]) <= flagged_rows

    # A rerun finds every image, including the regenerated ones, and makes none.
    again_index, again_counts = generate.generate_shard(rows, tmp_path / "images", sampler, 5, "sd", "x", unsafe=policy)
    pd.testing.assert_frame_equal(index, again_index)
    assert again_counts["resumed"] == len(index) and again_counts["generated"] == 0


def test_flagged_images_can_be_dropped_and_counted(checked_sd, tmp_path):
    sampler = generate.DiffusersSampler(gen_config(checked_sd, safety_checker=True), CPU)
    index, counts = generate.generate_shard(rows_of(), tmp_path, sampler, 12, "sd", "x", unsafe=generate.UnsafePolicy("drop"))
    assert counts["dropped_unsafe"] == counts["flagged"] == 6  # the threshold is the median of these 12
    assert counts["regenerated"] == 0 and len(index) == 6
    assert not any(Path(p).name.count("-r") for p in index["path"])


def test_safety_checker_on_needs_one_in_the_pipeline(tiny_sd):
    with pytest.raises(ValueError, match="has no safety checker"):
        generate.load_text_to_image(gen_config(tiny_sd, safety_checker=True))


def test_random_pipeline_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "contam.random_pipelines", str(tmp_path / "sd"), "--shape", "tiny", "--safety-checker"],
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip().endswith("sd")
    assert (tmp_path / "sd" / "safety_checker" / "model.safetensors").exists()
    assert (tmp_path / "sd" / "model_index.json").exists()
