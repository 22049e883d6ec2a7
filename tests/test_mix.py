import numpy as np
import pandas as pd
import pytest

from contam.io import file_sha256, read_parquet, write_parquet
from contam.mix import MANIFEST_COLUMNS, NotEnoughImages, mix, rank_within_class, replaced_per_class

RATIOS = [0.0, 0.2, 0.4, 0.8, 1.0]


def real_train(per_class=(30, 25, 41)):
    rows = [(f"real/{c}/{i:03d}.png", c, f"class{c}") for c, n in enumerate(per_class) for i in range(n)]
    return pd.DataFrame(rows, columns=["path", "label", "class_name"]).assign(split="train", origin="real", source="real")


def generated(per_class=50):
    rows = [(f"gen/{c}/{i:03d}.png", c, f"class{c}", f"photo of class{c}", 1000 * c + i, "sd") for c in range(3) for i in range(per_class)]
    return pd.DataFrame(rows, columns=["path", "label", "class_name", "prompt", "seed", "generator"])


def test_exact_balanced_counts():
    real = real_train()
    for ratio in RATIOS:
        manifest = mix(real, generated(), ratio, seed=0, source="sd", origin="generated")
        assert list(manifest.columns) == MANIFEST_COLUMNS
        assert len(manifest) == len(real)
        for label, size in real.groupby("label").size().items():
            rows = manifest[manifest["label"] == label]
            assert len(rows) == size
            assert (rows["origin"] == "generated").sum() == int(np.floor(ratio * size + 0.5))


def test_nested_across_ratios():
    real = real_train()
    replaced, chosen = [], []
    for ratio in RATIOS:
        m = mix(real, generated(), ratio, seed=3, source="sd", origin="generated")
        replaced.append(set(m["replaces"].dropna()))
        chosen.append(set(m.loc[m["origin"] == "generated", "path"]))
    for small, large in zip(replaced, replaced[1:]):
        assert small <= large
    for small, large in zip(chosen, chosen[1:]):
        assert small <= large
    assert len(replaced[-1]) == len(real)


def test_arms_replace_the_same_real_images():
    real = real_train()
    control = generated().assign(path=lambda f: f["path"].str.replace("gen/", "web/"))
    a = mix(real, generated(), 0.4, seed=1, source="sd", origin="generated")
    b = mix(real, control, 0.4, seed=1, source="web", origin="control")
    assert set(a["replaces"].dropna()) == set(b["replaces"].dropna())


def test_replacement_keeps_labels_and_records_provenance():
    m = mix(real_train(), generated(), 0.8, seed=0, source="sd", origin="generated")
    gen = m[m["origin"] == "generated"]
    assert (gen["source"] == "sd").all() and (gen["generator"] == "sd").all()
    assert gen["prompt"].str.startswith("photo of").all()
    assert gen["seed"].notna().all()
    assert all(p.startswith(f"gen/{label}/") for p, label in zip(gen["path"], gen["label"]))
    assert all(r.startswith(f"real/{label}/") for r, label in zip(gen["replaces"], gen["label"]))
    assert m["path"].is_unique
    real_rows = m[m["origin"] == "real"]
    assert real_rows["seed"].isna().all() and real_rows["prompt"].isna().all()


def test_deterministic_and_byte_identical(tmp_path):
    real = real_train()
    shuffled = real.sample(frac=1, random_state=5)  # input order must not matter
    a = mix(real, generated(), 0.4, seed=0, source="sd", origin="generated")
    b = mix(shuffled, generated().sample(frac=1, random_state=2), 0.4, seed=0, source="sd", origin="generated")
    write_parquet(a, tmp_path / "a.parquet")
    write_parquet(b, tmp_path / "b.parquet")
    assert file_sha256(tmp_path / "a.parquet") == file_sha256(tmp_path / "b.parquet")
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "a.parquet"), read_parquet(tmp_path / "b.parquet"))
    c = mix(real, generated(), 0.4, seed=1, source="sd", origin="generated")
    assert set(c["replaces"].dropna()) != set(a["replaces"].dropna())


def test_too_few_contaminant_images_is_a_clear_error():
    with pytest.raises(NotEnoughImages, match="class 2"):
        mix(real_train(), generated(per_class=35), 1.0, seed=0, source="sd", origin="generated")


def test_ratio_zero_needs_no_contaminant():
    m = mix(real_train(), None, 0.0, seed=0, source="real", origin="real")
    assert (m["origin"] == "real").all()


def test_rank_within_class():
    labels = np.array([1, 0, 1, 0, 1])
    keys = np.array([0.9, 0.5, 0.1, 0.2, 0.5])
    assert rank_within_class(labels, keys).tolist() == [2, 1, 0, 0, 1]


def test_replaced_per_class_rejects_bad_ratio():
    with pytest.raises(ValueError):
        replaced_per_class(np.array([10]), 1.2)
