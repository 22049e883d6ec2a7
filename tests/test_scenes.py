import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from contam import scenes
from contam.index_real import DIGIT_SPLITS, digit_image
from contam.prompts import PROMPT_COLUMNS
from contam.seeds import image_seeds
from contam.scenes import Slots

SIZE = 16


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory) -> pd.DataFrame:
    """An index table of 300 real digits written as PNGs, 60 per split (every digit in every split)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("glyphs")
    rows = []
    for i in range(300):
        split = DIGIT_SPLITS[i % len(DIGIT_SPLITS)]
        label = int(digits.target[i])
        path = root / split / str(label) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        digit_image(digits.images[i], SIZE).save(path, format="PNG")
        rows.append((str(path), label, scenes.DIGIT_WORDS[label], split))
    return pd.DataFrame(rows, columns=["path", "label", "class_name", "split"])


COUNTS = {"train": 50, "control": 20, "test": 40, "validation": 10}


def test_vocabulary():
    assert list(scenes.COLOURS) == ["red", "green", "blue", "yellow"]
    assert len(set(scenes.COLOURS.values())) == 4
    assert all(max(c) == 255 and min(c) == 0 for c in scenes.COLOURS.values())
    assert scenes.DIGIT_WORDS[3] == "three" and len(scenes.DIGIT_WORDS) == 10
    assert all(scenes.INVERSE[scenes.INVERSE[r]] == r != scenes.INVERSE[r] for r in scenes.RELATIONS)


def test_compose_is_deterministic_and_numbered(glyphs):
    first = scenes.compose_scenes(glyphs, COUNTS, seed=7, first_id=100)
    again = scenes.compose_scenes(glyphs.sample(frac=1.0, random_state=3), COUNTS, seed=7, first_id=100)
    pd.testing.assert_frame_equal(first, again)
    other = scenes.compose_scenes(glyphs, COUNTS, seed=8, first_id=100)
    assert not first.drop(columns="captions").equals(other.drop(columns="captions"))
    assert list(first.columns) == scenes.SCENE_COLUMNS
    assert len(first) == sum(COUNTS.values())
    assert first["image_id"].dtype == np.int64
    assert list(first["image_id"]) == list(range(100, 100 + len(first)))
    # Split order is sorted by name, so ids do not depend on the dict's order.
    assert list(dict.fromkeys(first["split"])) == sorted(COUNTS)
    assert first.groupby("split").size().to_dict() == COUNTS
    assert all(len(c) == scenes.CAPTIONS_PER_SCENE for c in first["captions"])
    assert set(first["position"]) == {0, 1}
    assert set(first["relation"]) == set(scenes.RELATIONS)
    assert set(first["colour_a"]) == set(scenes.COLOURS) == set(first["colour_b"])


def test_splits_are_glyph_disjoint_and_digits_match(glyphs):
    frame = scenes.compose_scenes(glyphs, COUNTS, seed=1)
    split_of = dict(zip(glyphs["path"], glyphs["split"]))
    label_of = dict(zip(glyphs["path"], glyphs["label"]))
    used = {}
    for split, group in frame.groupby("split"):
        paths = set(group["glyph_a"]) | set(group["glyph_b"])
        assert {split_of[p] for p in paths} == {split}
        used[split] = paths
    splits = list(used)
    for i, s in enumerate(splits):
        for t in splits[i + 1 :]:
            assert not used[s] & used[t]
    test_glyphs = set(glyphs.loc[glyphs["split"] == "test", "path"])
    test_scenes = frame[frame["split"] == "test"]
    assert set(test_scenes["glyph_a"]) | set(test_scenes["glyph_b"]) <= test_glyphs
    assert all(label_of[p] == d for p, d in zip(frame["glyph_a"], frame["digit_a"]))
    assert all(label_of[p] == d for p, d in zip(frame["glyph_b"], frame["digit_b"]))


def test_glyph_use_is_balanced(glyphs):
    frame = scenes.compose_scenes(glyphs, {"train": 50}, seed=2)
    pool = glyphs.loc[glyphs["split"] == "train", "path"]
    uses = pd.concat([frame["glyph_a"], frame["glyph_b"]]).value_counts().reindex(pool, fill_value=0)
    # 100 draws over 60 glyphs: each is used once or twice, never 0 or 3 times.
    assert set(uses) == {1, 2}
    assert uses.sum() == 100


def test_caption_examples():
    listed = scenes.captions(3, "red", 7, "blue", "left of")
    assert listed[0] == "a red three left of a blue seven"
    assert "a blue seven to the right of a red three" in listed
    assert "there is a red three to the left of a blue seven" in listed
    assert "a picture of a blue seven right of a red three" in listed
    assert "a red three is left of a blue seven" in listed
    assert listed == scenes.captions(3, "red", 7, "blue", "left of")
    vertical = scenes.captions(3, "red", 7, "blue", "above")
    assert "a red three above a blue seven" in vertical and "a picture of a blue seven below a red three" in vertical
    assert all("left" not in c and "right" not in c for c in vertical)


def test_canonical_form():
    left = scenes.canonical(3, "red", 7, "blue", "left of")
    assert left == Slots(3, "red", 7, "blue", "horizontal")
    assert scenes.canonical(7, "blue", 3, "red", "right of") == left
    assert scenes.canonical(3, "red", 7, "blue", "below") == Slots(7, "blue", 3, "red", "vertical")
    with pytest.raises(ValueError, match="purple"):
        scenes.canonical(3, "purple", 7, "blue", "left of")


def test_every_caption_parses_back(glyphs):
    frame = scenes.compose_scenes(glyphs, COUNTS, seed=3)
    for row in frame.itertuples():
        truth = scenes.canonical(row.digit_a, row.colour_a, row.digit_b, row.colour_b, row.relation)
        inverse = scenes.canonical(row.digit_b, row.colour_b, row.digit_a, row.colour_a, scenes.INVERSE[row.relation])
        assert inverse == truth
        assert len(set(row.captions)) == scenes.CAPTIONS_PER_SCENE
        for caption in row.captions + scenes.captions(row.digit_b, row.colour_b, row.digit_a, row.colour_a, scenes.INVERSE[row.relation]):
            assert caption == caption.lower() and caption.replace(" ", "").isalpha()
            assert scenes.parse_caption(caption) == truth, caption


def test_every_combination_parses_back():
    for relation in scenes.RELATIONS:
        for colour in scenes.COLOURS:
            for digit in range(10):
                truth = scenes.canonical(digit, colour, 9 - digit, "green", relation)
                assert all(scenes.parse_caption(c) == truth for c in scenes.captions(digit, colour, 9 - digit, "green", relation))


def test_parse_is_tolerant():
    expected = Slots(3, "red", 7, "blue", "horizontal")
    assert scenes.parse_caption("  A Red three   LEFT of a blue Seven. ") == expected
    assert scenes.parse_caption("a blue seven\tto the right of a red three.") == expected
    assert scenes.parse_caption("A yellow eight on top of a green one") == Slots(8, "yellow", 1, "green", "vertical")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "garbage",
        "a red three left a blue seven",
        "a red three left of a blue",
        "a red three left of a blue seven seven",
        "a purple three left of a blue seven",
        "a red eleven left of a blue seven",
        "a red three left of blue seven",
        "a red three beside a blue seven",
        "a red three left of a blue seven and a green two",
        "red three left of a blue seven",
        "a red three, left of a blue seven",
        "a red three left of a blue seven!",
    ],
)
def test_parse_rejects_garbage_and_near_misses(text):
    assert scenes.parse_caption(text) is None


def test_parse_rejects_non_text():
    assert scenes.parse_caption(None) is None


def test_slot_accuracy_on_hand_made_cases():
    truth = [Slots(3, "red", 7, "blue", "horizontal")] * 4
    predicted = [
        "a red three left of a blue seven",  # all right
        "a blue seven right of a red three",  # all right, inverse phrasing
        "a red three left of a green seven",  # colour_2 wrong
        "three red left blue",  # unparsed: every slot wrong
    ]
    result = scenes.slot_accuracy(predicted, truth)
    assert result["n"] == 4
    assert result["parsed"] == 0.75
    assert result["all_slots"] == 0.5
    assert result["colour_2"] == 0.5
    assert result["digit_1"] == result["colour_1"] == result["digit_2"] == result["axis"] == 0.75
    assert all(type(v) is float for k, v in result.items() if k != "n")
    assert set(result) == set(scenes.SLOT_NAMES) | set(scenes.ORDER_FREE_NAMES) | {"all_slots", "parsed", "n"}
    # Order-free: (1 + 1 + 1 + 0) / 4 digits; glyphs (1 + 1 + 0.5 + 0) / 4.
    assert result["digits_any_order"] == 0.75 and result["glyphs_any_order"] == 0.625
    # The relation the wrong way round: every ordered slot but the axis wrong, both glyphs named.
    swapped = scenes.slot_accuracy(["a red three right of a blue seven"], [Slots(3, "red", 7, "blue", "horizontal")])
    assert swapped["digit_1"] == swapped["colour_1"] == swapped["digit_2"] == swapped["colour_2"] == 0.0
    assert swapped["digits_any_order"] == swapped["glyphs_any_order"] == swapped["axis"] == 1.0
    # A repeated digit counts once per glyph that has it.
    twice = scenes.slot_accuracy(["a red three left of a red three"], [Slots(3, "red", 7, "red", "horizontal")])
    assert twice["digits_any_order"] == twice["glyphs_any_order"] == 0.5
    vertical = scenes.slot_accuracy(["a red three above a blue seven"], [Slots(3, "red", 7, "blue", "horizontal")])
    assert vertical["axis"] == 0.0 and vertical["digit_1"] == 1.0 and vertical["all_slots"] == 0.0
    with pytest.raises(ValueError):
        scenes.slot_accuracy(["a red three above a blue seven"], [])


def test_twin_glyphs_keep_digits_and_use_the_pool(glyphs):
    frame = scenes.compose_scenes(glyphs, {"test": 40}, seed=4)
    pool = glyphs[glyphs["split"] == "control"]
    twins = scenes.twin_glyphs(frame, pool, seed=4, tag="control")
    assert list(twins.columns) == ["image_id", "glyph_a", "glyph_b"]
    assert list(twins["image_id"]) == list(frame["image_id"])
    label_of = dict(zip(pool["path"], pool["label"]))
    assert set(twins["glyph_a"]) | set(twins["glyph_b"]) <= set(pool["path"])
    assert [label_of[p] for p in twins["glyph_a"]] == list(frame["digit_a"])
    assert [label_of[p] for p in twins["glyph_b"]] == list(frame["digit_b"])
    pd.testing.assert_frame_equal(twins, scenes.twin_glyphs(frame, pool, seed=4, tag="control"))
    # Row order of the scenes does not change which scene gets which glyph.
    shuffled = scenes.twin_glyphs(frame.iloc[::-1], pool, seed=4, tag="control")
    pd.testing.assert_frame_equal(shuffled.iloc[::-1].reset_index(drop=True), twins)
    assert not twins.equals(scenes.twin_glyphs(frame, pool, seed=4, tag="other"))
    # Balanced per digit: the glyphs of one digit are used within one of each other.
    uses = pd.concat([twins["glyph_a"], twins["glyph_b"]]).value_counts()
    for digit in set(frame["digit_a"]) | set(frame["digit_b"]):
        counts = uses.reindex(pool.loc[pool["label"] == digit, "path"], fill_value=0)
        assert counts.max() - counts.min() <= 1


def test_twin_glyphs_name_a_missing_digit(glyphs):
    frame = scenes.compose_scenes(glyphs, {"test": 40}, seed=4)
    needed = int(frame["digit_a"].iloc[0])
    pool = glyphs[(glyphs["split"] == "control") & (glyphs["label"] != needed)]
    with pytest.raises(ValueError, match=f"digit {needed} \\({scenes.DIGIT_WORDS[needed]}\\)"):
        scenes.twin_glyphs(frame, pool, seed=4, tag="control")


def test_glyph_prompts(glyphs):
    frame = scenes.compose_scenes(glyphs, {"train": 12, "test": 5}, seed=5, first_id=10)
    table = scenes.glyph_prompts(frame.iloc[::-1], base_seed=99)
    assert list(table.columns) == PROMPT_COLUMNS
    assert len(table) == 2 * len(frame)
    assert list(table["row"]) == list(range(len(table)))
    assert list(table["seed"]) == list(image_seeds(99, np.arange(len(table))))
    assert list(table["image_id"]) == [i for i in frame["image_id"] for _ in range(2)]
    assert list(table["caption_id"]) == [0, 1] * len(frame)
    expected_labels = [d for pair in zip(frame["digit_a"], frame["digit_b"]) for d in pair]
    assert list(table["label"]) == expected_labels
    assert table["prompt"].iloc[0] == f"photo of the digit {scenes.DIGIT_WORDS[expected_labels[0]]}"
    assert list(table["class_name"]) == [scenes.DIGIT_WORDS[d] for d in expected_labels]
    # A row's seed depends only on the row: a prefix of the scenes gives the same seeds.
    prefix = scenes.glyph_prompts(frame.iloc[:4], base_seed=99)
    assert list(prefix["seed"]) == list(table["seed"][:8])


def _grey_square(value: int, size: int = 4) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


@pytest.mark.parametrize(
    "relation,position,cell_a,cell_b",
    [
        ("left of", 0, (0, 0), (0, 1)),
        ("left of", 1, (1, 0), (1, 1)),
        ("right of", 0, (0, 1), (0, 0)),
        ("right of", 1, (1, 1), (1, 0)),
        ("above", 0, (0, 0), (1, 0)),
        ("above", 1, (0, 1), (1, 1)),
        ("below", 0, (1, 0), (0, 0)),
        ("below", 1, (1, 1), (0, 1)),
    ],
)
def test_render_scene_placement(relation, position, cell_a, cell_b):
    scene = scenes.render_scene(_grey_square(255), _grey_square(255), "red", "blue", relation, position)
    assert scene.shape == (8, 8, 3) and scene.dtype == np.uint8
    for row in range(2):
        for col in range(2):
            block = scene[row * 4 : (row + 1) * 4, col * 4 : (col + 1) * 4]
            expected = (255, 0, 0) if (row, col) == cell_a else (0, 0, 255) if (row, col) == cell_b else (0, 0, 0)
            assert (block == expected).all(), (row, col)


def test_render_scene_colour_arithmetic():
    glyph = np.zeros((16, 16, 3), dtype=np.uint8)
    glyph[5, 6] = 100
    glyph[7, 8] = 128
    scene = scenes.render_scene(glyph, glyph, "yellow", "green", "left of", 1)
    # Glyph a is in the bottom-left cell: offset (16, 0).
    assert tuple(scene[16 + 5, 6]) == (100, 100, 0)  # round(255 * 100 / 255)
    assert tuple(scene[16 + 7, 16 + 8]) == (0, 128, 0)
    assert scene[:16].max() == 0
    # A colour that is not saturated shows the rounding, checked against exact fractions.
    tinted = scenes.colourise(glyph, (200, 1, 0))
    assert tinted.dtype == np.uint8 and tinted.shape == glyph.shape
    assert tuple(tinted[7, 8]) == (100, 1, 0)  # round(200 * 128 / 255) = round(100.39); round(128 / 255) = round(0.502) = 1
    assert tuple(tinted[5, 6]) == (78, 0, 0)  # round(200 * 100 / 255) = round(78.43); round(100 / 255) = round(0.39) = 0
    levels = np.arange(256, dtype=np.uint8)[None, :, None].repeat(3, axis=2)
    for c in (1, 37, 128, 200, 254):
        exact = [int(Fraction(c * g, 255) + Fraction(1, 2)) for g in range(256)]
        assert scenes.colourise(levels, (c, c, c))[0, :, 0].tolist() == exact


def test_render_scene_rejects_mismatched_glyphs():
    with pytest.raises(ValueError):
        scenes.render_scene(_grey_square(10, 4), _grey_square(10, 5), "red", "blue", "left of", 0)
    with pytest.raises(ValueError):
        scenes.render_scene(_grey_square(10), _grey_square(10), "red", "blue", "left of", 2)


def test_render_scenes_writes_resumes_and_skips(glyphs, tmp_path):
    frame = scenes.compose_scenes(glyphs, {"validation": 6}, seed=6)
    out = tmp_path / "scenes"
    first = scenes.render_scenes(frame, out, progress=False)
    assert first.attrs["rendered"] == 6 and first.attrs["skipped"] == 0
    assert list(first["path"]) == [str(out / f"{i}.png") for i in frame["image_id"]]
    for row in first.itertuples():
        with Image.open(row.path) as image:
            assert image.size == (2 * SIZE, 2 * SIZE) and image.mode == "RGB"
            stored = np.asarray(image)
        glyph_a = np.asarray(Image.open(row.glyph_a).convert("RGB"))
        glyph_b = np.asarray(Image.open(row.glyph_b).convert("RGB"))
        assert np.array_equal(stored, scenes.render_scene(glyph_a, glyph_b, row.colour_a, row.colour_b, row.relation, row.position))

    # Resume: existing complete files are not rewritten (mtimes set in the past stay put).
    old = 1_000_000_000
    for path in first["path"]:
        os.utime(path, (old, old))
    Path(first["path"].iloc[0]).unlink()
    second = scenes.render_scenes(frame, out, progress=False)
    assert second.attrs["rendered"] == 1 and second.attrs["resumed"] == 5
    assert [os.stat(p).st_mtime for p in second["path"][1:]] == [old] * 5
    assert os.stat(second["path"].iloc[0]).st_mtime > old

    # A corrupt glyph: its scenes are skipped and counted, the rest rendered.
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    broken = frame.copy()
    broken.loc[broken.index[[1, 3]], "glyph_a"] = str(bad)
    fresh = tmp_path / "fresh"
    third = scenes.render_scenes(broken, fresh, progress=False)
    assert third.attrs["skipped"] == 2 and third.attrs["rendered"] == 4
    assert list(third["image_id"]) == [i for k, i in enumerate(frame["image_id"]) if k not in (1, 3)]
    assert sorted(p.name for p in fresh.glob("*.png")) == sorted(f"{i}.png" for i in third["image_id"])
    assert all(str(bad) in str(example) for example in third.attrs["skipped_examples"])


def test_real_and_generated_glyphs_give_alike_scenes(glyphs, tmp_path):
    from sklearn.datasets import load_digits

    # A "generated" glyph stored like a real one: another digit_image output.
    levels = load_digits().images[1000]
    generated = tmp_path / "generated.png"
    digit_image(np.clip(levels[::-1] + 1, 0, 16), SIZE).save(generated, format="PNG")
    real = scenes.compose_scenes(glyphs, {"test": 3}, seed=9)
    fake = real.assign(glyph_a=str(generated), glyph_b=str(generated))
    rendered_real = scenes.render_scenes(real, tmp_path / "real", progress=False)
    rendered_fake = scenes.render_scenes(fake, tmp_path / "fake", progress=False)
    for a, b in zip(rendered_real["path"], rendered_fake["path"]):
        with Image.open(a) as one, Image.open(b) as two:
            assert (one.size, one.mode, one.format) == (two.size, two.mode, two.format) == ((2 * SIZE, 2 * SIZE), "RGB", "PNG")
            assert np.asarray(one).dtype == np.asarray(two).dtype == np.uint8
            assert not np.array_equal(np.asarray(one), np.asarray(two))
