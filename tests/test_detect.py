"""contam.detect: detectors of generated images, thresholds at an FPR budget, metrics, format audit."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from contam import detect

SIZE = 16


def smooth_image(rng: np.random.Generator, red_first: bool = False) -> np.ndarray:
    """A colour gradient with faint noise: low-frequency content like a photo at this scale."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    base = rng.uniform(60, 190, 3)
    if red_first:
        base = np.array([rng.uniform(150, 200), rng.uniform(90, 150), rng.uniform(40, 90)])
    gx, gy = rng.uniform(-30, 30, (2, 3))
    image = base + gx * x[..., None] + gy * y[..., None] + rng.normal(0, 2, (SIZE, SIZE, 3))
    return image


def checkerboard(amplitude: float) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return amplitude * np.where((x + y) % 2 == 0, 1.0, -1.0)[..., None]


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def write(array: np.ndarray, path, fmt: str = "PNG", mode: str = "RGB", **kwargs) -> str:
    Image.fromarray(array).convert(mode).save(path, format=fmt, **kwargs)
    return str(path)


def labelled_set(folder, n_per_class: int, seed: int, make_generated, fmt_generated: str = "PNG", mode_generated: str = "RGB", red_first: bool = False) -> pd.DataFrame:
    """n real and n generated images, interleaved, with a train/test split column (every other pair)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_per_class):
        real = to_uint8(smooth_image(rng, red_first))
        fake = to_uint8(make_generated(smooth_image(rng, red_first)))
        split = "train" if i % 2 == 0 else "test"
        rows.append({"path": write(real, folder / f"real_{i}.png"), "generated": False, "split": split})
        suffix = ".jpg" if fmt_generated == "JPEG" else ".png"
        rows.append({"path": write(fake, folder / f"fake_{i}{suffix}", fmt_generated, mode_generated), "generated": True, "split": split})
    return pd.DataFrame(rows)


def auroc(scores: np.ndarray, generated: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(generated, scores))


@pytest.fixture(scope="module")
def checker_set(tmp_path_factory) -> pd.DataFrame:
    """Real: smooth images. Generated: the same kind plus a faint (+-3 levels) checkerboard."""
    return labelled_set(tmp_path_factory.mktemp("checker"), 30, 0, lambda image: image + checkerboard(3))


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory) -> pd.DataFrame:
    """An easy difference for a tiny CNN: generated images have their colour channels swapped."""
    return labelled_set(tmp_path_factory.mktemp("colour"), 24, 1, lambda image: image[..., ::-1], red_first=True)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models train many times faster on one thread than on two contended ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CNN_SETTINGS = {"cnn": {"image_size": SIZE, "epochs": 3, "batch_size": 8, "learning_rate": 0.003}, "eval_batch_size": 16}


@pytest.fixture(scope="module")
def cnn_detector(colour_set) -> detect.Detector:
    return detect.fit_detector("cnn", colour_set[colour_set.split == "train"], CNN_SETTINGS, seed=3)


# ---- spectral features and detectors ---------------------------------------------------


def test_spectral_features_shape_crop_and_pad(tmp_path):
    rng = np.random.default_rng(0)
    big = write(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), tmp_path / "big.png")
    small = write(np.full((5, 7, 3), 100, np.uint8), tmp_path / "small.png")
    features = detect.spectral_features([big, small], 8)
    assert features.shape == (2, 64) and features.dtype == np.float32
    # A flat image padded with its edge values stays flat: all energy in the DC term.
    flat = features[1].reshape(8, 8)
    assert flat[0, 0] == pytest.approx(np.log(100 * 8), rel=1e-4)
    assert (flat.ravel()[1:] < -10).all()
    # The crop is the center, not a resize: compare with the DCT computed by hand.
    from scipy.fft import dctn

    grey = np.asarray(Image.open(big).convert("RGB"), np.float64) @ np.array([0.299, 0.587, 0.114])
    expected = np.log(np.abs(dctn(grey[6:14, 11:19], norm="ortho")) + 1e-6).ravel()
    np.testing.assert_allclose(features[0], expected, rtol=1e-5)
    assert detect.spectral_features([], 8).shape == (0, 64)


def test_spectral_detector_finds_a_faint_checkerboard_and_round_trips(checker_set, tmp_path):
    train, test = checker_set[checker_set.split == "train"], checker_set[checker_set.split == "test"]
    detector = detect.fit_detector("spectral", train, {}, seed=0)
    scores = detector.scores(test.path.tolist())
    assert scores.dtype == np.float64 and scores.shape == (len(test),)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert auroc(scores, test.generated.to_numpy()) > 0.9
    detector.save(tmp_path / "spectral.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["spectral.pt"]  # no temporary left behind
    again = detect.Detector.load(tmp_path / "spectral.pt")
    assert again.kind == "spectral"
    np.testing.assert_array_equal(again.scores(test.path.tolist()), scores)


def test_linear_scores_equal_sklearn_predict_proba():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    x[:, 4] = 2.0  # a constant column
    y = x[:, 0] + rng.normal(size=60) > 0
    ours = detect._Linear.fit(x, y).probabilities(x)
    theirs = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y).predict_proba(x)[:, 1]
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)


def test_fit_detector_refuses_unknown_kind_missing_extractor_and_one_class(checker_set):
    with pytest.raises(ValueError, match=r"'fft'.*spectral, cnn, probe"):
        detect.fit_detector("fft", checker_set, {}, seed=0)
    with pytest.raises(ValueError, match="extractor"):
        detect.fit_detector("probe", checker_set, {}, seed=0)
    with pytest.raises(ValueError, match="real and generated"):
        detect.fit_detector("spectral", checker_set[checker_set.generated], {}, seed=0)


# ---- cnn and probe ---------------------------------------------------------------------


def test_cnn_detector_learns_an_easy_difference_deterministically(cnn_detector, colour_set, tmp_path):
    train, test = colour_set[colour_set.split == "train"], colour_set[colour_set.split == "test"]
    scores = cnn_detector.scores(test.path.tolist())
    assert scores.dtype == np.float64 and ((scores >= 0) & (scores <= 1)).all()
    assert auroc(scores, test.generated.to_numpy()) > 0.9
    again = detect.fit_detector("cnn", train, CNN_SETTINGS, seed=3)
    np.testing.assert_array_equal(again.scores(test.path.tolist()), scores)
    cnn_detector.save(tmp_path / "cnn.pt")
    loaded = detect.Detector.load(tmp_path / "cnn.pt")
    assert loaded.kind == "cnn" and loaded.settings["cnn"]["image_size"] == SIZE
    np.testing.assert_array_equal(loaded.scores(test.path.tolist()), scores)


def test_probe_detector_round_trips_and_needs_its_extractor(cnn_detector, colour_set, tmp_path):
    from contam.models import create_model
    import torch

    train, test = colour_set[colour_set.split == "train"], colour_set[colour_set.split == "test"]
    torch.manual_seed(0)
    extractor = (create_model("resnet10t", 3).eval(), SIZE)
    detector = detect.fit_detector("probe", train, {"probe": {"C": 0.5}}, seed=0, extractor=extractor)
    scores = detector.scores(test.path.tolist())
    assert scores.shape == (len(test),) and ((scores >= 0) & (scores <= 1)).all()
    detector.save(tmp_path / "probe.pt")
    with pytest.raises(ValueError, match="extractor"):
        detect.Detector.load(tmp_path / "probe.pt")
    with pytest.raises(ValueError, match="16-pixel"):
        detect.Detector.load(tmp_path / "probe.pt", extractor=(extractor[0], 24))
    loaded = detect.Detector.load(tmp_path / "probe.pt", extractor=extractor)
    np.testing.assert_allclose(loaded.scores(test.path.tolist()), scores, rtol=0, atol=0)
    # A different extractor gives different features, so the stored probe must not reuse them.
    torch.manual_seed(1)
    other = detect.Detector.load(tmp_path / "probe.pt", extractor=(create_model("resnet10t", 3).eval(), SIZE))
    assert not np.allclose(other.scores(test.path.tolist()), scores)


# ---- threshold_at_fpr ----------------------------------------------------------------


def test_threshold_at_fpr_respects_the_budget_with_ties():
    real = np.array([0.1] * 5 + [0.9] * 5)
    # Flagging the top 30 % is impossible without flagging all five tied 0.9s (50 %).
    t = detect.threshold_at_fpr(real, 0.3)
    assert t == 0.9 and np.mean(real > t) == 0.0
    assert detect.threshold_at_fpr(real, 0.5) == 0.1  # exactly the five 0.9s may go
    rng = np.random.default_rng(0)
    for budget in (0.01, 0.05, 0.1, 0.29):
        for scores in (rng.random(137), rng.integers(0, 10, 300) / 10.0, np.arange(100.0)):
            t = detect.threshold_at_fpr(scores, budget)
            assert np.mean(scores > t) <= budget
            # smallest such threshold: anything below it breaks the budget
            assert np.mean(scores > np.nextafter(t, -np.inf)) > budget
    # float error must not cost an allowed image: 0.29 * 100 is 28.999999999999996
    assert np.mean(np.arange(100.0) > detect.threshold_at_fpr(np.arange(100.0), 0.29)) == 0.29


@pytest.mark.parametrize("budget", [0, 1, -0.1, 1.5, float("nan")])
def test_threshold_at_fpr_refuses_budgets_outside_0_1(budget):
    with pytest.raises(ValueError, match="budget"):
        detect.threshold_at_fpr(np.arange(10.0), budget)


# ---- detector_metrics ---------------------------------------------------------------


def test_detector_metrics_perfect_separation():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.uniform(0, 0.4, 150), rng.uniform(0.6, 1, 50)]
    generated = np.r_[np.zeros(150, bool), np.ones(50, bool)]
    thresholds = {0.01: 0.5, 0.05: 0.3}
    m = detect.detector_metrics(scores, generated, [0.01, 0.05], thresholds, resamples=50, seed=0)
    json.dumps(m)
    assert (m["n_real"], m["n_generated"]) == (150, 50)
    assert m["auroc"] == {"estimate": 1.0, "interval": [1.0, 1.0]}
    assert m["average_precision"]["estimate"] == 1.0
    assert set(m["tpr_at_fpr"]) == {"0.01", "0.05"}
    assert all(v["estimate"] == 1.0 for v in m["tpr_at_fpr"].values())
    at = m["at_threshold"]
    assert at["0.01"]["threshold"] == 0.5 and at["0.01"]["tpr"]["estimate"] == 1.0 and at["0.01"]["fpr"]["estimate"] == 0.0
    # a validation threshold set too low shows up as a realised FPR over the budget
    assert at["0.05"]["fpr"]["estimate"] == pytest.approx(np.mean(scores[:150] > 0.3))
    assert at["0.05"]["fpr"]["estimate"] > 0.05
    assert m["roc"]["fpr"][0] == 0.0 and m["roc"]["tpr"][-1] == 1.0
    # JSON string keys work too (thresholds read back from a file)
    again = detect.detector_metrics(scores, generated, [0.01, 0.05], {"0.01": 0.5, "0.05": 0.3}, resamples=50, seed=0)
    assert again == m


def test_detector_metrics_identical_distributions_are_near_chance():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=600)
    generated = rng.random(600) < 0.5
    m = detect.detector_metrics(scores, generated, [0.01, 0.05], None, resamples=100, seed=0)
    assert "at_threshold" not in m
    low, high = m["auroc"]["interval"]
    assert 0.42 < m["auroc"]["estimate"] < 0.58 and low < 0.5 < high
    for value in (m["auroc"], m["average_precision"], *m["tpr_at_fpr"].values()):
        low, high = value["interval"]
        assert low <= value["estimate"] <= high
    assert m["tpr_at_fpr"]["0.05"]["estimate"] < 0.15
    assert len(m["roc"]["fpr"]) <= 200 and len(m["roc"]["fpr"]) == len(m["roc"]["tpr"])
    assert np.all(np.diff(m["roc"]["fpr"]) >= 0)
    # same seed, same intervals; the estimate does not depend on the seed
    assert detect.detector_metrics(scores, generated, [0.01, 0.05], None, resamples=100, seed=0) == m
    other = detect.detector_metrics(scores, generated, [0.01, 0.05], None, resamples=100, seed=1)
    assert other["auroc"]["estimate"] == m["auroc"]["estimate"] and other["auroc"]["interval"] != m["auroc"]["interval"]


def test_bootstrap_metrics_equal_sklearn_with_ties():
    rng = np.random.default_rng(2)
    for n_real, n_generated, levels in ((50, 30, 5), (7, 200, 1000), (300, 300, 3)):
        real = rng.integers(0, levels, n_real) / levels
        generated = rng.integers(0, levels, n_generated) / levels + 0.1
        assert detect._fast_auroc(real, generated) == pytest.approx(detect._auroc(real, generated), abs=1e-12)
        assert detect._fast_average_precision(real, generated) == pytest.approx(detect._average_precision(real, generated), abs=1e-12)


def test_tpr_at_fpr_does_not_interpolate_over_ties():
    # Every generated image ties with the top 10 % of real ones: at a 5 % budget none can be flagged.
    scores = np.r_[np.zeros(90), np.ones(10), np.ones(100)]
    generated = np.r_[np.zeros(100, bool), np.ones(100, bool)]
    m = detect.detector_metrics(scores, generated, [0.05, 0.1], None, resamples=0, seed=0)
    assert m["tpr_at_fpr"]["0.05"] == {"estimate": 0.0, "interval": None}
    assert m["tpr_at_fpr"]["0.1"]["estimate"] == 1.0


def test_detector_metrics_refuses_one_class_and_missing_thresholds():
    with pytest.raises(ValueError, match="real and generated"):
        detect.detector_metrics(np.arange(4.0), np.ones(4, bool), [0.05], None, 10, 0)
    with pytest.raises(ValueError, match="budget 0.05"):
        detect.detector_metrics(np.arange(4.0), np.array([0, 0, 1, 1], bool), [0.05], {0.01: 0.5}, 10, 0)


# ---- format audit ---------------------------------------------------------------------


def test_format_features_describe_storage(tmp_path):
    rng = np.random.default_rng(0)
    pixels = to_uint8(smooth_image(rng))
    png = write(pixels, tmp_path / "a.png")
    jpeg = write(pixels, tmp_path / "a.jpg", "JPEG", quality=90)
    grey = write(pixels, tmp_path / "g.png", mode="L")
    webp = write(pixels, tmp_path / "a.webp", "WEBP", lossless=True)
    rgba = write(pixels, tmp_path / "rgba.png", mode="RGBA")
    features = detect.format_features([png, jpeg, grey, webp, rgba])
    assert features.shape == (5, len(detect.FORMAT_FEATURE_NAMES)) and features.dtype == np.float64
    f = {name: features[:, i] for i, name in enumerate(detect.FORMAT_FEATURE_NAMES)}
    np.testing.assert_array_equal(f["format_png"], [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(f["format_jpeg"], [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(f["format_webp"], [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(f["mode_RGB"], [1, 1, 0, 1, 0])
    np.testing.assert_array_equal(f["mode_L"], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(f["mode_RGBA"], [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(f["bits_per_sample"], 8)
    np.testing.assert_array_equal(f["width"], SIZE)
    # A PNG written by PIL with default settings is its own canonical encoding.
    np.testing.assert_array_equal(f["bytes_vs_png"][[0, 2, 4]], 1.0)
    assert f["bytes_vs_png"][1] != 1.0
    np.testing.assert_array_equal(f["stored_grey"], [0, 0, 1, 0, 0])
    # 8-bit content is on no coarser grid; the same pixels quantised to 6 bits are.
    assert f["quantised_to_2"][0] == 0
    six_bit = detect.format_features([write(pixels // 4 * 4, tmp_path / "six.png")])[0]
    assert six_bit[detect.FORMAT_FEATURE_NAMES.index("quantised_to_4")] == 1 and six_bit[detect.FORMAT_FEATURE_NAMES.index("quantised_to_8")] == 0
    assert detect.format_features([]).shape == (0, len(detect.FORMAT_FEATURE_NAMES))


def noisier(image: np.ndarray) -> np.ndarray:
    """Finer texture: a content difference a lossy round trip or a count of distinct values would take for storage."""
    return image + np.random.default_rng(int(image.sum()) % 1000).normal(0, 4, image.shape)


@pytest.mark.parametrize("content", [lambda image: image[:, ::-1] + rng_shift(image), noisier], ids=["brighter", "noisier"])
def test_format_audit_near_chance_when_stored_identically(tmp_path, content):
    # Different content, identical storage.
    frame = labelled_set(tmp_path, 40, 2, content)
    features = detect.format_features(frame.path.tolist())
    audit = detect.format_audit(features, frame.generated.to_numpy(), frame.split.to_numpy(), seed=0, resamples=100)
    json.dumps(audit)
    assert audit["trustworthy"] is True, audit["auroc"]
    assert audit["features"] == list(detect.FORMAT_FEATURE_NAMES)
    assert set(audit["weights"]) == set(audit["features"])
    # constant columns (format, mode, size) did not break the fit
    assert audit["weights"]["format_png"] == 0.0


def rng_shift(image: np.ndarray) -> np.ndarray:
    """Brighter generated content: a content difference, not a storage one."""
    return np.full_like(image, 25.0)


@pytest.mark.parametrize("fmt, mode", [("JPEG", "RGB"), ("PNG", "RGBA")])
def test_format_audit_flags_generated_images_stored_differently(tmp_path, fmt, mode):
    frame = labelled_set(tmp_path, 20, 3, lambda image: image, fmt_generated=fmt, mode_generated=mode)
    features = detect.format_features(frame.path.tolist())
    audit = detect.format_audit(features, frame.generated.to_numpy(), frame.split.to_numpy(), seed=0, resamples=100)
    assert audit["auroc"]["estimate"] > 0.95
    assert audit["trustworthy"] is False
