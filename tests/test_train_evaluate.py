import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from contam import evaluate, train, train_cli
from contam.index_real import index_image_folder
from contam.io import write_parquet
from contam.models import EpochSampler, shard_order

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
    # The interrupted epoch's statistics survive the checkpoint too.
    for column in ("loss", "train_top1", "lr"):
        np.testing.assert_array_equal(log_a[column], log_b[column])
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


def test_evaluate_a_trained_model(manifest, make_image_folder, tmp_path):
    # Each class has one saturated colour channel: learnable in a few seconds,
    # so held-out accuracy far above chance (1/3) shows training and evaluation work.
    recipe = {**RECIPE, "epochs": 6, "optimizer": "adamw", "learning_rate": 2e-3}
    train.train(manifest, MODEL, recipe, 3, seed=1, out_dir=tmp_path / "m", fingerprint="f", device=torch.device("cpu"))
    held_out, _ = index_image_folder(make_image_folder("test", ["a", "b", "c"], per_class=5, size=20, seed=1), CLASSES, "test", [".png"])
    model = evaluate.load_classifier(tmp_path / "m" / "model.safetensors", MODEL, 3, torch.device("cpu"))
    sets = {"test": held_out, "ood": held_out[held_out["label"] < 2]}
    results = evaluate.evaluate_sets(model, MODEL, sets, 3, 0.875, torch.device("cpu"), 8, 0, restrict={"ood"})
    assert results["test"]["n"] == 15 and results["test"]["top1"] >= 0.8, results["test"]
    assert results["test"]["top5"] == 1.0  # 3 classes: top-5 is every class
    assert set(results["test"]["per_class_top1"]) == {"0", "1", "2"}
    assert min(results["test"]["per_class_top1"].values()) >= 0.6
    assert results["ood"]["classes"] == 2 and results["ood"]["top1"] >= 0.8


def test_metrics_record_round_trip(tmp_path):
    accuracy = {"n": 4, "top1": 0.5, "top5": 1.0, "per_class_top1": {"0": 0.5}}
    results = {"test": accuracy, "validation": {**accuracy, "top1": 0.25}, "imagenet-r": {**accuracy, "classes": 1}, "imagenet-a": accuracy}
    run = {"source": "real", "ratio": "0.0", "model": "m", "seed": 0}
    record = evaluate.metrics_record(run, 2, "cuda:0", results, "fp", "sha", {"torch": "2"})
    assert record["test"] == accuracy and record["validation"]["top1"] == 0.25
    assert record["ood"] == {"imagenet-r": results["imagenet-r"], "imagenet-a": accuracy}
    assert (record["processes"], record["device"], record["fingerprint"], record["manifest_sha256"]) == (2, "cuda:0", "fp", "sha")
    evaluate.write_metrics(record, tmp_path / "metrics.json")
    assert evaluate.read_metrics(tmp_path / "metrics.json") == record
    assert "validation" not in evaluate.metrics_record(run, 1, "cpu", {"test": accuracy}, "fp", "sha", {})
    with pytest.raises(ValueError, match="test"):
        evaluate.metrics_record(run, 1, "cpu", {"validation": accuracy}, "fp", "sha", {})


def same_weights(a_dir, b_dir) -> bool:
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sampler_shards_each_epoch_across_ranks():
    one = EpochSampler(10, seed=3, epoch=2)
    assert sorted(one) == list(range(10)) and len(one) == 10
    ranks = [EpochSampler(10, seed=3, epoch=2, rank=r, world_size=3) for r in range(3)]
    shares = [list(r) for r in ranks]
    assert all(len(share) == len(r) == 4 for share, r in zip(shares, ranks))  # padded to 12
    assert sorted(i for share in shares for i in share[:3]) == sorted(list(one)[:9])
    assert set(i for share in shares for i in share) == set(range(10))
    # Interleaved slices of the one global order, so a rank's order is known anywhere.
    assert [shares[r][k] for k in range(3) for r in range(3)] == list(one)[:9]
    # Resuming skips this rank's first items only, and keys carry fixed augmentation seeds.
    resumed = EpochSampler(10, seed=3, epoch=2, start=2, rank=1, world_size=3, with_seeds=True)
    keyed = list(resumed)
    assert [i for i, _ in keyed] == shares[1][2:] and len(resumed) == 2
    again = EpochSampler(10, seed=3, epoch=0, rank=1, world_size=3, with_seeds=True)
    again.set_epoch(2, start=0)
    assert list(again)[2:] == keyed
    assert list(EpochSampler(10, seed=3, epoch=3)) != list(one)
    assert list(shard_order(np.arange(5), 1, 2)) == [1, 3, 0]


def test_a_last_batch_of_one_image_is_skipped(manifest, tmp_path):
    # 15 images in batches of 7: 7 + 7 + 1; batch norm cannot train on one image.
    result = train.train(manifest, MODEL, {**RECIPE, "batch_size": 7}, 3, seed=1, out_dir=tmp_path, fingerprint="f", device=torch.device("cpu"))
    assert result["epochs"] == 2 and (tmp_path / "model.safetensors").exists()


def test_num_workers_do_not_change_results(manifest, tmp_path):
    run(manifest, tmp_path / "w0")
    run(manifest, tmp_path / "w2", num_workers=2)  # persistent workers, one loader for the run
    assert same_weights(tmp_path / "w0", tmp_path / "w2")


def test_training_refuses_another_process_count(manifest, tmp_path):
    # The process count multiplies the effective batch: a run set up for two
    # processes must not quietly train in one.
    with pytest.raises(ValueError, match="set up for 2 process"):
        run(manifest, tmp_path / "x", processes=2)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="job is for 1 training processes, but 2"):
        train_cli.launch({"out_dir": str(tmp_path / "y"), "processes": 1}, 2)
    assert not (tmp_path / "y").exists()


def launch_two(manifest_path, out, **extra):
    job = {
        "manifest": str(manifest_path), "model": MODEL, "recipe": RECIPE, "num_classes": 3, "seed": 1,
        "out_dir": str(out), "fingerprint": "f", "device": "cpu", "num_workers": 0, **extra,
    }
    with open(tmp := out.parent / f"{out.name}.log", "a") as stream:
        rc = train_cli.launch(job, 2, threads=2, stream=stream)
    return rc, tmp.read_text()


def test_two_processes_through_accelerate_and_resume(manifest, tmp_path, monkeypatch):
    """The rule's multi-GPU launch, on CPU: two gloo processes, one model."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    path = tmp_path / "manifest.parquet"
    write_parquet(manifest, path)
    rc, text = launch_two(path, tmp_path / "straight")
    assert rc == 0, text[-3000:]
    assert (tmp_path / "straight" / "model.safetensors").exists() and not (tmp_path / "straight" / "checkpoint.pt").exists()
    history = pd.read_csv(tmp_path / "straight" / "train_log.csv")
    assert len(history) == 2 and history["images_per_s"].gt(0).all()
    assert text.count("INFO rank 0 contam.train: epoch 1 loss") == 1 and "INFO rank 1" not in text  # the main rank logs
    # 15 images over 2 ranks of batch 4: 2 steps per epoch per rank, 4 in all.
    rc, text = launch_two(path, tmp_path / "resumed", stop_after_steps=3)
    assert rc != 0 and (tmp_path / "resumed" / "checkpoint.pt").exists(), text[-3000:]
    assert json.loads((tmp_path / "resumed" / "launch.json").read_text())["processes"] == 2
    rng = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["rng"]
    assert all(states.shape[0] == 2 for states in rng.values())  # every rank's RNGs
    assert not torch.equal(rng["torch"][0], rng["torch"][1])
    rc, text = launch_two(path, tmp_path / "resumed")
    assert rc == 0, text[-3000:]
    assert "resuming from checkpoint at epoch 1, step 1" in text
    assert same_weights(tmp_path / "straight", tmp_path / "resumed")


CHILD = """
import logging, sys, time
from pathlib import Path
import torch
from contam import models, train
from contam.io import read_parquet

logging.basicConfig(level=logging.INFO)
manifest, out, ready = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
original = models.ManifestDataset.__getitem__
calls = [0]

def slow_getitem(self, key):
    # Slow the run down (never its results) once it is well into epoch 2, and
    # tell the test when to send the signal.
    calls[0] += 1
    if ready != "-" and calls[0] == 60 + 25:
        Path(ready).touch()
    if ready != "-" and calls[0] > 60 + 25:
        time.sleep(0.05)
    return original(self, key)

models.ManifestDataset.__getitem__ = slow_getitem
recipe = {**RECIPE, "epochs": 3}
train.train(read_parquet(manifest), MODEL, recipe, 3, seed=1, out_dir=out, fingerprint="f", device=torch.device("cpu"))
"""


def test_sigterm_writes_checkpoint_and_the_rerun_finishes_the_same(make_image_folder, tmp_path):
    """A real signal, as SLURM sends it, to a training process."""
    root = make_image_folder("train", ["a", "b", "c"], per_class=20, size=20)
    frame, _ = index_image_folder(root, CLASSES, "train", [".png"])
    manifest_path = tmp_path / "manifest.parquet"
    write_parquet(frame, manifest_path)
    script = tmp_path / "child.py"
    script.write_text(f"MODEL = {MODEL!r}\nRECIPE = {RECIPE!r}\n" + CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def child(out, ready="-"):
        return subprocess.Popen([sys.executable, str(script), str(manifest_path), str(out), str(ready)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    ready = tmp_path / "ready"
    proc = child(tmp_path / "killed", ready)
    deadline = time.monotonic() + 120
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ready.exists(), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Preempted" in err, err[-3000:]
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["step_in_epoch"] < 15  # mid-way through epoch 2 of 3
    assert not (tmp_path / "killed" / "model.safetensors").exists()

    rerun = child(tmp_path / "killed")
    straight = child(tmp_path / "straight")
    errors = []
    for p in (rerun, straight):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        errors.append(err)
    assert "resuming from checkpoint at epoch 1" in errors[0]
    assert same_weights(tmp_path / "straight", tmp_path / "killed")
    assert not (tmp_path / "killed" / "checkpoint.pt").exists()
