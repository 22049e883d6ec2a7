import numpy as np
import pandas as pd
import pytest

from contam import analysis


def clouds(seed=0, n=300, dim=16):
    """Real data, a control from the same distribution, and a narrow 'generated' set."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n // 3)
    centres = rng.normal(0, 4, (3, dim))
    real = centres[labels] + rng.normal(0, 1, (n, dim))
    control = centres[labels] + rng.normal(0, 1, (n, dim))
    # A sub-region of the real distribution: one side of each class, half as spread out.
    noise = rng.normal(0, 1, (20 * n, dim))
    noise = noise[noise[:, 0] > 1.0][:n] * np.r_[1.0, np.full(dim - 1, 0.5)]
    generated = centres[labels] + noise
    return real, control, generated, labels


def test_less_diverse_set_has_lower_recall_and_coverage():
    real, control, generated, labels = clouds()
    c = analysis.compare(real, labels, control, labels, kid_subsets=20, kid_subset_size=100)["whole"]
    g = analysis.compare(real, labels, generated, labels, kid_subsets=20, kid_subset_size=100)["whole"]
    assert g["recall"] < c["recall"] - 0.3
    assert g["coverage"] < c["coverage"]
    assert g["diversity_ratio"] < 0.5 < c["diversity_ratio"]
    assert g["fid"] > c["fid"] and g["kid"] > c["kid"]
    assert c["precision"] > 0.8 and g["precision"] > 0.8  # generated images still look real


def test_fid_of_identical_sets_is_zero_and_kid_is_seeded():
    real, _, _, labels = clouds()
    assert analysis.frechet_distance(real, real) == pytest.approx(0, abs=1e-6)
    a = analysis.kernel_distance(real, real[::-1], 10, 50, seed=1)
    assert a == analysis.kernel_distance(real, real[::-1], 10, 50, seed=1)


def test_per_class_rows():
    real, control, _, labels = clouds()
    result = analysis.compare(real, labels, control[:200], labels[:200], kid_subsets=5, kid_subset_size=50)
    assert [row["label"] for row in result["per_class"]] == [0, 1]  # only shared classes
    assert all(0 <= row["recall"] <= 1 for row in result["per_class"])


def test_sample_per_class_caps_and_is_deterministic():
    index = pd.DataFrame({"path": [f"{i:03d}" for i in range(50)], "label": [i % 2 for i in range(50)]})
    a = analysis.sample_per_class(index, 10, seed=0)
    assert a.groupby("label").size().tolist() == [10, 10]
    pd.testing.assert_frame_equal(a, analysis.sample_per_class(index.iloc[::-1], 10, seed=0))
