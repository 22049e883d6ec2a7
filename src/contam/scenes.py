"""Captioned digit scenes: an offline world for the image-captioning study.

A scene is a canvas of 2x2 cells (each the size of one glyph, so 16x16 glyphs
make a 32x32 RGB scene) holding two digit glyphs, each tinted one of four
colours, in one of four relations: glyph a is "left of", "right of", "above" or
"below" glyph b. Horizontal pairs share a row (``position`` = which row) and
vertical pairs share a column (``position`` = which column). Each scene has
five captions from a small template grammar, and :func:`parse_caption` reads a
caption back into its five slots (two digits, two colours, the axis), so a
captioning model is scored by slot accuracy rather than by n-gram overlap.

Why splits are glyph-disjoint: a scene of split s is built only from glyphs of
split s. The generator is fit on ``train`` glyphs only, so the glyphs of the
test scenes are never seen by the generator nor by the captioner; a captioner
that scores well on test has learnt to read digits, colours and relations, not
to recognise particular glyph images.

Why rendering is shared: real and generated glyphs are stored alike (16x16 RGB
on the same value grid, see contam.index_real.stored_like_a_digit) and the same
:func:`render_scene` turns either into a scene, so a "real" and a "generated"
scene differ only in the glyphs' content, never in size, format, colouring or
layout, which a model could otherwise exploit to tell them apart.

All draws come from seeded generators named by (seed, purpose, split), never
from global state: the same glyph table and seed give the same scenes.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from contam.images import DECODE_ERRORS, is_complete_image, load_rgb, save_image
from contam.prompts import _finish
from contam.seeds import rng

log = logging.getLogger(__name__)

# Saturated and far apart, so a colour survives the tint of a faint stroke.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
}
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
RELATIONS = ("left of", "right of", "above", "below")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
AXIS = {"left of": "horizontal", "right of": "horizontal", "above": "vertical", "below": "vertical"}
# The longer phrasing of each relation, used by some templates.
LONG_PHRASE = {"left of": "to the left of", "right of": "to the right of", "above": "on top of", "below": "under"}
CAPTIONS_PER_SCENE = 5
SLOT_NAMES = ("digit_1", "colour_1", "digit_2", "colour_2", "axis")
# The same content scored whatever the order: a caption with the relation the
# wrong way round ("a red three right of a blue seven" for a red three on the
# left) gets all four ordered slots wrong, yet it read both glyphs right. These
# shares separate "what is there" from "where it is".
ORDER_FREE_NAMES = ("digits_any_order", "glyphs_any_order")
SCENE_COLUMNS = ["image_id", "split", "glyph_a", "glyph_b", "digit_a", "digit_b", "colour_a", "colour_b", "relation", "position", "captions"]
GLYPH_PROMPT = "photo of the digit {word}"
# glyph_prompts stores the slot of a glyph in the prompt table's caption_id.
SLOT_IDS = {"a": 0, "b": 1}


class Slots(NamedTuple):
    """A scene's content in canonical form: glyph 1 is the left (horizontal) or top (vertical) one."""

    digit_1: int
    colour_1: str
    digit_2: int
    colour_2: str
    axis: str


def _check(digit: int, colour: str) -> None:
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be 0..9, got {digit!r}")
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {', '.join(COLOURS)}")


def _check_relation(relation: str) -> None:
    if relation not in INVERSE:
        raise ValueError(f"unknown relation {relation!r}; expected one of {', '.join(RELATIONS)}")


def canonical(digit_a: int, colour_a: str, digit_b: int, colour_b: str, relation: str) -> Slots:
    """The slots of "glyph a <relation> glyph b", with the left or top glyph first."""
    _check(digit_a, colour_a)
    _check(digit_b, colour_b)
    _check_relation(relation)
    if relation in ("left of", "above"):
        return Slots(int(digit_a), colour_a, int(digit_b), colour_b, AXIS[relation])
    return Slots(int(digit_b), colour_b, int(digit_a), colour_a, AXIS[relation])


def captions(digit_a: int, colour_a: str, digit_b: int, colour_b: str, relation: str) -> list[str]:
    """Five paraphrases of a scene, in a fixed order; two swap subject and object (inverse relation)."""
    _check(digit_a, colour_a)
    _check(digit_b, colour_b)
    _check_relation(relation)
    a = f"a {colour_a} {DIGIT_WORDS[int(digit_a)]}"
    b = f"a {colour_b} {DIGIT_WORDS[int(digit_b)]}"
    inverse = INVERSE[relation]
    return [
        f"{a} {relation} {b}",
        f"{b} {LONG_PHRASE[inverse]} {a}",
        f"there is {a} {LONG_PHRASE[relation]} {b}",
        f"a picture of {b} {inverse} {a}",
        f"{a} is {relation} {b}",
    ]


_PHRASES = {phrase: relation for relation in RELATIONS for phrase in (relation, LONG_PHRASE[relation])}
_NOUN = rf"an? (?P<{{c}}>{'|'.join(COLOURS)}) (?P<{{d}}>{'|'.join(DIGIT_WORDS)})"
# The union of the templates of captions(): an optional lead ("there is", "a
# picture of") or copula ("is"), then noun phrase, relation phrase, noun phrase.
# Longer relation phrases come first so "to the left of" is not read as a noun.
_CAPTION = re.compile(
    r"^(?:(?:there is|a picture of) )?"
    + _NOUN.format(c="colour_a", d="digit_a")
    + r" (?:is )?(?P<relation>"
    + "|".join(sorted(map(re.escape, _PHRASES), key=len, reverse=True))
    + r") "
    + _NOUN.format(c="colour_b", d="digit_b")
    + r"$"
)


def parse_caption(text: str) -> Slots | None:
    """The canonical slots a caption names, or None when it is not in the grammar.

    Tolerates case, extra whitespace and a trailing period (a model's output is
    rarely spelt exactly like the references).
    """
    if not isinstance(text, str):
        return None
    normal = " ".join(text.lower().split())
    if normal.endswith("."):
        normal = normal[:-1].rstrip()
    match = _CAPTION.match(normal)
    if match is None:
        return None
    return canonical(
        DIGIT_WORDS.index(match["digit_a"]),
        match["colour_a"],
        DIGIT_WORDS.index(match["digit_b"]),
        match["colour_b"],
        _PHRASES[match["relation"]],
    )


def slot_accuracy(predicted: list[str], truth: list[Slots]) -> dict:
    """Per slot the share of predicted captions that name it right, ``all_slots``, ``parsed`` and ``n``.

    Also the order-free shares (:data:`ORDER_FREE_NAMES`): of the scene's two
    digits, and of its two (digit, colour) glyphs, the share the caption names,
    matched as multisets whatever the relation says.

    A caption that does not parse gets every slot wrong. With no captions the
    shares are NaN.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"slot_accuracy: {len(predicted)} predicted captions for {len(truth)} scenes")
    n = len(truth)
    correct = {name: 0 for name in SLOT_NAMES}
    unordered = {name: 0.0 for name in ORDER_FREE_NAMES}
    all_right = parsed = 0
    for text, true in zip(predicted, truth):
        guess = parse_caption(text)
        if guess is None:
            continue
        parsed += 1
        true = Slots(*true)
        hits = [g == t for g, t in zip(guess, true)]
        for name, hit in zip(SLOT_NAMES, hits):
            correct[name] += hit
        all_right += all(hits)
        named_digits, true_digits = Counter((guess.digit_1, guess.digit_2)), Counter((true.digit_1, true.digit_2))
        named_glyphs = Counter(((guess.digit_1, guess.colour_1), (guess.digit_2, guess.colour_2)))
        true_glyphs = Counter(((true.digit_1, true.colour_1), (true.digit_2, true.colour_2)))
        unordered["digits_any_order"] += sum((named_digits & true_digits).values()) / 2
        unordered["glyphs_any_order"] += sum((named_glyphs & true_glyphs).values()) / 2

    def share(count: int) -> float:
        return float(count / n) if n else float("nan")

    result = {name: share(correct[name]) for name in SLOT_NAMES}
    result.update({name: share(unordered[name]) for name in ORDER_FREE_NAMES})
    result.update(all_slots=share(all_right), parsed=share(parsed), n=int(n))
    return result


def balanced_draws(items: list, count: int, generator: np.random.Generator) -> list:
    """``count`` items taken from successive seeded permutations of ``items``.

    Every item is used either floor or ceil of count/len(items) times, so no
    glyph dominates the scenes by the luck of independent draws.
    """
    if count == 0:
        return []
    if not items:
        raise ValueError("balanced_draws: nothing to draw from")
    cycles = -(-count // len(items))
    order = np.concatenate([generator.permutation(len(items)) for _ in range(cycles)])[:count]
    return [items[i] for i in order]


def compose_scenes(glyphs: pd.DataFrame, scenes_per_split: dict[str, int], seed: int, first_id: int = 1) -> pd.DataFrame:
    """Scenes for each split, each built only from that split's glyphs (see module docstring).

    ``glyphs`` is an index table (``path``, ``label``, ``split``). Splits are
    taken in sorted order and ``image_id`` counts up from ``first_id`` across
    them. Glyphs are sorted by path before drawing, so the table's row order
    does not matter; draws come from ``rng(seed, "scenes", split)``.
    """
    frames = []
    next_id = int(first_id)
    for split in sorted(scenes_per_split):
        count = int(scenes_per_split[split])
        if count < 0:
            raise ValueError(f"compose_scenes: negative scene count {count} for split {split!r}")
        if count == 0:
            continue
        pool = glyphs[glyphs["split"] == split].sort_values("path", ignore_index=True)
        if pool.empty:
            raise ValueError(f"compose_scenes: no glyphs of split {split!r} for {count} scenes")
        draw = rng(seed, "scenes", split)
        # One stream for both slots: a and b are then (nearly) independent and
        # every glyph of the split is used equally often overall.
        picks = balanced_draws(list(range(len(pool))), 2 * count, draw)
        a, b = np.array(picks[0::2]), np.array(picks[1::2])
        colour_names = list(COLOURS)
        colour_a = [colour_names[i] for i in draw.integers(len(colour_names), size=count)]
        colour_b = [colour_names[i] for i in draw.integers(len(colour_names), size=count)]
        relation = [RELATIONS[i] for i in draw.integers(len(RELATIONS), size=count)]
        position = draw.integers(2, size=count).astype(np.int64)
        digit_a = pool["label"].to_numpy()[a].astype(np.int64)
        digit_b = pool["label"].to_numpy()[b].astype(np.int64)
        frame = pd.DataFrame(
            {
                "image_id": np.arange(next_id, next_id + count, dtype=np.int64),
                "split": split,
                "glyph_a": pool["path"].to_numpy()[a].astype(str),
                "glyph_b": pool["path"].to_numpy()[b].astype(str),
                "digit_a": digit_a,
                "digit_b": digit_b,
                "colour_a": colour_a,
                "colour_b": colour_b,
                "relation": relation,
                "position": position,
            }
        )
        frame["captions"] = [captions(*row) for row in zip(digit_a, colour_a, digit_b, colour_b, relation)]
        frames.append(frame)
        next_id += count
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=np.int64 if c in ("image_id", "digit_a", "digit_b", "position") else object) for c in SCENE_COLUMNS})
    return pd.concat(frames, ignore_index=True)[SCENE_COLUMNS]


def twin_glyphs(scenes: pd.DataFrame, pool: pd.DataFrame, seed: int, tag: str) -> pd.DataFrame:
    """New glyphs of the same digits for each scene, drawn from ``pool`` (e.g. the control split).

    Returns ``image_id``, ``glyph_a``, ``glyph_b`` in the scenes' row order.
    Glyphs are handed out per digit from balanced seeded draws
    (``rng(seed, "twin", tag, digit)``) in image_id order, slot a before b, so
    the result does not depend on the scenes' row order. ValueError names a
    digit the pool lacks.
    """
    order = np.argsort(scenes["image_id"].to_numpy(), kind="stable")
    needs = [(row, slot, int(scenes[f"digit_{slot}"].iloc[row])) for row in order for slot in ("a", "b")]
    counts = pd.Series([digit for _, _, digit in needs], dtype=np.int64).value_counts()
    streams = {}
    for digit in sorted(counts.index):
        paths = sorted(pool.loc[pool["label"].astype(int) == digit, "path"].astype(str))
        if not paths:
            raise ValueError(f"twin_glyphs({tag}): the pool has no glyph of digit {digit} ({DIGIT_WORDS[digit]}), needed {int(counts[digit])} times")
        streams[digit] = iter(balanced_draws(paths, int(counts[digit]), rng(seed, "twin", tag, int(digit))))
    out = {"a": [""] * len(scenes), "b": [""] * len(scenes)}
    for row, slot, digit in needs:
        out[slot][row] = next(streams[digit])
    return pd.DataFrame({"image_id": scenes["image_id"].to_numpy(dtype=np.int64), "glyph_a": out["a"], "glyph_b": out["b"]})


def glyph_prompts(scenes: pd.DataFrame, base_seed: int) -> pd.DataFrame:
    """The prompt table (contam.prompts.PROMPT_COLUMNS) for generating each scene's two glyphs.

    One row per (scene, slot), in image_id then slot order; ``image_id`` is the
    scene's and ``caption_id`` holds the slot (0 = glyph a, 1 = glyph b), since
    a glyph prompt has no caption of its own. ``seed`` =
    ``image_seeds(base_seed, row)``, so a generated glyph depends only on its row.
    """
    ordered = scenes.sort_values("image_id", kind="stable")
    rows = []
    for image_id, digit_a, digit_b in zip(ordered["image_id"], ordered["digit_a"], ordered["digit_b"]):
        for slot, digit in (("a", int(digit_a)), ("b", int(digit_b))):
            rows.append((GLYPH_PROMPT.format(word=DIGIT_WORDS[digit]), digit, DIGIT_WORDS[digit], int(image_id), SLOT_IDS[slot]))
    frame = pd.DataFrame(rows, columns=["prompt", "label", "class_name", "image_id", "caption_id"])
    frame["image_id"] = frame["image_id"].astype("Int64")
    frame["caption_id"] = frame["caption_id"].astype("Int64")
    return _finish(frame, base_seed)


def cells(relation: str, position: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (row, column) cells of glyph a and glyph b on the 2x2 canvas."""
    _check_relation(relation)
    if position not in (0, 1):
        raise ValueError(f"position must be 0 or 1, got {position!r}")
    first, second = (0, 1) if relation in ("left of", "above") else (1, 0)
    if AXIS[relation] == "horizontal":
        return (position, first), (position, second)
    return (first, position), (second, position)


def _grey(glyph: np.ndarray) -> np.ndarray:
    if glyph.ndim != 3 or glyph.shape[2] != 3 or glyph.dtype != np.uint8:
        raise ValueError(f"a glyph must be an HxWx3 uint8 array, got {glyph.shape} {glyph.dtype}")
    # Rounded integer mean: exactly the grey level when the channels are equal.
    total = glyph.astype(np.int64).sum(axis=-1)
    return (2 * total + 3) // 6


def colourise(glyph: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """A grey HxWx3 uint8 glyph tinted ``round(rgb * grey / 255)`` per channel, in integers.

    Exact: round half up of c*g/255 is (2*c*g + 255) // 510, and no ties occur since 255 is odd.
    """
    grey = _grey(glyph)[..., None]
    tint = np.asarray(rgb, dtype=np.int64)
    return ((2 * tint * grey + 255) // 510).astype(np.uint8)


def render_scene(glyph_a: np.ndarray, glyph_b: np.ndarray, colour_a: str, colour_b: str, relation: str, position: int) -> np.ndarray:
    """Two grey HxWx3 uint8 glyphs as a (2H)x(2W)x3 uint8 scene on black.

    Each glyph is tinted by :func:`colourise` with its colour and placed in its
    cell (:func:`cells`).
    """
    if glyph_a.shape != glyph_b.shape:
        raise ValueError(f"glyphs differ in shape: {glyph_a.shape} and {glyph_b.shape}")
    _check(0, colour_a)
    _check(0, colour_b)
    h, w = glyph_a.shape[:2]
    scene = np.zeros((2 * h, 2 * w, 3), dtype=np.uint8)
    for glyph, colour, (row, col) in zip((glyph_a, glyph_b), (colour_a, colour_b), cells(relation, int(position))):
        scene[row * h : (row + 1) * h, col * w : (col + 1) * w] = colourise(glyph, COLOURS[colour])
    return scene


RENDER_COLUMNS = ("image_id", "glyph_a", "glyph_b", "colour_a", "colour_b", "relation", "position")


def render_scenes(table: pd.DataFrame, out_dir: str | os.PathLike, name: str = "scenes", progress: bool = True) -> pd.DataFrame:
    """Render every scene of ``table`` to ``out_dir/<image_id>.png``; return the rows rendered, with ``path``.

    A scene whose PNG is already complete is kept, not redrawn, so a killed job
    resumes where it stopped. A scene with a glyph that cannot be read is left
    out of the result and counted: ``attrs["skipped"]`` (with examples in
    ``attrs["skipped_examples"]``); ``attrs["rendered"]`` and
    ``attrs["resumed"]`` count the rest.
    """
    missing = [c for c in RENDER_COLUMNS if c not in table]
    if missing:
        raise ValueError(f"render_scenes({name}): table lacks columns {', '.join(missing)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # Real glyphs recur across many scenes; a bounded cache saves re-decoding
    # them without holding every generated glyph in memory. A bad file is cached
    # as None, so it is warned about once but counted for every scene using it.
    @functools.lru_cache(maxsize=4096)
    def glyph(path: str) -> np.ndarray | None:
        try:
            return np.asarray(load_rgb(path))
        except DECODE_ERRORS as error:
            log.warning("%s: cannot read glyph %s (%s: %s); skipping its scenes", name, path, type(error).__name__, error)
            return None

    paths, keep = [], []
    rendered = resumed = 0
    skipped: list[tuple[int, str]] = []
    start = last_log = time.monotonic()
    rows = zip(*(table[c] for c in RENDER_COLUMNS))
    for image_id, path_a, path_b, colour_a, colour_b, relation, position in tqdm(rows, total=len(table), desc=name, mininterval=5, disable=not progress):
        target = out / f"{int(image_id)}.png"
        if is_complete_image(target):
            resumed += 1
        else:
            a, b = glyph(str(path_a)), glyph(str(path_b))
            if a is None or b is None:
                skipped.append((int(image_id), str(path_a if a is None else path_b)))
                keep.append(False)
                continue
            save_image(render_scene(a, b, colour_a, colour_b, relation, int(position)), target)
            rendered += 1
        paths.append(str(target))
        keep.append(True)
        now = time.monotonic()
        if now - last_log >= 60:
            log.info("%s: %d rendered, %d already present, %d skipped (%.0f scenes/s)", name, rendered, resumed, len(skipped), rendered / (now - start))
            last_log = now
    elapsed = time.monotonic() - start
    log.info(
        "%s: rendered %d scenes in %.1f s (%.0f scenes/s), %d already present, %d skipped",
        name,
        rendered,
        elapsed,
        rendered / elapsed if elapsed > 0 else 0.0,
        resumed,
        len(skipped),
    )
    if skipped:
        log.warning("%s: skipped %d scenes with unreadable glyphs, e.g. %s", name, len(skipped), skipped[:5])
    frame = table[np.array(keep, dtype=bool)].copy() if len(table) else table.copy()
    frame["path"] = paths
    frame = frame.reset_index(drop=True)
    frame.attrs.update(rendered=rendered, resumed=resumed, skipped=len(skipped), skipped_examples=skipped[:20])
    return frame
