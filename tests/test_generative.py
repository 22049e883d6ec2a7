"""The generative study's parts: a generator fit that resumes after a kill, tail recall, config errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from snakemake.exceptions import WorkflowError

from contam import analysis, config_checks, fit_generator
from tests.conftest import validated

FIT = {"steps": 6, "batch_size": 8, "learning_rate": 0.002, "ema_decay": 0.9, "label_dropout": 0.1, "block_channels": [8, 16], "layers_per_block": 1}


@pytest.fixture(scope="module")
def digit_index(tmp_path_factory) -> pd.DataFrame:
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    rows = []
    for i in range(40):
        path = folder / f"{i:03d}.png"
        Image.fromarray((digits.images[i] * 15).astype(np.uint8)).convert("RGB").save(path)
        rows.append({"path": str(path), "label": int(digits.target[i])})
    return pd.DataFrame(rows)


def fitted_weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "unet" / "diffusion_pytorch_model.safetensors"))


def test_a_killed_generator_fit_resumes_to_the_same_weights(digit_index, tmp_path, caplog):
    kwargs = dict(num_classes=10, image_size=8, fit_config=FIT, seed=3, device=torch.device("cpu"))
    fit_generator.fit(digit_index, out_dir=tmp_path / "straight", **kwargs)

    checkpoint = tmp_path / "killed.checkpoint.pt"
    with pytest.raises(fit_generator.Stopped):
        fit_generator.fit(digit_index, out_dir=tmp_path / "killed", checkpoint=checkpoint, fingerprint="a", checkpoint_every=2, stop_after=3, **kwargs)
    assert checkpoint.exists() and not (tmp_path / "killed").exists()
    with caplog.at_level("INFO"):
        summary = fit_generator.fit(digit_index, out_dir=tmp_path / "killed", checkpoint=checkpoint, fingerprint="a", checkpoint_every=2, **kwargs)
    assert summary["resumed_at"] == 3 and "resuming from checkpoint at step 3" in caplog.text
    assert not checkpoint.exists()  # removed once the model is saved
    straight, resumed = fitted_weights(tmp_path / "straight"), fitted_weights(tmp_path / "killed")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    log = pd.read_csv(tmp_path / "killed" / "fit_log.csv")
    assert log["step"].tolist() == pd.read_csv(tmp_path / "straight" / "fit_log.csv")["step"].tolist()


def test_a_kept_final_checkpoint_saves_the_model_again_without_refitting(digit_index, tmp_path, caplog):
    kwargs = dict(num_classes=10, image_size=8, fit_config=FIT, seed=3, device=torch.device("cpu"), checkpoint=tmp_path / "c.pt", fingerprint="a", keep_final=True)
    fit_generator.fit(digit_index, out_dir=tmp_path / "first", **kwargs)
    assert (tmp_path / "c.pt").exists()
    with caplog.at_level("INFO"):
        summary = fit_generator.fit(digit_index, out_dir=tmp_path / "again", **kwargs)
    assert summary["resumed_at"] == FIT["steps"] and "resuming from checkpoint at step 6 of 6" in caplog.text
    first, again = fitted_weights(tmp_path / "first"), fitted_weights(tmp_path / "again")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert pd.read_csv(tmp_path / "again" / "fit_log.csv").equals(pd.read_csv(tmp_path / "first" / "fit_log.csv"))


def test_a_grey_model_samples_rgb_images_with_equal_channels(digit_index, tmp_path):
    from contam.generate import EmbeddedSampler

    grey = {**FIT, "channels": 1, "attention": False}
    fit_generator.fit(digit_index, num_classes=10, out_dir=tmp_path / "grey", image_size=8, fit_config=grey, seed=3, device=torch.device("cpu"))
    assert fit_generator.load_images(digit_index.head(2), 8, channels=1).shape == (2, 1, 8, 8)
    sampler = EmbeddedSampler(tmp_path / "grey", {"steps": 2, "guidance": 1.0, "eta": 0.0}, torch.device("cpu"))
    assert sampler.unet.config.in_channels == 1
    images, _ = sampler(pd.DataFrame({"label": [0, 1, 2], "seed": [5, 6, 7]}))
    # Stored like the real digits: RGB, every channel the same.
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()


def test_a_checkpoint_of_other_settings_is_not_resumed(digit_index, tmp_path, caplog):
    kwargs = dict(num_classes=10, image_size=8, fit_config=FIT, seed=3, device=torch.device("cpu"), checkpoint=tmp_path / "c.pt", checkpoint_every=2)
    with pytest.raises(fit_generator.Stopped):
        fit_generator.fit(digit_index, out_dir=tmp_path / "m", fingerprint="old", stop_after=2, **kwargs)
    with caplog.at_level("WARNING"):
        summary = fit_generator.fit(digit_index, out_dir=tmp_path / "m", fingerprint="new", **kwargs)
    assert summary["resumed_at"] == 0 and "ignoring checkpoint" in caplog.text


def test_fine_tuning_starts_from_the_given_weights(digit_index, tmp_path):
    kwargs = dict(num_classes=10, image_size=8, seed=3, device=torch.device("cpu"))
    fit_generator.fit(digit_index, out_dir=tmp_path / "parent", fit_config=FIT, **kwargs)
    # A fine-tune with learning rate ~0 and no averaging keeps the parent's weights.
    frozen = {**FIT, "steps": 1, "learning_rate": 1e-30, "ema_decay": 1.0}
    fit_generator.fit(digit_index, out_dir=tmp_path / "child", fit_config=frozen, init_from=tmp_path / "parent", **kwargs)
    parent, child = fitted_weights(tmp_path / "parent"), fitted_weights(tmp_path / "child")
    assert all(torch.allclose(parent[k], child[k]) for k in parent)
    fit_generator.fit(digit_index, out_dir=tmp_path / "scratch", fit_config=frozen, **kwargs)
    assert not all(torch.allclose(parent[k], v) for k, v in fitted_weights(tmp_path / "scratch").items())


def test_tail_recall_sees_a_missing_tail_that_recall_hides():
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (400, 2))
    radius = np.linalg.norm(real, axis=1)
    core = real[radius < np.quantile(radius, 0.8)]  # a generator that never makes the tails
    m = analysis.manifolds(real, core[rng.choice(len(core), 400)], nearest_k=5)
    whole = analysis.prdc(m)
    tail = analysis.tail_recall(m, 0.1)
    assert tail["tail_size"] == 40
    assert whole["recall"] > 0.7 and tail["tail_recall"] < 0.35
    same = analysis.manifolds(real, rng.normal(0, 1, (400, 2)), nearest_k=5)
    assert analysis.tail_recall(same, 0.1)["tail_recall"] > 0.6


@pytest.fixture
def generation_config():
    import copy
    from pathlib import Path

    import yaml

    return copy.deepcopy(yaml.safe_load((Path(__file__).parents[1] / "config" / "digits-generation.yaml").read_text()))


def test_the_generation_config_is_valid(generation_config):
    config = validated(generation_config)
    assert config["generative"]["loop"]["generations"] >= 4 and len(config["generative"]["loop"]["regimes"]) >= 3
    assert sorted(config["mixing"]["ratios"]) == [0.0, 0.2, 0.4, 0.8, 1.0] and len(config["seeds"]) >= 2


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["generative"]["loop"].update(regimes=["replace", "collapse"]), "regimes"),
        (lambda c: c["generative"]["loop"].update(**{"lambda": 1.5}), "lambda"),
        (lambda c: c["generative"]["loop"].update(**{"lambda": -0.1}), "lambda"),
        (lambda c: c["generative"]["loop"].update(generations=0), "generations"),
        (lambda c: c["generative"]["loop"].update(init="warm"), "init"),
        (lambda c: c["generative"]["loop"].update(regimes=["fresh"], fresh_splits=["reference"]), "generative.loop.fresh_splits"),
        (lambda c: c["generative"]["model"].update(image_size=16), "generative.model.image_size"),
        (lambda c: c["sources"].update(replace=c["sources"].pop("control")), "sources.replace"),
        (lambda c: c["analysis"].update(feature_extractor="inception"), "analysis.feature_extractor"),
        (lambda c: c.pop("generative"), "generative"),
        (lambda c: c.update(task="classification"), "generative"),
    ],
)
def test_bad_generative_config_fails_naming_the_key(generation_config, mutate, key):
    mutate(generation_config)
    with pytest.raises((WorkflowError, config_checks.ConfigError)) as error:
        validated(generation_config)
    assert key in str(error.value)
