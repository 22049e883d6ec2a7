"""Detecting generated images, so that a contaminated training set can be filtered.

Three detectors, all trained from scratch on a labelled set of real and
generated images (``fit_detector``); a higher score means "more likely
generated", and every score is a probability in [0, 1]:

* ``spectral``: logistic regression on the log-magnitude 2-D DCT of a
  center crop of the grey image. Generators leave periodic upsampling
  artefacts at high frequencies; the crop is never resized, since resampling
  would erase them.
* ``cnn``: a small timm classifier trained from scratch on the images.
* ``probe``: logistic regression on the frozen penultimate features of a
  classifier the workflow trained (the extractor is passed in, not stored).

A filter flags ``score > threshold``; ``threshold_at_fpr`` picks the threshold
on real validation images so that at most a budgeted share of real images is
dropped. ``detector_metrics`` reports AUROC, average precision and TPR at
false-positive budgets on a held-out test set, with stratified bootstrap
intervals.

``format_features`` and ``format_audit`` check the comparison itself: if a
classifier on how images are *stored* (container, mode, compression, value
grid) separates real from generated images, a detector may be reading the
storage instead of the content, and its numbers say little about generated
images as such.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from scipy.special import expit
from tqdm import tqdm

from contam.images import load_rgb
from contam.io import atomic_path
from contam.logs import Throughput
from contam.seeds import derive_seed

log = logging.getLogger(__name__)

DETECTOR_KINDS = ("spectral", "cnn", "probe")
DETECTOR_FORMAT = 1  # version of the file Detector.save writes

DEFAULT_SETTINGS: dict[str, Any] = {
    "spectral_size": 16,
    "cnn": {"arch": "resnet10t", "image_size": 24, "epochs": 8, "batch_size": 64, "learning_rate": 0.003, "weight_decay": 0.05},
    "probe": {"C": 1.0},
    "eval_batch_size": 256,
    "num_workers": 0,
}

# Training augmentation of the cnn detector: mild crops only. Flips are off
# because generator artefacts need not be mirror-symmetric.
CNN_AUGMENT = {"crop_scale": [0.8, 1.0], "hflip": False}


def resolved_settings(settings: dict | None) -> dict:
    """``settings`` with every missing key filled from DEFAULT_SETTINGS (nested one level)."""
    settings = settings or {}
    out = {}
    for key, default in DEFAULT_SETTINGS.items():
        if isinstance(default, dict):
            out[key] = {**default, **(settings.get(key) or {})}
        else:
            out[key] = settings.get(key, default)
    return out


# ---- spectral features -----------------------------------------------------------

# ITU-R 601-2 luma, PIL's own weights for "L", but kept in float: rounding to
# integers would add its own high-frequency noise.
_LUMA = np.array([0.299, 0.587, 0.114])


def _center(grey: np.ndarray, size: int) -> np.ndarray:
    """A size x size center crop; a smaller side is padded with edge values."""
    for axis in (0, 1):
        n = grey.shape[axis]
        if n >= size:
            start = (n - size) // 2
            grey = np.take(grey, np.arange(start, start + size), axis=axis)
        else:
            before = (size - n) // 2
            pad = [(0, 0), (0, 0)]
            pad[axis] = (before, size - n - before)
            grey = np.pad(grey, pad, mode="edge")
    return grey


def spectral_features(paths: Sequence[str], size: int) -> np.ndarray:
    """Log-magnitude orthonormal 2-D DCT-II of each image's grey center crop: float32 (N, size*size)."""
    from scipy.fft import dctn

    out = np.empty((len(paths), size * size), np.float32)
    for i, path in enumerate(tqdm(paths, desc="spectral features", mininterval=10)):
        grey = np.asarray(load_rgb(path), dtype=np.float64) @ _LUMA
        coefficients = dctn(_center(grey, size), type=2, norm="ortho")
        out[i] = np.log(np.abs(coefficients) + 1e-6).ravel()
    return out


# ---- a standardised logistic regression, stored as arrays ------------------------


def _require_both_classes(generated, what: str) -> np.ndarray:
    generated = np.asarray(generated, dtype=bool)
    if generated.all() or not generated.any():
        raise ValueError(f"{what} needs real and generated images, got {int(generated.sum())} generated of {len(generated)}")
    return generated


@dataclass
class _Linear:
    """StandardScaler + binary LogisticRegression as plain arrays (no pickle needed)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, C: float = 1.0) -> "_Linear":
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        y = _require_both_classes(y, "training")
        scaler = StandardScaler().fit(np.asarray(x, np.float64))
        model = LogisticRegression(C=C, max_iter=2000).fit(scaler.transform(np.asarray(x, np.float64)), y.astype(int))
        return cls(scaler.mean_.astype(np.float64), scaler.scale_.astype(np.float64), model.coef_[0].astype(np.float64), float(model.intercept_[0]))

    def decision(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.coef):
            raise ValueError(f"expected features of width {len(self.coef)}, got shape {x.shape}")
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        # The binary LogisticRegression's predict_proba is the logistic of its decision function.
        return expit(self.decision(x))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "scale": self.scale, "coef": self.coef, "intercept": np.array([self.intercept])}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "_Linear":
        get = {key: np.asarray(arrays[key], np.float64) for key in ("mean", "scale", "coef", "intercept")}
        return cls(get["mean"], get["scale"], get["coef"], float(get["intercept"][0]))


# ---- the detector ------------------------------------------------------------------


def _model_device(model) -> Any:
    """Where a torch module's parameters live (features must be computed there)."""
    return next(model.parameters()).device


def _check_extractor(extractor) -> tuple[Any, int]:
    if extractor is None:
        raise ValueError("detector kind 'probe' needs an extractor: a (timm classifier in eval mode, image_size) tuple")
    model, image_size = extractor
    return model, int(image_size)


@dataclass
class Detector:
    """A fitted detector; ``scores`` gives P(generated) per image (higher = more likely generated).

    ``linear`` holds the logistic regression of ``spectral`` and ``probe``;
    ``network`` the trained timm model of ``cnn``; ``extractor`` the frozen
    (classifier, image_size) of ``probe``, which is not saved with it.
    """

    kind: str
    settings: dict
    linear: _Linear | None = None
    network: Any = None
    extractor: tuple | None = None
    device: str = "cpu"

    def scores(self, paths: Sequence[str]) -> np.ndarray:
        paths = [str(p) for p in paths]
        if not paths:
            return np.zeros(0, np.float64)
        if self.kind == "spectral":
            return self.linear.probabilities(spectral_features(paths, int(self.settings["spectral_size"])))
        if self.kind == "probe":
            return self.linear.probabilities(_probe_features(self.extractor, paths, self.settings))
        return _cnn_scores(self.network, paths, self.settings, self.device)

    def save(self, path: str | os.PathLike) -> None:
        """One file, written atomically; loads with ``torch.load(weights_only=True)`` (no pickle)."""
        import torch

        payload: dict[str, Any] = {"format": DETECTOR_FORMAT, "kind": self.kind, "settings": json.dumps(self.settings, sort_keys=True)}
        if self.linear is not None:
            payload["linear"] = {key: torch.from_numpy(value.copy()) for key, value in self.linear.arrays().items()}
        if self.network is not None:
            payload["state_dict"] = {key: value.detach().cpu() for key, value in self.network.state_dict().items()}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, extractor: tuple | None = None, device: str = "cpu") -> "Detector":
        """A saved detector; ``probe`` needs its extractor again, ``cnn`` is placed on ``device``."""
        import torch

        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != DETECTOR_FORMAT or payload.get("kind") not in DETECTOR_KINDS:
            raise ValueError(f"{path}: not a detector file of format {DETECTOR_FORMAT} (format {payload.get('format')}, kind {payload.get('kind')!r})")
        kind, settings = payload["kind"], json.loads(payload["settings"])
        if kind == "cnn":
            from contam.models import create_model

            network = create_model(settings["cnn"]["arch"], 2)
            network.load_state_dict(payload["state_dict"])
            return cls(kind, settings, network=network.to(device).eval(), device=str(device))
        linear = _Linear.from_arrays({key: value.numpy() for key, value in payload["linear"].items()})
        if kind == "spectral":
            return cls(kind, settings, linear=linear)
        model, image_size = _check_extractor(extractor)
        if image_size != settings["probe"]["image_size"]:
            raise ValueError(f"{path}: the probe was fitted on {settings['probe']['image_size']}-pixel features, the extractor given uses {image_size}")
        return cls(kind, settings, linear=linear, extractor=(model, image_size), device=str(_model_device(model)))


def _probe_features(extractor: tuple, paths: list[str], settings: dict) -> np.ndarray:
    from contam.analysis import classifier_features

    model, image_size = extractor
    return classifier_features(
        model, paths, image_size, crop_ratio=1.0, device=_model_device(model), batch_size=int(settings["eval_batch_size"]), num_workers=int(settings["num_workers"])
    )


def _cnn_scores(network, paths: list[str], settings: dict, device) -> np.ndarray:
    import torch
    from torch.utils.data import DataLoader

    from contam.models import ManifestDataset, eval_transform

    dataset = ManifestDataset(pd.DataFrame({"path": paths, "label": 0}), eval_transform(int(settings["cnn"]["image_size"]), crop_ratio=1.0))
    loader = DataLoader(dataset, batch_size=int(settings["eval_batch_size"]), num_workers=int(settings["num_workers"]))
    network.eval()
    chunks = []
    with torch.no_grad():
        for images, _ in tqdm(loader, desc="detector scores", mininterval=10):
            logits = network(images.to(device)).double()
            chunks.append(torch.softmax(logits, dim=1)[:, 1].cpu().numpy())
    return np.concatenate(chunks)


def _fit_cnn(train: pd.DataFrame, settings: dict, seed: int, device) -> Any:
    """A timm classifier trained from scratch (AdamW, cosine decay); deterministic on the CPU for a seed."""
    import torch
    from torch.utils.data import DataLoader

    from contam.models import EpochSampler, ManifestDataset, create_model, train_transform
    from contam.train import build_optimizer, lr_factor, steps_per_epoch

    cnn = settings["cnn"]
    batch_size, epochs = int(cnn["batch_size"]), int(cnn["epochs"])
    table = pd.DataFrame({"path": train["path"].astype(str).to_numpy(), "label": train["generated"].astype(bool).astype(int).to_numpy()})
    dataset = ManifestDataset(table, train_transform(int(cnn["image_size"]), CNN_AUGMENT))
    # EpochSampler multiplies its seed by ~1e6 before seeding a torch.Generator,
    # which takes 64 bits at most: keep the derived seed to 31 bits.
    run_seed = derive_seed(seed, "detector-cnn") % 2**31
    # Shuffle from a torch.Generator of (seed, epoch), and augmentation from
    # per-image seeds, as in contam.train: neither depends on num_workers.
    sampler = EpochSampler(len(dataset), run_seed, with_seeds=True)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=int(settings["num_workers"]), generator=torch.Generator().manual_seed(run_seed))
    total_steps = epochs * steps_per_epoch(len(dataset), batch_size)
    # The caller's global RNG is left as it was (tests fit several detectors in one process).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run_seed)
        network = create_model(cnn["arch"], 2).to(device)
        optimizer = build_optimizer(network, {"optimizer": "adamw", "learning_rate": float(cnn["learning_rate"]), "weight_decay": float(cnn["weight_decay"])})
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, 0))
        criterion = torch.nn.CrossEntropyLoss()
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            network.train()
            meter, loss_sum, correct = Throughput(), 0.0, 0
            for images, labels in tqdm(loader, desc=f"detector epoch {epoch}", mininterval=10, leave=False):
                if len(labels) == 1 < batch_size:
                    continue  # batch norm cannot train on a single image
                images, labels = images.to(device), labels.to(device)
                logits = network(images)
                loss = criterion(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                meter.add(len(labels))
                loss_sum += float(loss.detach()) * len(labels)
                correct += int((logits.argmax(1) == labels).sum())
            seen = max(meter.count, 1)
            log.info("cnn detector epoch %d: loss %.4f train accuracy %.3f, %s", epoch, loss_sum / seen, correct / seen, meter)
    return network.eval()


def fit_detector(kind: str, train: pd.DataFrame, settings: dict, seed: int, device: str = "cpu", extractor: tuple | None = None) -> Detector:
    """Fit a detector of ``kind`` on ``train`` (columns ``path``, ``generated``)."""
    if kind not in DETECTOR_KINDS:
        raise ValueError(f"unknown detector kind {kind!r}; offered: {', '.join(DETECTOR_KINDS)}")
    settings = resolved_settings(settings)
    paths = train["path"].astype(str).tolist()
    # Checked before any features are computed, which can take long.
    generated = _require_both_classes(train["generated"].astype(bool).to_numpy(), "training a detector")
    meter = Throughput()
    if kind == "spectral":
        detector = Detector(kind, settings, linear=_Linear.fit(spectral_features(paths, int(settings["spectral_size"])), generated))
    elif kind == "probe":
        model, image_size = _check_extractor(extractor)
        # The image size is part of what the probe was fitted on; load() checks it.
        settings["probe"]["image_size"] = image_size
        features = _probe_features((model, image_size), paths, settings)
        detector = Detector(kind, settings, linear=_Linear.fit(features, generated, float(settings["probe"]["C"])), extractor=(model, image_size), device=str(_model_device(model)))
    else:
        detector = Detector(kind, settings, network=_fit_cnn(train, settings, seed, device), device=str(device))
    meter.add(len(paths) * (int(settings["cnn"]["epochs"]) if kind == "cnn" else 1))
    log.info("fitted %s detector on %d images (%d generated): %s", kind, len(paths), int(generated.sum()), meter)
    return detector


# ---- thresholds and metrics --------------------------------------------------------


def _check_budget(budget: float) -> float:
    budget = float(budget)
    if not 0.0 < budget < 1.0:
        raise ValueError(f"a false-positive budget must lie in (0, 1), got {budget}")
    return budget


def _allowed(budget: float, n: int) -> int:
    """How many of ``n`` real images may be flagged: floor(budget * n), forgiving float error (0.29 * 100)."""
    return int(np.floor(budget * n + 1e-9))


def budget_key(fpr_budget: float) -> str:
    """How a false-positive budget keys the metrics and thresholds (``0.01``): JSON keys are strings."""
    return f"{float(fpr_budget):g}"


def threshold_at_fpr(real_scores: np.ndarray, budget: float) -> float:
    """The smallest t with share(real_scores > t) <= budget; images are flagged when score > t.

    With the real scores sorted from the top, t is the (k+1)-th largest, k =
    floor(budget * n): then at most k scores lie strictly above it, and scores
    tied with t stay unflagged, so ties never push the realised FPR over the
    budget (they can only keep it below).
    """
    budget = _check_budget(budget)
    real = np.asarray(real_scores, np.float64).ravel()
    if len(real) == 0 or np.isnan(real).any():
        raise ValueError(f"threshold_at_fpr needs at least one real score and no NaN, got {len(real)} scores")
    k = _allowed(budget, len(real))
    return float(np.sort(real)[::-1][k])


def _tpr_at_fpr(real: np.ndarray, generated: np.ndarray, budget: float) -> float:
    """TPR at the test set's own threshold for ``budget`` (the ROC read-off, without interpolation)."""
    return float(np.mean(generated > threshold_at_fpr(real, budget)))


def _interval(estimate: float, replicates: np.ndarray | None) -> dict:
    """95 % percentile bootstrap interval; None without resamples."""
    if replicates is None or len(replicates) == 0:
        return {"estimate": float(estimate), "interval": None}
    low, high = np.percentile(replicates, [2.5, 97.5])
    return {"estimate": float(estimate), "interval": [float(low), float(high)]}


def _stratified_bootstrap(real: np.ndarray, generated: np.ndarray, statistics: dict, estimates: dict, resamples: int, seed: int) -> dict:
    """Intervals of ``statistics`` (name -> f(real, generated)) around ``estimates``; real and generated resampled separately."""
    replicates = {name: np.empty(resamples) for name in statistics}
    generator = np.random.default_rng(seed)
    for b in range(resamples):
        real_b = real[generator.integers(0, len(real), len(real))]
        generated_b = generated[generator.integers(0, len(generated), len(generated))]
        for name, f in statistics.items():
            replicates[name][b] = f(real_b, generated_b)
    return {name: _interval(estimates[name], replicates[name] if resamples else None) for name in statistics}


def _labels_and_scores(real: np.ndarray, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.r_[np.zeros(len(real), bool), np.ones(len(generated), bool)], np.r_[real, generated]


def _auroc(real: np.ndarray, generated: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(*_labels_and_scores(real, generated)))


def _average_precision(real: np.ndarray, generated: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(*_labels_and_scores(real, generated)))


# sklearn's metrics spend milliseconds validating their input, which a thousand
# bootstrap replicates of several statistics multiply into minutes. The
# replicates use these equivalents (same tie handling; tests compare them).


def _fast_auroc(real: np.ndarray, generated: np.ndarray) -> float:
    """Mann-Whitney U / (n_real n_generated), ties counted half: equal to roc_auc_score."""
    from scipy.stats import rankdata

    ranks = rankdata(np.r_[real, generated])[len(real) :]
    n = len(generated)
    return float((ranks.sum() - n * (n + 1) / 2) / (len(real) * n))


def _fast_average_precision(real: np.ndarray, generated: np.ndarray) -> float:
    """Sum over distinct thresholds of (recall step) x precision: equal to average_precision_score."""
    labels, scores = _labels_and_scores(real, generated)
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(labels)[last_of_tie]
    precision = true_positives / (last_of_tie + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _split_by_label(scores: np.ndarray, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, np.float64).ravel()
    generated = np.asarray(generated, bool).ravel()
    if len(scores) != len(generated):
        raise ValueError(f"{len(scores)} scores but {len(generated)} labels")
    if np.isnan(scores).any():
        raise ValueError("scores hold NaN")
    _require_both_classes(generated, "a test set")
    return scores[~generated], scores[generated]


def _roc_points(real: np.ndarray, generated: np.ndarray, max_points: int = 200) -> dict:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(*_labels_and_scores(real, generated))
    if len(fpr) > max_points:
        # Evenly spaced along the curve's vertices, keeping both ends.
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [float(x) for x in fpr], "tpr": [float(x) for x in tpr]}


def _threshold_for(thresholds: dict, budget: float) -> float:
    """A validation threshold keyed by the budget as a float or as its f"{b:g}" string (JSON keys)."""
    for key in (budget, budget_key(budget)):
        if key in thresholds:
            return float(thresholds[key])
    raise ValueError(f"no threshold given for budget {budget:g} (thresholds for {sorted(map(str, thresholds))})")


def detector_metrics(scores: np.ndarray, generated: np.ndarray, budgets: Sequence[float], thresholds: dict | None, resamples: int, seed: int) -> dict:
    """AUROC, average precision and TPR at false-positive budgets on a test set, with bootstrap intervals.

    ``tpr_at_fpr`` reads the ROC off at the test set's own threshold for each
    budget (the best any threshold could do); ``at_threshold`` applies the
    thresholds chosen on a validation split (``thresholds``: budget -> t), which
    is what filtering will realise. Intervals: 95 % percentile bootstrap,
    resampling real and generated images separately, ``resamples`` times.
    """
    real, fake = _split_by_label(scores, generated)
    budgets = [_check_budget(b) for b in budgets]
    statistics = {"auroc": _fast_auroc, "average_precision": _fast_average_precision}
    for b in budgets:
        statistics[f"tpr@{b:g}"] = lambda r, g, b=b: _tpr_at_fpr(r, g, b)
    if thresholds is not None:
        for b in budgets:
            t = _threshold_for(thresholds, b)
            statistics[f"tpr>{b:g}"] = lambda r, g, t=t: float(np.mean(g > t))
            statistics[f"fpr>{b:g}"] = lambda r, g, t=t: float(np.mean(r > t))
    estimates = {name: f(real, fake) for name, f in statistics.items()}
    estimates.update(auroc=_auroc(real, fake), average_precision=_average_precision(real, fake))
    values = _stratified_bootstrap(real, fake, statistics, estimates, int(resamples), seed)
    result = {
        "n_real": int(len(real)),
        "n_generated": int(len(fake)),
        "auroc": values["auroc"],
        "average_precision": values["average_precision"],
        "tpr_at_fpr": {budget_key(b): values[f"tpr@{b:g}"] for b in budgets},
        "roc": _roc_points(real, fake),
    }
    if thresholds is not None:
        result["at_threshold"] = {
            budget_key(b): {"threshold": _threshold_for(thresholds, b), "tpr": values[f"tpr>{b:g}"], "fpr": values[f"fpr>{b:g}"]} for b in budgets
        }
    return result


# ---- format-only audit -------------------------------------------------------------

_CONTAINERS = ("PNG", "JPEG", "WEBP")
_MODES = ("L", "RGB", "RGBA")
# Steps of a value grid coarser than 8 bits (7, 6, 5 and 4 bits, and the 16
# levels of 0..255 in steps of 17), and the share of mid-tones that makes an
# image quantised to one (a few stray values survive resampling).
GRID_STEPS = (2, 4, 8, 16, 17)
QUANTISED_SHARE = 0.99
FORMAT_FEATURE_NAMES = (
    *(f"format_{name.lower()}" for name in _CONTAINERS),
    "format_other",
    *(f"mode_{name}" for name in _MODES),
    "mode_other",
    "bits_per_sample",
    "width",
    "height",
    "bytes_vs_png",
    *(f"quantised_to_{step}" for step in GRID_STEPS),
    "stored_grey",
)
_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}
_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16")


def _png_bytes(image: Image.Image) -> int:
    """Bytes of ``image`` re-encoded as PNG by PIL with default settings."""
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.tell()


def _format_row(path: str) -> list[float]:
    with Image.open(path) as image:
        image.load()
        container, mode, (width, height) = image.format, image.mode, image.size
        # Against the same pixels in a canonical encoding: raw file size alone
        # depends on how much detail the picture has.
        bytes_vs_png = os.path.getsize(path) / _png_bytes(image)
    rgb = np.asarray(load_rgb(path))
    values = rgb.astype(np.int64)
    row = [float(container == name) for name in _CONTAINERS] + [float(container not in _CONTAINERS)]
    row += [float(mode == name) for name in _MODES] + [float(mode not in _MODES)]
    row += [float(_BITS.get(mode, 8)), float(width), float(height), bytes_vs_png]
    # The value grid: is every mid-tone a multiple of the step (a coarser
    # quantisation than 8 bits)? Black and white are multiples of everything;
    # and the mere share of multiples follows the content's grey levels, so
    # only the all-or-nothing answer describes storage.
    mid = values[(values > 0) & (values < 255)]
    row += [float(mid.size > 0 and np.mean(mid % step == 0) >= QUANTISED_SHARE) for step in GRID_STEPS]
    # All or nothing: how colourful a picture is, is content.
    row.append(float(np.all((values[..., 0] == values[..., 1]) & (values[..., 1] == values[..., 2]))))
    return row


def format_features(paths: Sequence[str]) -> np.ndarray:
    """How each image is stored, not what it shows: float64 (N, len(FORMAT_FEATURE_NAMES)).

    Every feature is chosen to be blind to content: the container, mode, bit
    depth and size; the stored bytes against the same decoded pixels in a
    canonical PNG encoding (codec, compression level, metadata; raw file size
    would measure detail); the value grid (whether every mid-tone lies on a
    coarser grid than 8 bits); and grey storage (R = G = B everywhere). Tried and dropped,
    because each follows content: a lossy round trip's change and the count of
    distinct values (both grow with fine detail), and the shares of even
    values or multiples of 4, 8, 17 (they follow the grey-level histogram: real
    digits and the same digits redrawn differed at AUROC 0.76).
    """
    out = np.empty((len(paths), len(FORMAT_FEATURE_NAMES)), np.float64)
    for i, path in enumerate(tqdm(paths, desc="format features", mininterval=10)):
        out[i] = _format_row(str(path))
    return out


def format_audit(features: np.ndarray, generated: np.ndarray, split: np.ndarray, seed: int, resamples: int, near_chance: float = 0.6) -> dict:
    """Can storage alone tell generated from real? A logistic regression fitted on split "train", scored on "test".

    ``trustworthy`` means the test AUROC lies within ``near_chance`` of 0.5 on
    either side: an AUROC far below 0.5 is as much a storage signal as one far
    above it.
    """
    features = np.asarray(features, np.float64)
    generated = np.asarray(generated, bool).ravel()
    split = np.asarray(split).astype(str).ravel()
    if not len(features) == len(generated) == len(split):
        raise ValueError(f"{len(features)} feature rows, {len(generated)} labels and {len(split)} split names")
    train, test = split == "train", split == "test"
    linear = _Linear.fit(features[train], generated[train])
    real, fake = _split_by_label(linear.decision(features[test]), generated[test])
    auroc = _stratified_bootstrap(real, fake, {"auroc": _fast_auroc}, {"auroc": _auroc(real, fake)}, int(resamples), seed)["auroc"]
    width = features.shape[1]
    names = list(FORMAT_FEATURE_NAMES) if width == len(FORMAT_FEATURE_NAMES) else [f"feature_{i}" for i in range(width)]
    return {
        "auroc": auroc,
        "near_chance": float(near_chance),
        "trustworthy": bool(max(auroc["estimate"], 1.0 - auroc["estimate"]) <= near_chance),
        "features": names,
        "weights": {name: float(w) for name, w in zip(names, linear.coef)},
    }
