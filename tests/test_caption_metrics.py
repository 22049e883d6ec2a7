"""Tests of contam.caption_metrics: the COCO caption metrics wrapper.

PTB tests need Java and are skipped without it. METEOR's real Java process
(~10-17 s to start) is started once, in the one test marked slow; the other
METEOR tests use a missing Java or a stand-in process.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from contam import caption_metrics as cm

HAS_JAVA = cm.java_available()
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="PTBTokenizer and METEOR need `java` on PATH")
TOKENIZERS = [pytest.param("ptb", marks=needs_java), "whitespace"]

# Several images, several references each, predictions partly wrong: a case
# where every metric lands strictly between 0 and its maximum.
REFERENCES = {
    3: ["A red three, left of a blue seven.", "a red 3 to the left of a blue 7", "Two digits: a red three and a blue seven."],
    1: ["A man riding a horse on the beach.", "A person rides a brown horse along the shore."],
    7: ["Two dogs play with a ball in the park.", "Dogs chasing a red ball on the grass.", "two dogs and a ball"],
    5: ["A plate of pasta with tomato sauce."],
}
PREDICTIONS = {
    3: "a red three left of a green seven",
    1: "a man riding a horse on a beach",
    7: "a cat sleeping on a sofa",
    5: "a plate of pasta with sauce",
}


def _fake_java_on_path(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    # An executable named java is all shutil.which looks for; PATH holds nothing else.
    java = folder / "java"
    java.write_text("#!/bin/sh\nexit 1\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(folder))


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_identical_captions_score_one(tokenizer: str) -> None:
    references = {i: [caption] for i, caption in enumerate(["A cat sits on the mat.", "Two dogs run, in the park!", "a red three left of a blue seven"])}
    predictions = {i: captions[0] for i, captions in references.items()}
    scores = cm.coco_scores(predictions, references, tokenizer)
    for key in cm.BLEU_KEYS:
        assert scores[key] == pytest.approx(1.0, abs=1e-6), key
    assert scores["ROUGE_L"] == pytest.approx(1.0, abs=1e-12)
    assert scores["tokenizer"] == tokenizer
    assert scores["n_images"] == 3
    assert scores["per_image"]["Bleu_4"] == pytest.approx([1.0] * 3, abs=1e-6)
    assert len(scores["per_image"]["CIDEr"]) == 3


@needs_java
def test_matches_pycocoevalcap_called_directly(capsys: pytest.CaptureFixture[str]) -> None:
    ids = sorted(REFERENCES)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in REFERENCES[i]] for i in ids})
    res = tokenizer.tokenize({i: [{"caption": PREDICTIONS[i]}] for i in ids})
    bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, cider_per_image = Cider().compute_score(gts, res)
    capsys.readouterr()

    scores = cm.coco_scores(PREDICTIONS, REFERENCES, "ptb")
    # Same tokens, same scorers, same image order: the same floats, exactly.
    assert [scores[key] for key in cm.BLEU_KEYS] == list(bleu)
    assert scores["ROUGE_L"] == rouge
    assert scores["CIDEr"] == cider
    assert scores["per_image"]["Bleu_4"] == list(bleu_per_image[3])
    assert scores["per_image"]["CIDEr"] == list(cider_per_image)
    # Non-trivial: partly wrong predictions score strictly inside (0, 1) ...
    assert 0 < scores["Bleu_4"] < scores["Bleu_1"] < 1
    assert 0 < scores["ROUGE_L"] < 1
    # ... and per-image lists follow sorted ids: image 7 (a cat, not dogs) is worst.
    assert min(scores["per_image"]["CIDEr"]) == scores["per_image"]["CIDEr"][ids.index(7)]
    # pycocoevalcap's prints (BLEU's ratio) are silenced.
    assert capsys.readouterr().out == ""


@needs_java
def test_whitespace_tokenizer_matches_ptb() -> None:
    captions = {
        0: ["A red three, left of a blue seven."],
        1: ["Don't look! The man's dog (black-and-white) isn't here..."],
        2: ['A "quoted" word; and 3.5 cm -- e.g. at 5:30 p.m.?'],
        3: ["they'll see it's 1,000 birds: can't stop"],
        4: [""],
        5: ["two\nlines"],
    }
    ptb = cm.tokenize(captions, "ptb")
    assert ptb[0] == ["a red three left of a blue seven"]
    assert cm.tokenize(captions, "whitespace") == ptb


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_empty_and_multiline_captions_keep_their_place(tokenizer: str) -> None:
    # PTBTokenizer pairs output lines with captions by position: an empty or
    # multi-line caption must not shift the others.
    tokens = cm.tokenize({1: ["First one.", ""], 2: ["second\r\nline", "Third!"], 3: [""]}, tokenizer)
    assert tokens == {1: ["first one", ""], 2: ["second line", "third"], 3: [""]}


def test_choose_tokenizer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert cm.choose_tokenizer("whitespace") == "whitespace"
    with pytest.raises(ValueError, match="auto"):
        cm.choose_tokenizer("spacy")

    _fake_java_on_path(monkeypatch, tmp_path)
    assert cm.java_available()
    assert cm.choose_tokenizer("auto") == "ptb"
    assert cm.choose_tokenizer("ptb") == "ptb"

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert not cm.java_available()
    assert cm.choose_tokenizer("auto") == "whitespace"
    with pytest.raises(RuntimeError, match="Java"):
        cm.choose_tokenizer("ptb")


def test_meteor_without_java_is_none_for_each_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    def no_meteor() -> None:
        raise AssertionError("Meteor must not be started without Java")

    monkeypatch.setattr(cm, "Meteor", no_meteor)
    start = time.perf_counter()
    scores = cm.meteor_scores({"a": PREDICTIONS, "b": dict(PREDICTIONS)}, REFERENCES, "ptb")
    assert scores == {"a": None, "b": None}
    assert time.perf_counter() - start < 1.0


class _EchoMeteor(Meteor):
    """Meteor's real code talking to an echo process instead of Java: its EVAL
    reply is not a number, so compute_score fails while holding Meteor's lock,
    the failure mode that would leave the process running and __del__ blocked."""

    instances: list["_EchoMeteor"] = []

    def __init__(self) -> None:
        import subprocess
        import threading

        echo = "import sys\nfor line in sys.stdin:\n    sys.stdout.write(line)\n    sys.stdout.flush()\n"
        self.meteor_p = subprocess.Popen([sys.executable, "-c", echo], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lock = threading.Lock()
        _EchoMeteor.instances.append(self)


def test_meteor_process_ends_on_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_java_on_path(monkeypatch, tmp_path)
    _EchoMeteor.instances.clear()
    monkeypatch.setattr(cm, "Meteor", _EchoMeteor)
    with pytest.raises(ValueError):
        cm.meteor_scores({"a": PREDICTIONS}, REFERENCES, "whitespace")
    (meteor,) = _EchoMeteor.instances
    assert meteor.meteor_p.poll() is not None  # the process was ended
    assert not meteor.lock.locked()  # so Meteor.__del__ cannot block on it
    meteor.__del__()


def test_mismatched_image_ids_raise() -> None:
    predictions = {i: PREDICTIONS[i] for i in (1, 3, 5)}
    with pytest.raises(ValueError, match=r"\b7\b"):
        cm.coco_scores(predictions, REFERENCES, "whitespace")
    with pytest.raises(ValueError, match=r"\b42\b"):
        cm.coco_scores({**PREDICTIONS, 42: "extra"}, REFERENCES, "whitespace")
    # checked before looking for Java, so the error does not depend on the machine
    with pytest.raises(ValueError, match=r"run 'b'.*\b7\b"):
        cm.meteor_scores({"a": PREDICTIONS, "b": predictions}, REFERENCES, "whitespace")


def test_results_json_round_trip(tmp_path: Path) -> None:
    predictions = {np.int64(7): "a cat", 3: "a red three", 5: "pasta"}
    results = cm.results_json(predictions)
    assert results == [{"image_id": 3, "caption": "a red three"}, {"image_id": 5, "caption": "pasta"}, {"image_id": 7, "caption": "a cat"}]
    assert all(type(r["image_id"]) is int for r in results)

    path = tmp_path / "out" / "captions_results.json"
    cm.write_results(predictions, path)
    assert json.loads(path.read_text()) == results
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    with pytest.raises(TypeError):
        cm.results_json({1.5: "a float id"})


def test_results_load_with_pycocotools() -> None:
    ids = list(REFERENCES)
    references = cm.references_coco(ids, [REFERENCES[i] for i in ids], paths=[f"img/{i}.png" for i in ids])
    assert references["type"] == "captions"
    assert [image["id"] for image in references["images"]] == sorted(ids)
    assert [a["id"] for a in references["annotations"]] == list(range(1, 1 + sum(map(len, REFERENCES.values()))))
    # Deterministic: the input order does not change the dict.
    back = ids[::-1]
    assert cm.references_coco(back, [REFERENCES[i] for i in back], paths=[f"img/{i}.png" for i in back]) == references

    results = cm.results_json(PREDICTIONS)
    coco, coco_results = cm.load_results_with_pycocotools(references, results)
    assert sorted(coco.getImgIds()) == sorted(ids)
    assert len(coco.getAnnIds()) == len(references["annotations"])
    assert {i: [a["caption"] for a in coco_results.imgToAnns[i]] for i in ids} == {i: [PREDICTIONS[i]] for i in ids}
    assert "id" not in results[0]  # the caller's list is not modified by loadRes

    # pycocotools itself rejects results for images not in the dataset.
    with pytest.raises(AssertionError, match="do not correspond"):
        cm.load_results_with_pycocotools(references, results + [{"image_id": 999, "caption": "unknown image"}])
