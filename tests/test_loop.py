"""The self-consuming loop's manifests (contam.loop) and the generative study's units."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from contam import generative, loop
from contam.io import file_sha256, write_parquet
from contam.mix import NotEnoughImages

CLASSES = 3


def real_index(per_class: dict[str, int]) -> pd.DataFrame:
    rows = []
    for split, n in per_class.items():
        for label in range(CLASSES):
            rows += [{"path": f"real/{split}/{label}/{i:03d}.png", "label": label, "class_name": f"c{label}", "split": split} for i in range(n)]
    return pd.DataFrame(rows)


def samples_of(generation: int, per_class: int, seed: int = 0) -> pd.DataFrame:
    """A samples index as fit_and_sample writes it (the columns mix reads)."""
    rows = []
    for label in range(CLASSES):
        for i in range(per_class):
            row = label * per_class + i
            rows.append({"path": f"gen/{generation}/seed-{seed}/{row:08d}.png", "label": label, "class_name": f"c{label}", "prompt": f"c{label}", "seed": 1000 * generation + row, "generator": f"g{generation}"})
    return pd.DataFrame(rows)


REAL = real_index({"train": 10, "control": 12, "reference": 5})
SAMPLES = {g: samples_of(g, 12) for g in range(4)}


def build(regime: str, generation: int, lam: float = 0.5, seed: int = 0) -> pd.DataFrame:
    return loop.loop_manifest(regime, generation, REAL, SAMPLES, lam=lam, seed=seed)


def test_replace_trains_only_on_the_previous_generation():
    m = build("replace", 2)
    assert len(m) == 30 and (m["origin"] == "generated").all()
    assert set(m["generation"]) == {1}
    assert m.groupby("label").size().tolist() == [10, 10, 10]  # the real train split's class sizes


def test_augment_keeps_a_fixed_real_share():
    m = build("augment", 3, lam=0.4)
    assert (m["origin"] == "real").sum() == 18 and set(m["generation"].dropna()) == {2}
    real_paths = set(m.loc[m["origin"] == "real", "path"])
    # The same real images stay at every generation: the real set is fixed.
    assert real_paths == set(build("augment", 1, lam=0.4).query("origin == 'real'")["path"])
    assert all(p.startswith("real/train/") for p in real_paths)


def test_accumulate_manifests_are_nested_and_grow():
    previous = None
    for g in (1, 2, 3):
        m = build("accumulate", g)
        assert len(m) == 30 + 36 * g
        assert m["generation"].dropna().astype(int).value_counts().to_dict() == {k: 36 for k in range(g)}
        if previous is not None:
            assert set(previous["path"]) < set(m["path"])
        previous = m


def test_fresh_draws_new_real_images_each_generation():
    first, second = build("fresh", 1), build("fresh", 2)
    real_1 = set(first.loc[first["origin"] == "real", "path"])
    real_2 = set(second.loc[second["origin"] == "real", "path"])
    assert real_1 != real_2 and len(real_1) == len(real_2) == 15
    assert not any("/reference/" in p for p in real_1 | real_2)
    assert set(second["generation"].dropna()) == {1}


def test_augment_ratios_nest_like_the_classification_mixes():
    low, high = build("augment", 1, lam=0.2), build("augment", 1, lam=0.6)
    assert set(low.loc[low["origin"] == "generated", "replaces"]) < set(high.loc[high["origin"] == "generated", "replaces"])


@pytest.mark.parametrize("regime", loop.REGIMES)
def test_loop_manifests_are_byte_identical_across_reruns(regime, tmp_path):
    write_parquet(build(regime, 2), tmp_path / "a.parquet")
    # A rerun reads its inputs in another row order: the bytes must not change.
    shuffled = {g: s.sample(frac=1, random_state=3) for g, s in SAMPLES.items()}
    again = loop.loop_manifest(regime, 2, REAL.sample(frac=1, random_state=4), shuffled, lam=0.5, seed=0)
    write_parquet(again, tmp_path / "b.parquet")
    assert file_sha256(tmp_path / "a.parquet") == file_sha256(tmp_path / "b.parquet")
    assert list(again.columns) == loop.LOOP_COLUMNS


def test_a_generation_uses_only_earlier_generations():
    with pytest.raises(ValueError, match=r"generation\(s\) \[2\]"):
        loop.loop_manifest("replace", 3, REAL, {0: SAMPLES[0], 1: SAMPLES[1]}, lam=0.5, seed=0)
    with pytest.raises(ValueError, match="generation 0"):
        build("replace", 0)
    with pytest.raises(ValueError, match="unknown regime"):
        build("collapse", 1)


def test_too_few_samples_for_the_replace_regime_is_a_clear_error():
    with pytest.raises(NotEnoughImages, match="class 0"):
        loop.loop_manifest("replace", 1, REAL, {0: samples_of(0, 4)}, lam=0.5, seed=0)


def test_composition_counts_origins_and_generations():
    summary = loop.composition(build("accumulate", 2))
    assert summary == {"images": 102, "by_origin": {"generated": 72, "real": 30}, "by_generation": {"0": 36, "1": 36}}


def study_config(**loop_settings) -> dict:
    return {
        "seed": 0,
        "real": {"kind": "digits"},
        "mixing": {"ratios": [0.0, 0.5, 1.0]},
        "sources": {"generated": {"origin": "generated"}, "control": {"origin": "control"}},
        "seeds": [0, 1],
        "generative": {
            "model": {"image_size": 8, "fit": {"steps": 50}, "sample": {"steps": 4}},
            "samples_per_class": 12,
            "tail_fraction": 0.1,
            "loop": {"generations": 3, "regimes": ["replace", "accumulate"], "lambda": 0.5, "init": "scratch", "fresh_splits": ["train", "control"], **loop_settings},
        },
    }


def test_units_share_the_real_only_model_across_arms_and_regimes():
    units = generative.units(study_config())
    names = [u.name for u in units]
    assert len(names) == len(set(names)) == 2 * (1 + 2 * 2 + 2 * 2)  # seeds x (real + arms x ratios + regimes x generations 1..2)
    assert "real/ratio-0.0/seed-0" in names and not any("gen-0" in n for n in names)
    assert generative.loop_unit("replace", 0, 1) == generative.real_unit(1)


def test_unit_settings_give_common_random_numbers_within_a_seed():
    config = study_config()
    a, b = (generative.unit_settings(config, generative.Unit(t, lv, 0)) for t, lv in (("generated", "ratio-0.5"), ("replace", "gen-2")))
    c = generative.unit_settings(config, generative.Unit("generated", "ratio-0.5", 1))
    assert (a["fit_seed"], a["sample_seed"]) == (b["fit_seed"], b["sample_seed"]) != (c["fit_seed"], c["sample_seed"])
    assert a["init"] == "scratch"


def test_fine_tuning_starts_from_the_previous_generation():
    config = study_config(init="previous", finetune_steps=7)
    unit = generative.Unit("replace", "gen-2", 0)
    assert generative.previous_unit(config, unit) == generative.Unit("replace", "gen-1", 0)
    assert generative.previous_unit(config, generative.Unit("replace", "gen-1", 0)) == generative.real_unit(0)
    settings = generative.unit_settings(config, unit)
    assert settings["init"] == "previous" and settings["fit"]["steps"] == 7
    assert generative.unit_settings(config, generative.real_unit(0))["fit"]["steps"] == 50


def test_sample_prompts_depend_only_on_the_seed():
    settings = generative.unit_settings(study_config(), generative.real_unit(0))
    prompts = generative.sample_prompts(settings, {0: "zero"})
    assert len(prompts) == 10 * 12 and prompts["label"].value_counts().eq(12).all()
    assert prompts["class_name"].iloc[0] == "zero" and prompts["class_name"].iloc[-1] == "class 9"
    assert np.array_equal(prompts["seed"], generative.sample_prompts(settings, {})["seed"])
