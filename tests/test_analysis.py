import contextlib
import io

import numpy as np
import pandas as pd
import pytest

from contam import analysis

SETTINGS = dict(max_per_class=25, nearest_k=5, kid_subsets=10, kid_subset_size=50, bootstrap=40, seed=0)
CLASSES, DIM = 3, 4


def clouds(n_reference=60, n_other=40, seed=0):
    """A real reference split and sets drawn from the same, a shifted and a narrowed distribution."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (CLASSES, DIM))

    def draw(n, noise):
        labels = np.repeat(np.arange(CLASSES), n)
        return {"features": centres[labels] + noise(len(labels)), "labels": labels, "paths": np.array([f"{i:04d}" for i in range(len(labels))])}

    normal = lambda n: rng.normal(0, 1, (n, DIM))  # noqa: E731

    def narrow(n):  # a sub-region of the real distribution: one side of each class, half as spread out
        noise = rng.normal(0, 1, (20 * n, DIM))
        return noise[noise[:, 0] > 1.0][:n] * np.r_[1.0, np.full(DIM - 1, 0.5)]

    return {
        "reference": draw(n_reference, normal),
        "control": draw(n_other, normal),
        "shifted": draw(n_other, lambda n: normal(n) + 1.5),
        "narrow": draw(n_other, narrow),
    }


@pytest.fixture(scope="module")
def records():
    sets = clouds()
    out = {name: analysis.compare_to_reference(sets["reference"], sets[name], **SETTINGS) for name in ("control", "shifted", "narrow")}
    out["floor"] = analysis.compare_to_reference(sets["reference"], None, **SETTINGS)
    return out


def test_floor_is_near_zero_and_a_same_distribution_set_matches_it(records):
    floor, control, shifted = (records[k]["whole"] for k in ("floor", "control", "shifted"))
    assert floor["fid"] < 0.1 * shifted["fid"]
    assert floor["kid"] < 0.1 * shifted["kid"]
    for key in ("precision", "recall", "coverage"):
        assert control[key] == pytest.approx(floor[key], abs=0.1), key
    assert control["density"] == pytest.approx(floor["density"], abs=0.3)
    assert shifted["precision_ci95"][1] < floor["precision_ci95"][0]
    assert shifted["fid_ci95"][0] > floor["fid_ci95"][1]


def test_less_diverse_set_has_lower_recall_and_coverage_with_separate_intervals(records):
    floor, narrow = records["floor"]["whole"], records["narrow"]["whole"]
    assert narrow["recall_ci95"][1] < floor["recall_ci95"][0]
    assert narrow["coverage_ci95"][1] < floor["coverage_ci95"][0]
    assert narrow["diversity_ratio"] < 0.6 < floor["diversity_ratio"]
    assert narrow["precision"] > 0.8  # the generated images still look real


def test_every_comparison_has_the_same_sample_sizes(records):
    for record in records.values():
        assert record["reference"] == {"n_per_class": 25, "classes": CLASSES}
        whole = record["whole"]
        assert whole["n_reference"] == whole["n_other"] == 25 * CLASSES
        assert [(row["label"], row["n_reference"], row["n_other"]) for row in record["per_class"]] == [(c, 25, 25) for c in range(CLASSES)]
        assert record["bootstrap"]["resamples"] == SETTINGS["bootstrap"] and record["bootstrap"]["method"]


def test_intervals_hold_their_estimates(records):
    for record in records.values():
        whole = record["whole"]
        for key in ("fid", *analysis.PRDC_KEYS):
            low, high = whole[f"{key}_ci95"]
            assert 0 <= low <= whole[key] <= high, key
            assert low < high or key == "precision", key
        assert max(whole["precision_ci95"][1], whole["recall_ci95"][1], whole["coverage_ci95"][1]) <= 1


def test_seeded_reproducibility():
    sets = clouds(seed=3)
    settings = {**SETTINGS, "bootstrap": 10}
    a = analysis.compare_to_reference(sets["reference"], sets["narrow"], **settings)
    assert a == analysis.compare_to_reference(sets["reference"], sets["narrow"], **settings)
    b = analysis.compare_to_reference(sets["reference"], sets["narrow"], **{**settings, "seed": 1})
    assert a["whole"]["recall_ci95"] != b["whole"]["recall_ci95"]


def test_halves_are_disjoint_stratified_and_cover_the_split():
    labels = np.repeat([4, 7, 9], [7, 10, 13])[np.random.default_rng(0).permutation(30)]
    a, b = analysis.reference_halves(labels, seed=0)
    assert len(np.intersect1d(a, b)) == 0
    assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(30))
    assert [np.sum(labels[a] == c) for c in (4, 7, 9)] == [4, 5, 7]  # an odd member goes to A
    assert [np.sum(labels[b] == c) for c in (4, 7, 9)] == [3, 5, 6]
    again = analysis.reference_halves(labels, seed=0)
    assert np.array_equal(a, again[0]) and np.array_equal(b, again[1])
    assert not np.array_equal(a, analysis.reference_halves(labels, seed=1)[0])
    assert analysis.comparison_size(labels, 100, seed=0) == 3
    assert analysis.comparison_size(labels, 2, seed=0) == 2
    with pytest.raises(ValueError, match="class 5"):
        analysis.comparison_size(np.r_[labels, 5, 5, 5], 100, seed=0)


def test_a_source_short_of_a_class_is_an_error_naming_it():
    sets = clouds()
    source = sets["control"]
    keep = (source["labels"] != 1) | (np.arange(len(source["labels"])) % 40 < 20)
    short = {key: value[keep] for key, value in source.items()}
    with pytest.raises(ValueError, match=r"20 images of class 1, fewer than the 25"):
        analysis.compare_to_reference(sets["reference"], short, **SETTINGS)
    alien = {**source, "labels": np.where(source["labels"] == 2, 8, source["labels"])}
    with pytest.raises(ValueError, match=r"classes the reference split lacks: \[8\]"):
        analysis.compare_to_reference(sets["reference"], alien, **SETTINGS)


@pytest.mark.parametrize("n", [40, 300])
def test_prdc_with_unit_weights_is_the_prdc_package(n):
    from prdc import compute_prdc

    rng = np.random.default_rng(n)
    real, fake = rng.normal(0, 1, (n, 8)), rng.normal(0.3, 0.8, (n + 7, 8))
    with contextlib.redirect_stdout(io.StringIO()):
        expected = compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    assert analysis.prdc(analysis.manifolds(real, fake, 5)) == pytest.approx({k: float(v) for k, v in expected.items()})


def test_resampled_radii_skip_own_copies_and_count_other_copies():
    x = np.array([[0.0], [1.0], [3.0], [6.0]])
    neighbours = analysis.nearest_neighbours(x, 10)
    assert analysis.knn_radii(neighbours, np.ones(4), 2).tolist() == [3.0, 2.0, 3.0, 5.0]
    # point 0 drawn twice is not its own neighbour (no radius 0); point 0 drawn twice counts twice for point 1
    assert analysis.knn_radii(neighbours, np.array([2, 1, 0, 0]), 2)[:2].tolist() == [np.inf, 1.0]
    assert analysis.knn_radii(neighbours, np.array([1, 2, 1, 0]), 2)[0] == 1.0


def test_a_bootstrap_replicate_weights_its_resample_and_never_counts_a_copy_as_a_neighbour():
    sets = clouds()
    x, y = sets["reference"]["features"][:75], sets["control"]["features"][:75]  # 25 of each class, grouped
    m = analysis.manifolds(x, y, 1)
    replicates = analysis.bootstrap_replicates(x, y, CLASSES, m, 3, np.random.default_rng(5))
    draws, offsets = np.random.default_rng(5), np.repeat(np.arange(CLASSES) * 25, 25)
    for b in range(3):
        pick_x, pick_y = offsets + draws.integers(0, 25, 75), offsets + draws.integers(0, 25, 75)
        assert replicates["fid"][b] == pytest.approx(analysis.frechet_distance(x[pick_x], y[pick_y]))
        weighted = analysis.prdc(m, np.bincount(pick_x, minlength=75), np.bincount(pick_y, minlength=75))
        assert {key: replicates[key][b] for key in analysis.PRDC_KEYS} == pytest.approx(weighted)
        # the duplicated arrays themselves give copies k-NN radii of 0 (k=1): a different, biased value
        assert analysis.prdc(analysis.manifolds(x[pick_x], y[pick_y], 1))["recall"] < weighted["recall"]


@pytest.mark.parametrize("n", [15, 200])
def test_frechet_distance_is_clean_fids(n):
    from cleanfid.fid import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (n, 20)), rng.normal(0.2, 1.3, (n + 5, 20))
    mine = analysis.frechet_distance(a, b)
    if n > 20:  # full-rank covariances: scipy's sqrtm is accurate
        assert mine == pytest.approx(frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)), rel=1e-9)
    else:  # singular: compare with the symmetric form tr sqrt(S_a^1/2 S_b S_a^1/2)
        va, ua = np.linalg.eigh(np.cov(a, rowvar=False))
        root = (ua * np.sqrt(np.clip(va, 0, None))) @ ua.T
        inner = np.linalg.eigvalsh(root @ np.cov(b, rowvar=False) @ root)
        diff = a.mean(0) - b.mean(0)
        expected = diff @ diff + np.trace(np.cov(a, rowvar=False)) + np.trace(np.cov(b, rowvar=False)) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()
        assert mine == pytest.approx(expected, rel=1e-7)  # sqrt of its ~1e-16 zero eigenvalues adds ~1e-8 each
    assert analysis.frechet_distance(a, a) == pytest.approx(0, abs=1e-9)


def test_kid_is_seeded_and_no_bootstrap_gives_no_intervals():
    real = np.random.default_rng(0).normal(0, 1, (100, 8))
    first = analysis.kernel_distance(real, real[::-1], 10, 50, seed=1)
    assert first == analysis.kernel_distance(real, real[::-1], 10, 50, seed=1)
    sets = clouds()
    record = analysis.compare_to_reference(sets["reference"], sets["control"], **{**SETTINGS, "bootstrap": 0})
    assert record["whole"]["fid_ci95"] is None and record["bootstrap"]["resamples"] == 0


def test_kid_of_whole_sets_needs_one_subset():
    from cleanfid.fid import kernel_distance as clean_fid_kid

    generator = np.random.default_rng(3)
    a, b = generator.normal(0, 1, (40, 16)), generator.normal(0.3, 1, (40, 16))
    np.random.seed(0)
    many = clean_fid_kid(a, b, num_subsets=100, max_subset_size=1000)
    assert analysis.kernel_distance(a, b, 100, 1000, seed=5) == pytest.approx(many, rel=1e-12)
    # Subsets smaller than the sets still draw many.
    assert analysis.kernel_distance(a, b, 100, 20, seed=5) != analysis.kernel_distance(a, b, 100, 20, seed=6)


def test_sample_per_class_caps_and_is_deterministic():
    index = pd.DataFrame({"path": [f"{i:03d}" for i in range(50)], "label": [i % 2 for i in range(50)]})
    a = analysis.sample_per_class(index, 10, seed=0)
    assert a.groupby("label").size().tolist() == [10, 10]
    pd.testing.assert_frame_equal(a, analysis.sample_per_class(index.iloc[::-1], 10, seed=0))
