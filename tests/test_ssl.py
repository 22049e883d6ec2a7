"""Self-supervised pretraining (SimSiam, BYOL) and the linear probe, on tiny images."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from contam import ssl

SETTINGS = {
    "method": "simsiam", "arch": "resnet10t", "image_size": 16, "epochs": 2, "batch_size": 16,
    "learning_rate": 0.05, "weight_decay": 1e-4, "momentum": 0.9,
    "projector_dim": 32, "predictor_dim": 8, "ema_decay": 0.99,
    "augment": {"crop_scale": [0.5, 1.0], "hflip": True, "color_jitter": 0.4, "blur": True},
}


def settings(**changes) -> dict:
    return {**copy.deepcopy(SETTINGS), **changes}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the models are tiny, and on a shared machine a second thread mostly waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> pd.DataFrame:
    """32 noisy 16x16 images, half dark (label 0) and half bright (label 1): 2 steps of 16 an epoch."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(32):
        label = i % 2
        base = 200 if label else 50
        array = np.clip(base + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
        path = root / f"img{i:02d}.png"
        Image.fromarray(array).save(path)
        rows.append({"path": str(path), "label": label, "origin": "real"})
    return pd.DataFrame(rows)


class Runs:
    """Uninterrupted runs, made once per method and shared by the tests."""

    def __init__(self, root, manifest):
        self.root, self.manifest, self.done = root, manifest, {}

    def __call__(self, method: str):
        if method not in self.done:
            out = self.root / method / "out"
            summary = ssl.pretrain(self.manifest, settings(method=method), seed=3, out_dir=out, fingerprint="fp", device="cpu")
            self.done[method] = (out, summary)
        return self.done[method]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, images) -> Runs:
    return Runs(tmp_path_factory.mktemp("straight"), images)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


class Killed(RuntimeError):
    pass


TRAIN_EPOCH = ssl.train_epoch


def kill_in_epoch(monkeypatch, epoch: int) -> list[int]:
    """Make ssl.train_epoch raise when it starts ``epoch``; returns the epochs it was called for."""
    calls = []

    def wrapped(state, run):
        calls.append(state.epoch)
        if state.epoch == epoch:
            raise Killed(f"killed in epoch {epoch}")
        return TRAIN_EPOCH(state, run)

    monkeypatch.setattr(ssl, "train_epoch", wrapped)
    return calls


def test_pretraining_is_deterministic_and_stamped(straight, images, tmp_path):
    out, summary = straight("simsiam")
    # Labels are not used: reversed labels and no origin column give the same bytes.
    relabelled = images.assign(label=images["label"].to_numpy()[::-1]).drop(columns="origin")
    again = ssl.pretrain(relabelled, settings(), seed=3, out_dir=tmp_path / "again", fingerprint="fp")
    assert (out / "encoder.safetensors").read_bytes() == (tmp_path / "again" / "encoder.safetensors").read_bytes()
    with safe_open(str(out / "encoder.safetensors"), "pt") as handle:
        assert handle.metadata() == {"fingerprint": "fp", "method": "simsiam"}
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [0, 1]
    assert {"epoch", "loss", "images_per_s"} <= set(history.columns)
    assert summary["epochs"] == again["epochs"] == 2 and summary["final_loss"] == again["final_loss"] == history["loss"].iloc[-1]
    assert summary["images_per_s"] > 0 and summary["seconds"] > 0
    assert not ssl.checkpoint_path(out).exists()


def test_sorted_metadata_makes_safetensors_bytes_stable(tmp_path):
    from safetensors.torch import save_file

    files = []
    for i in range(8):  # the Rust side's HashMap order changes between calls
        path = tmp_path / f"{i}.safetensors"
        save_file({"x": torch.ones(2)}, str(path), metadata={"b": "2", "a": "1", "c": "3", "d": "ü"})
        ssl.sort_metadata(path)
        files.append(path.read_bytes())
    assert len(set(files)) == 1
    with safe_open(str(tmp_path / "0.safetensors"), "pt") as handle:
        assert handle.metadata() == {"a": "1", "b": "2", "c": "3", "d": "ü"}
        assert torch.equal(handle.get_tensor("x"), torch.ones(2))


@pytest.mark.parametrize("method", ssl.SSL_METHODS)
def test_both_methods_train_with_a_finite_loss(straight, method):
    out, summary = straight(method)
    losses = pd.read_csv(out / "history.csv")["loss"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    # The negative cosine lies in [-1, 1].
    assert all(-1.0 <= v <= 1.0 for v in losses)
    encoder = ssl.load_encoder(out / "encoder.safetensors", settings(method=method))
    assert not encoder.training
    assert encoder(torch.zeros(2, 3, 16, 16)).shape == (2, encoder.num_features)


def test_byol_resumes_after_a_kill_to_the_uninterrupted_weights(straight, images, tmp_path, monkeypatch):
    byol = settings(method="byol")
    out = tmp_path / "resumed"
    calls = kill_in_epoch(monkeypatch, 1)
    with pytest.raises(Killed):
        ssl.pretrain(images, byol, seed=3, out_dir=out, fingerprint="fp")
    checkpoint = ssl.checkpoint_path(out)
    assert checkpoint.parent == out.parent and not (out / "encoder.safetensors").exists()
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 1 and state["fingerprint"] == "fp" and set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    # BYOL's momentum target has moved away from the online encoder, but it is no copy of it.
    model = state["model"]
    online = {k[len("encoder."):]: v for k, v in model.items() if k.startswith("encoder.") and v.is_floating_point()}
    target = {k[len("target.0."):]: v for k, v in model.items() if k.startswith("target.0.")}
    assert online.keys() <= target.keys()
    assert any(not torch.equal(online[k], target[k]) for k in online if "weight" in k)

    calls = kill_in_epoch(monkeypatch, -1)  # count the epochs the rerun trains
    summary = ssl.pretrain(images, byol, seed=3, out_dir=out, fingerprint="fp")
    assert calls == [1]
    assert summary["epochs"] == 2 and not checkpoint.exists()
    reference, _ = straight("byol")
    assert_same(load_file(reference / "encoder.safetensors"), load_file(out / "encoder.safetensors"))
    assert pd.read_csv(out / "history.csv")["loss"].tolist() == pd.read_csv(reference / "history.csv")["loss"].tolist()


def test_a_checkpoint_of_other_settings_is_ignored_and_a_matching_one_resumed(straight, images, tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    kill_in_epoch(monkeypatch, 1)
    with pytest.raises(Killed):
        ssl.pretrain(images, settings(), seed=3, out_dir=out, fingerprint="other settings")
    assert ssl.checkpoint_path(out).exists()
    calls = kill_in_epoch(monkeypatch, 1)
    with caplog.at_level(logging.WARNING, logger="contam.ssl"), pytest.raises(Killed):
        ssl.pretrain(images, settings(), seed=3, out_dir=out, fingerprint="fp")
    assert "ignoring checkpoint" in caplog.text
    assert calls == [0, 1]  # started over
    calls = kill_in_epoch(monkeypatch, -1)
    ssl.pretrain(images, settings(), seed=3, out_dir=out, fingerprint="fp")
    assert calls == [1] and not ssl.checkpoint_path(out).exists()  # took up its own checkpoint
    reference, _ = straight("simsiam")
    assert (reference / "encoder.safetensors").read_bytes() == (out / "encoder.safetensors").read_bytes()


def test_an_unknown_method_is_refused(images, tmp_path):
    with pytest.raises(ValueError, match="'moco'.*simsiam, byol"):
        ssl.pretrain(images, settings(method="moco"), seed=0, out_dir=tmp_path / "x", fingerprint="fp")
    assert not (tmp_path / "x").exists()


def test_views_are_reproducible_per_image_and_seed(images):
    dataset = ssl.view_dataset(images, SETTINGS)
    (a1, a2), label = dataset[(3, 123)]
    (b1, b2), _ = dataset[(3, 123)]
    (c1, _), _ = dataset[(3, 124)]
    assert label == 0 and a1.shape == (3, 16, 16)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2) and not torch.equal(a1, c1)


def test_ema_target_follows_the_online_network():
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 6))
    encoder.num_features = 6
    model = ssl.Siamese(encoder, 5, 3, momentum_target=True)
    before = [p.clone() for p in model.target.parameters()]
    with torch.no_grad():
        for p in model.trainable():
            p.add_(1.0)
    model.update_target(0.75)
    online = [*model.encoder.parameters(), *model.projector.parameters()]
    for old, new, source in zip(before, model.target.parameters(), online):
        assert torch.allclose(new, 0.75 * old + 0.25 * source)
    assert ssl.ema_decay(0.99, 0, 10) == pytest.approx(0.99) and ssl.ema_decay(0.99, 10, 10) == pytest.approx(1.0)


def test_an_empty_manifest_writes_the_untrained_encoder(images, tmp_path):
    out = tmp_path / "empty"
    with pytest.warns(UserWarning, match="too few"):
        summary = ssl.pretrain(images.iloc[:0], settings(), seed=0, out_dir=out, fingerprint="fp")
    assert summary["epochs"] == 0 and summary["final_loss"] is None
    assert len(pd.read_csv(out / "history.csv")) == 0
    encoder = ssl.load_encoder(out / "encoder.safetensors", SETTINGS)
    assert encoder(torch.zeros(2, 3, 16, 16)).shape[0] == 2


def test_linear_probe_separates_dark_from_bright(straight, images):
    out, _ = straight("simsiam")
    encoder = ssl.load_encoder(out / "encoder.safetensors", SETTINGS)
    train, test = images.iloc[:20], images.iloc[20:]
    bright = test[test["label"] == 1]
    result = ssl.linear_probe(encoder, 16, train, {"test": test, "bright": bright, "none": test.iloc[:0]}, num_classes=3, seed=0)
    assert result["train_images"] == 20
    assert set(result["sets"]) == {"test", "bright", "none"}
    scores = result["sets"]["test"]
    assert scores["n"] == 12 and scores["top1"] >= 0.9  # chance is 0.5
    assert set(scores["per_class_top1"]) == {"0", "1"}
    assert result["sets"]["bright"]["n"] == 6 and set(result["sets"]["bright"]["per_class_top1"]) == {"1"}
    assert result["sets"]["none"]["n"] == 0
    # Class 2 never appears in training, so it is never predicted.
    assert 0.0 <= scores["top1"] <= 1.0
