"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) through pycocoevalcap.

Tokenizer. The COCO metrics are defined on captions tokenized by pycocoevalcap's
PTBTokenizer: Stanford CoreNLP's Penn Treebank tokenizer, run with ``java``,
lower-casing, followed by dropping the punctuation tokens in pycocoevalcap's
``PUNCTUATIONS`` list. Published COCO numbers use it, so ``"ptb"`` is the tokenizer
to report. Java is not on every machine, so ``"whitespace"`` is a pure-Python
fallback that mimics PTB's output where that is simple: it lower-cases, splits
punctuation off words, splits the clitics ``n't 's 're 've 'll 'd 'm`` and
``cannot`` as PTB does, keeps abbreviations (``e.g.``), numbers (``3.5``, ``5:30``)
and hyphenated words whole, writes brackets as PTB's lower-cased ``-lrb-``-style
tokens (which PTBTokenizer keeps, because its list holds them upper-cased) and then
drops the same punctuation tokens. It differs from PTB on rarer text (abbreviations
without an inner period such as ``mr.``, ``gonna``, Unicode quotes, dashes and combining accents), so
scores from the two tokenizers are close but not interchangeable; every score
records which tokenizer made it. :func:`choose_tokenizer` maps the config setting
(``auto``/``ptb``/``whitespace``) to one of the two.

METEOR is scored per study, not per run. pycocoevalcap's Meteor starts a Java
process that loads a 60 MB paraphrase table (about 17 s per start), so the
workflow scores METEOR for all runs in one job with one Meteor instance
(:func:`meteor_scores`), while BLEU, ROUGE-L and CIDEr, which are pure Python and
fast, are scored per run (:func:`coco_scores`). Without Java, METEOR is None for
every run and the caller records why. SPICE is left out: it needs a separate
download of Stanford CoreNLP models.

Each scorer is called on its own rather than through ``COCOEvalCap``, whose
``evaluate()`` always starts METEOR and SPICE. CIDEr takes its document
frequencies from the references of the images scored, so CIDEr values of runs are
comparable only when the runs are scored on the same images.

:func:`results_json` and :func:`write_results` write predictions in the COCO
captions results format, and :func:`load_results_with_pycocotools` loads them
against a :func:`references_coco` dataset with pycocotools, which checks the format.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import operator
import os
import re
import shutil
import subprocess
import threading
from typing import Any, Hashable, Mapping

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, PTBTokenizer
from pycocotools.coco import COCO

from contam.io import atomic_path

TOKENIZERS = ("ptb", "whitespace")
TOKENIZER_SETTINGS = ("auto", *TOKENIZERS)
BLEU_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")

# pycocoevalcap's own list, so the fallback drops exactly the tokens PTB mode drops.
_DROPPED = frozenset(PUNCTUATIONS)
# PTBTokenizer writes brackets as -LRB- etc.; with -lowerCase they come out lower
# case and so are *not* in PUNCTUATIONS: PTB mode keeps them, and so do we.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# A double quote becomes `` or '' in PTB, both dropped.
_QUOTES = {'"': "''"}
_CLITIC = re.compile(r"(\w)(n't|'(?:s|re|ve|ll|d|m))\b")
_CANNOT = re.compile(r"\bcannot\b")
_TOKEN = re.compile(
    r"""
    n't | '(?:s|re|ve|ll|d|m)\b         # clitics split off by _CLITIC
    | (?:[^\W\d_]\.){2,}                # abbreviations: e.g. u.s.a. p.m.
    | \d+(?:[.,:]\d+)+                  # numbers: 3.5 1,000 5:30
    | [@\#]?\w+(?:[-'/&.]\w+)*          # words, black-and-white, a/b, o'clock
    | \.{2,} | -{2,} | [!?]+            # runs PTB keeps as one token
    | \S                                # any other character on its own
    """,
    re.VERBOSE,
)


def java_available() -> bool:
    """Whether a ``java`` executable is on PATH (PTBTokenizer and METEOR need it)."""
    return shutil.which("java") is not None


def choose_tokenizer(setting: str) -> str:
    """Map a config setting to a tokenizer: ``auto`` is ``ptb`` when Java exists,
    else ``whitespace``; ``ptb`` without Java is an error, not a silent fallback."""
    if setting not in TOKENIZER_SETTINGS:
        raise ValueError(f"caption tokenizer must be one of {TOKENIZER_SETTINGS}, not {setting!r}")
    if setting == "auto":
        return "ptb" if java_available() else "whitespace"
    if setting == "ptb" and not java_available():
        raise RuntimeError(
            "caption tokenizer 'ptb' needs Java (pycocoevalcap runs Stanford's PTBTokenizer with `java`), "
            "but no `java` is on PATH; install a Java runtime or set the tokenizer to 'whitespace' or 'auto'"
        )
    return setting


def _one_line(caption: str) -> str:
    # PTBTokenizer passes captions one per line and pairs output lines with input
    # captions by position; any line break (\r, \u2028, ...) inside a caption would
    # shift every later caption, so all whitespace runs become one space.
    return " ".join(caption.split())


def whitespace_tokenize_caption(caption: str) -> str:
    """Tokenize one caption without Java, mimicking PTBTokenizer + PUNCTUATIONS."""
    text = _one_line(caption).lower()
    text = _CANNOT.sub("can not", text)
    text = _CLITIC.sub(r"\1 \2", text)
    tokens = []
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        token = _BRACKETS.get(token, _QUOTES.get(token, token))
        if token not in _DROPPED:
            tokens.append(token)
    return " ".join(tokens)


def _ptb_tokenize(captions: Mapping[Hashable, list[str]]) -> dict[Hashable, list[str]]:
    # Empty captions are kept out of Java's input: an empty last line can vanish
    # from its output, which would drop a caption. PTB gives "" for them anyway.
    sent = {key: [{"caption": _one_line(c)} for c in caps if _one_line(c)] for key, caps in captions.items()}
    sent = {key: caps for key, caps in sent.items() if caps}
    tokenized = PTBTokenizer().tokenize(sent) if sent else {}
    out: dict[Hashable, list[str]] = {}
    for key, caps in captions.items():
        done = iter(tokenized.get(key, []))
        out[key] = [next(done, None) if _one_line(c) else "" for c in caps]
        if None in out[key] or next(done, None) is not None:
            # PTBTokenizer zips output lines with captions; a count mismatch means
            # captions were paired with the wrong tokens, so refuse to score.
            raise RuntimeError(f"PTBTokenizer returned a different number of captions for key {key!r}")
    return out


def _tokenize_any(captions: Mapping[Hashable, list[str]], tokenizer: str) -> dict[Hashable, list[str]]:
    for key, caps in captions.items():
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise TypeError(f"captions of {key!r} must be a list of str, got {caps!r}")
    if tokenizer == "ptb":
        # One Java start for all captions; PTBTokenizer's own prints are none, but
        # Java logs one line ("PTBTokenizer tokenized ...") to stderr.
        return _ptb_tokenize(captions)
    if tokenizer == "whitespace":
        return {key: [whitespace_tokenize_caption(c) for c in caps] for key, caps in captions.items()}
    raise ValueError(f"tokenizer must be one of {TOKENIZERS}, not {tokenizer!r} (see choose_tokenizer)")


def tokenize(captions: dict[int, list[str]], tokenizer: str) -> dict[int, list[str]]:
    """Tokenize ``{image_id: [caption, ...]}`` with ``"ptb"`` or ``"whitespace"``.

    Returns the same keys with each caption as space-joined lower-case tokens,
    punctuation dropped, as pycocoevalcap's scorers expect.
    """
    return _tokenize_any(captions, tokenizer)  # type: ignore[return-value]


def _check_ids(predictions: Mapping[int, str], references: Mapping[int, list[str]], what: str = "predictions") -> list[int]:
    """Sorted image ids, after checking both sides have the same ids and usable values."""
    missing = sorted(set(references) - set(predictions), key=repr)
    extra = sorted(set(predictions) - set(references), key=repr)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} reference image ids have no prediction, e.g. {missing[:5]}")
        if extra:
            parts.append(f"{len(extra)} predicted image ids have no references, e.g. {extra[:5]}")
        raise ValueError(f"{what} and references cover different images: " + "; ".join(parts))
    if not references:
        raise ValueError("no images to score")
    for image_id in references:
        if not isinstance(predictions[image_id], str):
            raise TypeError(f"prediction for image {image_id!r} must be a str, got {predictions[image_id]!r}")
        if not references[image_id]:
            raise ValueError(f"image {image_id!r} has no reference captions")
    return sorted(references)


def coco_scores(predictions: dict[int, str], references: dict[int, list[str]], tokenizer: str) -> dict[str, Any]:
    """BLEU-1..4, ROUGE-L and CIDEr of one run's captions (one per image).

    Returns ``Bleu_1``..``Bleu_4``, ``ROUGE_L``, ``CIDEr`` (floats), ``tokenizer``,
    ``n_images`` and ``per_image`` ``{"CIDEr": [...], "Bleu_4": [...]}`` in sorted
    image-id order, for bootstrapping.
    """
    ids = _check_ids(predictions, references)
    # One tokenizer call (one Java start in PTB mode) for references and predictions.
    tokens = _tokenize_any({**{("ref", i): references[i] for i in ids}, **{("pred", i): [predictions[i]] for i in ids}}, tokenizer)
    # Dicts in sorted id order: the scorers return per-image lists in key order.
    gts = {i: tokens[("ref", i)] for i in ids}
    res = {i: tokens[("pred", i)] for i in ids}
    # BleuScorer prints its length ratio unless verbose=0; the others may print in
    # other versions, so all run with stdout captured.
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, _ = Rouge().compute_score(gts, res)
        cider, cider_per_image = Cider().compute_score(gts, res)
    scores: dict[str, Any] = {key: float(value) for key, value in zip(BLEU_KEYS, bleu)}
    scores["ROUGE_L"] = float(rouge)
    scores["CIDEr"] = float(cider)
    scores["tokenizer"] = tokenizer
    scores["n_images"] = len(ids)
    scores["per_image"] = {
        "CIDEr": [float(value) for value in cider_per_image],
        "Bleu_4": [float(value) for value in bleu_per_image[3]],
    }
    return scores


def _close_meteor(meteor: Meteor) -> None:
    """End Meteor's Java process, even when compute_score failed holding its lock."""
    process = meteor.meteor_p
    for stream in (process.stdin, process.stdout, process.stderr):
        with contextlib.suppress(OSError, ValueError):
            if stream is not None:
                stream.close()
    if process.poll() is None:
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    # Meteor.__del__ acquires the lock before killing the (now dead) process; a
    # compute_score that raised leaves it held, and __del__ would then block forever.
    meteor.lock = threading.Lock()


def meteor_scores(runs: dict[str, dict[int, str]], references: dict[int, list[str]], tokenizer: str) -> dict[str, float | None]:
    """Corpus METEOR of each run, all with one Meteor (one Java start, ~17 s).

    Every run must cover exactly the reference images (checked first, with or
    without Java). Without Java every value is None; the caller records why.
    """
    for name, predictions in runs.items():
        _check_ids(predictions, references, what=f"run {name!r}")
    if not java_available():
        return {name: None for name in runs}
    if not runs:
        return {}
    ids = sorted(references)
    captions: dict[Hashable, list[str]] = {("ref", i): references[i] for i in ids}
    for name, predictions in runs.items():
        captions.update({(name, "pred", i): [predictions[i]] for i in ids})
    tokens = _tokenize_any(captions, tokenizer)
    # Meteor's line protocol separates fields with '|||'; it strips them from the
    # hypothesis only, so strip them from the references too.
    gts = {i: [ref.replace("|||", "") for ref in tokens[("ref", i)]] for i in ids}
    meteor = Meteor()
    try:
        scores: dict[str, float | None] = {}
        for name in runs:
            res = {i: tokens[(name, "pred", i)] for i in ids}
            score, _ = meteor.compute_score(gts, res)
            scores[name] = float(score)
        return scores
    finally:
        _close_meteor(meteor)


def results_json(predictions: dict[int, str]) -> list[dict[str, Any]]:
    """COCO captions results ``[{"image_id": int, "caption": str}, ...]`` by image id."""
    results = []
    for image_id in sorted(predictions):
        caption = predictions[image_id]
        if not isinstance(caption, str):
            raise TypeError(f"prediction for image {image_id!r} must be a str, got {caption!r}")
        # operator.index accepts numpy integers but not floats or strings, so the
        # file holds JSON integers that match the dataset's image ids.
        results.append({"image_id": operator.index(image_id), "caption": caption})
    return results


def write_results(predictions: dict[int, str], path: str | os.PathLike) -> None:
    """Write :func:`results_json` atomically (json without ``default=str``, unlike
    ``contam.io.write_json``, so a non-JSON value fails instead of becoming a string)."""
    text = json.dumps(results_json(predictions), indent=1, ensure_ascii=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def references_coco(image_ids: list[int], captions: list[list[str]], paths: list[str] | None = None) -> dict[str, Any]:
    """A COCO captions-format dataset of the references.

    Images and annotations are in image-id order and annotation ids count from 1
    in that order, so the same references give the same dict whatever the input
    order. ``file_name`` is the image's path when given, else its id.
    """
    if len(captions) != len(image_ids) or (paths is not None and len(paths) != len(image_ids)):
        raise ValueError("image_ids, captions and paths must have the same length")
    ids = [operator.index(i) for i in image_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("image ids must be unique")
    order = sorted(range(len(ids)), key=lambda k: ids[k])
    images, annotations = [], []
    for k in order:
        if not captions[k]:
            raise ValueError(f"image {ids[k]} has no reference captions")
        images.append({"id": ids[k], "file_name": str(paths[k]) if paths is not None else str(ids[k])})
        for caption in captions[k]:
            annotations.append({"id": len(annotations) + 1, "image_id": ids[k], "caption": caption})
    return {
        "info": {"description": "reference captions (contam.caption_metrics.references_coco)"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "type": "captions",
    }


def load_results_with_pycocotools(references: dict[str, Any], results: list[dict[str, Any]]) -> tuple[COCO, COCO]:
    """Load a references dataset and a results list with pycocotools.

    ``COCO.loadRes`` asserts that the results are a list whose image ids are all
    in the dataset (AssertionError otherwise); inputs are copied, since pycocotools
    adds ids to the results it loads.
    """
    if not isinstance(results, list) or not results:
        # loadRes would fail on results[0] with an IndexError.
        raise ValueError("results must be a non-empty list of {'image_id', 'caption'} dicts")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(references)
        coco.createIndex()
        coco_results = coco.loadRes(copy.deepcopy(results))
    return coco, coco_results
