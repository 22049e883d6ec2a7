import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from contam import evaluate, train
from contam.index_real import index_image_folder

MODEL = {"arch": "resnet10t", "image_size": 16, "kwargs": {}}
RECIPE = {
    "epochs": 2, "batch_size": 4, "optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9,
    "weight_decay": 1e-4, "warmup_epochs": 0.5, "label_smoothing": 0.1, "precision": "fp32",
    "augment": {"crop_scale": [0.5, 1.0], "hflip": True},
}
CLASSES = pd.DataFrame({"label": [0, 1, 2], "folder": ["a", "b", "c"], "names": ["a", "b", "c"]})


@pytest.fixture
def manifest(make_image_folder):
    root = make_image_folder("train", ["a", "b", "c"], per_class=5, size=20)
    frame, _ = index_image_folder(root, CLASSES, "train", [".png"])
    return frame


def run(manifest, out, **kwargs):
    return train.train(manifest, MODEL, RECIPE, 3, seed=1, out_dir=out, fingerprint="f", device=torch.device("cpu"), **kwargs)


def test_resumed_run_equals_uninterrupted_run(manifest, tmp_path):
    run(manifest, tmp_path / "straight")
    with pytest.raises(train.Preempted):
        run(manifest, tmp_path / "resumed", stop_after_steps=6)  # mid-way through epoch 2 of 2
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    run(manifest, tmp_path / "resumed")
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_a = pd.read_csv(tmp_path / "straight" / "train_log.csv")
    log_b = pd.read_csv(tmp_path / "resumed" / "train_log.csv")
    assert list(log_a.columns) == train.LOG_FIELDS and len(log_a) == len(log_b) == 2
    np.testing.assert_allclose(log_a["loss"].iloc[0], log_b["loss"].iloc[0])
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()


def test_checkpoint_of_other_settings_is_ignored(manifest, tmp_path):
    with pytest.raises(train.Preempted):
        run(manifest, tmp_path / "x", stop_after_steps=2)
    train.train(manifest, MODEL, RECIPE, 3, seed=1, out_dir=tmp_path / "x", fingerprint="other", device=torch.device("cpu"))
    fresh = tmp_path / "fresh"
    train.train(manifest, MODEL, RECIPE, 3, seed=1, out_dir=fresh, fingerprint="other", device=torch.device("cpu"))
    a, b = load_file(tmp_path / "x" / "model.safetensors"), load_file(fresh / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lr_schedule_warmup_then_cosine():
    factors = [train.lr_factor(s, 100, 10) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[55] == pytest.approx(0.5)
    assert factors[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_accuracy_maths():
    logits = np.array([[3, 2, 1, 0, 0, 0], [0, 1, 3, 2, 0, 0], [1, 0, 0, 0, 0, 2], [0, 0, 0, 0, 5, 1]], dtype=float)
    labels = np.array([0, 3, 0, 4])
    result = evaluate.accuracy(logits, labels, 6)
    assert result["top1"] == pytest.approx(0.5)
    assert result["top5"] == pytest.approx(1.0)
    assert result["per_class_top1"] == {"0": 0.5, "3": 0.0, "4": 1.0}


def test_ood_logits_restricted_to_present_classes():
    # Class 5 has the largest logit but is absent from the set: restricted to
    # classes {0, 3}, the first image counts as correct.
    logits = np.array([[2, 0, 0, 1, 0, 9], [0, 0, 0, 1, 0, 9]], dtype=float)
    labels = np.array([0, 3])
    assert evaluate.accuracy(logits, labels, 6)["top1"] == 0.0
    restricted = evaluate.accuracy(logits, labels, 6, classes=np.unique(labels))
    assert restricted["top1"] == 1.0


def test_evaluate_a_trained_model(manifest, tmp_path):
    run(manifest, tmp_path / "m")
    model = evaluate.load_classifier(tmp_path / "m" / "model.safetensors", MODEL, 3, torch.device("cpu"))
    results = evaluate.evaluate_sets(model, MODEL, {"test": manifest, "ood": manifest[manifest["label"] < 2]}, 3, 0.875, torch.device("cpu"), 8, 0, restrict={"ood"})
    assert results["test"]["n"] == 15 and 0 <= results["test"]["top1"] <= 1
    assert results["ood"]["classes"] == 2
    assert set(results["test"]["per_class_top1"]) == {"0", "1", "2"}
