import json

import numpy as np
import pandas as pd

from contam import prompts, seeds

CLASSES = pd.DataFrame({"label": [0, 1, 2], "folder": ["n01", "n02", "n03"], "names": ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark"]})


def test_image_seed_depends_only_on_base_and_row():
    rows = np.arange(1000)
    all_at_once = seeds.image_seeds(42, rows)
    one_by_one = np.array([seeds.image_seeds(42, np.array([r]))[0] for r in rows[::97]])
    assert np.array_equal(all_at_once[::97], one_by_one)
    assert len(set(all_at_once.tolist())) == 1000
    assert (all_at_once >= 0).all()
    assert not np.array_equal(all_at_once, seeds.image_seeds(43, rows))


def test_derive_seed_is_stable():
    assert seeds.derive_seed(0, "mix", "a") != seeds.derive_seed(0, "mix", "b")
    # Pinned values: splits, mixes and images are named by these seeds, so they
    # must be the same on every platform and in every version.
    assert seeds.derive_seed(0, "mix", "real") == 3605962952600101083
    assert seeds.derive_seed(7, "split", 3) == 4680538368134917608
    assert list(seeds.image_seeds(42, [0, 1, 2])) == [6531800695988753539, 1557026809635651381, 4685486509030949016]


def test_plain_prompts_use_first_synonym():
    table = prompts.plain_prompts(CLASSES, "photo of {name}", per_class=2, base_seed=42)
    assert list(table["prompt"]) == ["photo of tench"] * 2 + ["photo of goldfish"] * 2 + ["photo of great white shark"] * 2
    assert list(table["row"]) == list(range(6))
    assert list(table["label"]) == [0, 0, 1, 1, 2, 2]
    assert list(table["seed"]) == list(seeds.image_seeds(42, np.arange(6)))
    assert list(table.columns) == prompts.PROMPT_COLUMNS


def test_custom_template():
    table = prompts.plain_prompts(CLASSES, "a photo of a {name}", per_class=1, base_seed=0)
    assert table["prompt"].iloc[1] == "a photo of a goldfish"


def test_complex_prompts_follow_the_papers_grammar():
    vocab = prompts.complex_vocabulary()
    assert "blured" in vocab["a"]  # spelled as in the authors' script
    table = prompts.complex_prompts(CLASSES, per_class=200, base_seed=7)
    again = prompts.complex_prompts(CLASSES, per_class=200, base_seed=7)
    pd.testing.assert_frame_equal(table, again)
    assert not table["prompt"].equals(prompts.complex_prompts(CLASSES, per_class=200, base_seed=8)["prompt"])
    for prompt, label in zip(table["prompt"], table["label"]):
        assert prompt == prompt.strip() and "  " not in prompt
        names = prompts.synonyms(CLASSES["names"][label])
        assert any(f"of {n}" in prompt for n in names)
        assert any(f"{b} of" in prompt for b in vocab["b"])
    # Every synonym and every word list entry gets drawn.
    tench = " ".join(table[table["label"] == 0]["prompt"])
    assert "Tinca tinca" in tench and "of tench" in tench
    assert any(p.startswith("hdr ") for p in table["prompt"])
    assert any(p.endswith("taken with iPhone") for p in table["prompt"])


def test_coco_prompts_keep_image_and_caption_ids(tmp_path):
    captions = {
        "info": {}, "licenses": [],
        "images": [{"id": 9, "file_name": "9.jpg"}, {"id": 3, "file_name": "3.jpg"}],
        "annotations": [
            {"id": 30, "image_id": 9, "caption": "A dog on a  couch."},
            {"id": 11, "image_id": 3, "caption": "Two cats.\n"},
            {"id": 12, "image_id": 3, "caption": "Cats sleeping."},
        ],
    }
    path = tmp_path / "captions_train2017.json"
    path.write_text(json.dumps(captions))
    table = prompts.build_prompts({"style": "coco", "captions": str(path)}, None, base_seed=42)
    assert list(table["prompt"]) == ["Two cats.", "Cats sleeping.", "A dog on a couch."]
    assert list(table["image_id"]) == [3, 3, 9]
    assert list(table["caption_id"]) == [11, 12, 30]
    assert table["label"].isna().all()
