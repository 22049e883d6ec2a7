"""Report page of the captioning study: does a captioner trained on contaminated data caption real images worse?

A captioner is trained on each mix of captioned images, in which a share (ratio)
of the training images is replaced by an arm's twin of the same image (generated
pixels, or other real pixels for a control arm) with the same captions, for
several seeds, and scored on the real test images (its ``metrics.json``): BLEU-1
to 4, ROUGE-L and CIDEr per run, METEOR for all runs in one job
(``meteor.json``), and in the digits world the share of captions that name each
slot of the scene right. As in the classification report, ratio 0 is one shared
real-only run per seed (source ``real``) and it starts every arm's curve.

Means over seeds carry a 95 % t-interval over seeds (none with one seed); changes
are paired by seed, against ratio 0 and, per ratio, generated minus control. The
page reuses contam.report's and contam.report_generative's helpers and look; it
is written beside the other report pages as ``captioning.html``, with the tidy
table behind it in ``captioning_summary.csv``.
"""

from __future__ import annotations

import html
import json
import math
import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from contam import report
from contam import report_generative as rg
from contam.images import DECODE_ERRORS, load_rgb
from contam.io import atomic_path, write_text
from contam.layout import BASELINE_SOURCE, ratio_tag
from contam.report import Section, bracket, html_table, ratio_label, with_interval, with_shared_baseline
from contam.report_generative import mean_interval, verdict
from contam.scenes import ORDER_FREE_NAMES, SLOT_NAMES

PAGE = "captioning.html"
SUMMARY = "captioning_summary.csv"
METRICS_FIGURE = "captioning_metrics.png"
SAMPLES_FIGURE = "captioning_samples.png"
TWINS_FIGURE = "captioning_twins.png"

# metric key (as in metrics.json and meteor.json) -> name on the page, in the page's order.
COCO_METRICS = {
    "Bleu_1": "BLEU-1",
    "Bleu_2": "BLEU-2",
    "Bleu_3": "BLEU-3",
    "Bleu_4": "BLEU-4",
    "METEOR": "METEOR",
    "ROUGE_L": "ROUGE-L",
    "CIDEr": "CIDEr",
}
SLOT_METRICS = {
    "digit_1": "digit 1",
    "colour_1": "colour 1",
    "digit_2": "digit 2",
    "colour_2": "colour 2",
    "axis": "relation axis",
    "digits_any_order": "digits, any order",
    "glyphs_any_order": "glyphs, any order",
    "all_slots": "all slots",
    "parsed": "parsed",
}
METRIC_NAMES = {**COCO_METRICS, **SLOT_METRICS}
METRIC_ORDER = list(METRIC_NAMES)
DIGITS = 3
# What the headline is about: the consensus metric and the strictest n-gram one.
HEADLINE_METRICS = ["CIDEr", "Bleu_4"]
PLOT_METRICS = ["Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "digits_any_order", "all_slots"]
TWINS_SHOWN = 4
THUMB = 96

TIDY_COLUMNS = ["source", "ratio", "seed", "metric", "value"]
SUMMARY_COLUMNS = ["source", "ratio", "metric", "mean", "low", "high", "n"]
CHANGE = "change from ratio 0"
CONTRAST = "generated minus control"
CONTRAST_COLUMNS = ["comparison", "source", "against", "ratio", "metric", "seeds", "difference", "ci95_low", "ci95_high"]
SPICE_NOTE = "SPICE is left out: it needs a download (Stanford CoreNLP models)."

assert set(SLOT_NAMES) | set(ORDER_FREE_NAMES) <= set(SLOT_METRICS), "contam.scenes has a slot this report does not name"


# ---- reading and checking the runs ---------------------------------------------------


def _path_key(path: str | os.PathLike) -> str:
    """One spelling per file: the same file named relatively, absolutely or through a link compares equal."""
    return os.path.normcase(os.path.realpath(path))


def read_runs(metric_files: list[str | Path]) -> dict[str, dict]:
    """Every run's metrics.json, read once, by path."""
    out = {}
    for path in metric_files:
        with open(path) as handle:
            out[str(path)] = json.load(handle)
    return out


def read_meteor(meteor_file: str | Path | None) -> dict | None:
    """meteor.json, or None when the study has none (METEOR not scored at all)."""
    if meteor_file is None:
        return None
    with open(meteor_file) as handle:
        return json.load(handle)


def _run_key(data: dict) -> tuple[str, float, int]:
    run = data["run"]
    return str(run["source"]), float(run["ratio"]), int(run["seed"])


def _run_name(path: str, data: dict) -> str:
    run = data.get("run", {})
    return f"{run.get('source')} ratio {run.get('ratio')} {run.get('captioner')} seed {run.get('seed')} ({path})"


def check_runs(runs: dict[str, dict], arms: list[str], ratios: list[float]) -> None:
    """Refuse runs the study does not declare (a stray arm or ratio) and two runs of one (source, ratio, seed).

    A duplicate would be averaged as if it were another seed, e.g. two captioners mixed.
    """
    declared = {ratio_tag(r) for r in ratios if float(r) > 0}
    problems, seen = [], {}
    for path, data in runs.items():
        name = _run_name(path, data)
        source, ratio, seed = _run_key(data)
        if ratio == 0:
            if source != BASELINE_SOURCE:
                problems.append(f"{name}: ratio 0 is the shared real-only run, but its source is {source!r}")
        elif source not in arms:
            problems.append(f"{name}: source {source!r} is not one of the arms {arms}")
        elif ratio_tag(ratio) not in declared:
            problems.append(f"{name}: ratio {ratio:g} is not one of {sorted(declared)}")
        key = (source, ratio_tag(ratio), seed)
        if key in seen:
            problems.append(f"{name}: the same run (source, ratio, seed) as {seen[key]}")
        seen[key] = path
    if problems:
        raise ValueError("the captioning report cannot use these metric files:\n  " + "\n  ".join(problems))


def meteor_of_runs(metric_files: list[str | Path], meteor: dict | None) -> dict[str, float]:
    """Each run's METEOR (by metrics path), found through the predictions.json beside its metrics.json.

    meteor.json names runs by the predictions path the workflow gave it; paths are
    compared resolved, and when that finds nothing (the file was written from
    another working directory) by the run's last five path parts
    (source/ratio/captioner/seed/predictions.json), which name a run within a study.
    Runs without a number (not computed, or null) are left out.
    """
    scores = (meteor or {}).get("runs") or {}
    by_path = {_path_key(p): v for p, v in scores.items()}
    by_tail: dict[tuple[str, ...], list] = {}
    for p, v in scores.items():
        by_tail.setdefault(Path(os.path.normpath(p)).parts[-5:], []).append(v)
    out = {}
    for path in metric_files:
        predictions = Path(path).parent / "predictions.json"
        if _path_key(predictions) in by_path:
            value = by_path[_path_key(predictions)]
        else:
            tail = by_tail.get(Path(os.path.normpath(predictions)).parts[-5:], [])
            value = tail[0] if len(tail) == 1 else None
        if not math.isnan(rg._number(value)):
            out[str(path)] = float(value)
    return out


def _tidy(runs: dict[str, dict], meteor: dict | None) -> pd.DataFrame:
    meteor_values = meteor_of_runs(list(runs), meteor)
    rows = []
    for path, data in runs.items():
        key = _run_key(data)
        values = {k: data.get("coco", {}).get(k) for k in COCO_METRICS if k != "METEOR"}
        values["METEOR"] = meteor_values.get(path)
        values.update({k: (data.get("slots") or {}).get(k) for k in SLOT_METRICS})
        # A metric a run does not have is absent, never a row of NaN: means count what exists.
        rows += [(*key, metric, rg._number(value)) for metric, value in values.items() if not math.isnan(rg._number(value))]
    frame = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    return _ordered(frame, ["source", "ratio", "seed"])


def tidy_runs(metric_files: list[str | Path], meteor_file: str | Path | None) -> pd.DataFrame:
    """One row per (run, metric): source, ratio (float), seed, metric, value.

    Metrics are the COCO keys (Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr) and, in the
    digits world, the slot shares (digit_1 ... axis, all_slots, parsed). Ratio-0 runs
    keep source 'real'. METEOR that is missing or null gives no row.
    """
    return _tidy(read_runs(metric_files), read_meteor(meteor_file))


def _ordered(frame: pd.DataFrame, first: list[str], arms: list[str] | None = None) -> pd.DataFrame:
    """Sorted by ``first`` with metrics in the page's order and, given ``arms``, sources in the declared order."""
    if frame.empty:
        return frame.reset_index(drop=True)
    keys = {"metric": [METRIC_ORDER.index(m) if m in METRIC_ORDER else len(METRIC_ORDER) for m in frame["metric"]]}
    if arms is not None:
        keys["source"] = [arms.index(s) if s in arms else len(arms) for s in frame["source"]]
    keyed = frame.assign(**{f"_{k}": v for k, v in keys.items()})
    by = [f"_{c}" if c in keys else c for c in first] + (["_metric"] if "metric" not in first else [])
    return keyed.sort_values(by, kind="stable").drop(columns=[f"_{k}" for k in keys]).reset_index(drop=True)


# ---- over seeds, and paired by seed ---------------------------------------------------


def summarise(tidy: pd.DataFrame, arms: list[str]) -> pd.DataFrame:
    """Per (arm, ratio, metric): mean over seeds, 95 % t-interval over seeds and seeds counted.

    The shared ratio-0 runs are each arm's ratio-0 row.
    """
    data = with_shared_baseline(tidy, arms)
    data = data[data["source"].isin(arms)]
    rows = [
        (source, ratio, metric, *mean_interval(group["value"]))
        for (source, ratio, metric), group in data.groupby(["source", "ratio", "metric"], sort=False)
    ]
    return _ordered(pd.DataFrame(rows, columns=SUMMARY_COLUMNS), ["source", "ratio", "metric"], arms)


def contrasts(tidy: pd.DataFrame, arms: list[str], origins: dict[str, str]) -> pd.DataFrame:
    """Paired by seed, per metric: each arm at each ratio minus the shared ratio-0 run
    (comparison 'change from ratio 0', against 'ratio 0'), and each generated arm minus
    each control arm at the same ratio (comparison 'generated minus control')."""
    # The classification report's pairing, with one captioner as its 'model' and the real test set.
    shaped = tidy.assign(test_set="test", model="captioner")
    declared = {arm: origins[arm] for arm in arms if arm in origins}
    frames = []
    for metric in [m for m in METRIC_ORDER if (tidy["metric"] == m).any()]:
        change = report.paired_differences(shaped, arms, "test", metric)
        frames.append(change.drop(columns="model").assign(comparison=CHANGE, against="ratio 0", metric=metric))
        contrast = report.generated_minus_control(shaped, declared, "test", metric)
        contrast = contrast[contrast["generated"].isin(arms) & contrast["control"].isin(arms)]
        frames.append(contrast.drop(columns="model").rename(columns={"generated": "source", "control": "against"}).assign(comparison=CONTRAST, metric=metric))
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=CONTRAST_COLUMNS)
    frame = pd.concat(frames, ignore_index=True)[CONTRAST_COLUMNS]
    frame["seeds"] = frame["seeds"].astype(int)
    frame["_kind"] = [0 if c == CHANGE else 1 for c in frame["comparison"]]
    return _ordered(frame, ["_kind", "source", "against", "ratio", "metric"], arms).drop(columns="_kind")


def largest_ratio_changes(changes: pd.DataFrame, arms: list[str]) -> pd.DataFrame:
    """The 'change from ratio 0' rows at each arm's largest ratio."""
    own = changes[changes["comparison"] == CHANGE]
    parts = [own[(own["source"] == arm) & (own["ratio"] == own.loc[own["source"] == arm, "ratio"].max())] for arm in arms]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else own.iloc[0:0]


def summary_table(summary: pd.DataFrame, changes: pd.DataFrame, origins: dict[str, str]) -> pd.DataFrame:
    """captioning_summary.csv: per (arm, ratio, metric) the mean over seeds and the paired change from ratio 0."""
    change = changes[changes["comparison"] == CHANGE][["source", "ratio", "metric", "difference", "ci95_low", "ci95_high", "seeds"]]
    # Typed like the summary's keys, so an empty table (no contrasts yet) still merges.
    change = change.astype({"source": str, "ratio": float, "metric": str, "difference": float, "ci95_low": float, "ci95_high": float})
    change = change.rename(columns={"difference": "change_from_0", "ci95_low": "change_low", "ci95_high": "change_high", "seeds": "change_n"})
    summary = summary.astype({"source": str, "ratio": float, "metric": str})
    frame = summary.merge(change, on=["source", "ratio", "metric"], how="left").rename(columns={"source": "arm"})
    frame.insert(1, "origin", [origins.get(a, "?") for a in frame["arm"]])
    return frame


def slot_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, ratio): each slot's accuracy, mean over seeds, and the seeds behind it."""
    data = summary[summary["metric"].isin(SLOT_METRICS)]
    columns = ["source", "ratio", "seeds", *SLOT_METRICS]
    if data.empty:
        return pd.DataFrame(columns=columns)
    wide = data.pivot_table(index=["source", "ratio"], columns="metric", values="mean", aggfunc="first", sort=False)
    seeds = data.groupby(["source", "ratio"], sort=False)["n"].max().rename("seeds")
    frame = wide.join(seeds).reset_index().reindex(columns=columns)
    frame.columns.name = None
    return frame


def slot_changes(changes: pd.DataFrame, arms: list[str], origins: dict[str, str]) -> pd.DataFrame:
    """Per slot and arm, the paired change from ratio 0 at the arm's largest ratio, the slot hurt most first.

    'Hurt most' is the lowest change of a generated arm (the contamination the study
    is about); with no generated arm, of any arm. Rows: one per (slot, arm), slots
    ranked (``rank`` 1 = hurt most), arms in the declared order within a slot.
    """
    data = largest_ratio_changes(changes, arms)
    data = data[data["metric"].isin([*SLOT_NAMES, *ORDER_FREE_NAMES])].rename(columns={"metric": "slot", "source": "arm"})
    columns = ["rank", "slot", "arm", "ratio", "seeds", "difference", "ci95_low", "ci95_high"]
    if data.empty:
        return pd.DataFrame(columns=columns)
    generated = [a for a in arms if origins.get(a) == "generated"]
    scored = data[data["arm"].isin(generated)] if data["arm"].isin(generated).any() else data
    hurt = scored.groupby("slot")["difference"].min().sort_values(kind="stable")
    rank = {slot: i + 1 for i, slot in enumerate(hurt.index)}
    data = data.assign(rank=[rank.get(s, len(rank) + 1) for s in data["slot"]], _arm=[arms.index(a) for a in data["arm"]])
    return data.sort_values(["rank", "_arm"], kind="stable")[columns].reset_index(drop=True)


# ---- words ----------------------------------------------------------------------------


def _value(value: float) -> str:
    return "n/a" if report._missing(value) else f"{value:.{DIGITS}f}"


def _signed(value: float) -> str:
    return "n/a" if report._missing(value) else f"{value:+.{DIGITS}f}"


def value_cell(mean: float, low: float, high: float, n: int) -> str:
    """'0.812 [0.790, 0.834]'; one seed: '0.812 (n=1)'; none: 'n/a'."""
    if n < 1 or report._missing(mean):
        return "n/a"
    if n < 2:
        return f"{_value(mean)} (n=1)"
    return with_interval(mean, low, high, DIGITS)


def change_cell(difference: float, low: float, high: float, n: int) -> str:
    """'-0.250 [-0.300, -0.200]'; one pair: '-0.250 (n=1)'; none: 'n/a'."""
    if n < 1 or report._missing(difference):
        return "n/a"
    if n < 2:
        return f"{_signed(difference)} (n=1)"
    return f"{_signed(difference)} {bracket(low, high, _signed)}"


def _seeds_text(n: int) -> str:
    return f"n={n} seed{'s' if n != 1 else ''}"


def _metric_parts(rows: pd.DataFrame, n: int) -> list[str]:
    parts = []
    for metric in HEADLINE_METRICS:
        row = rows[rows["metric"] == metric]
        if not len(row):
            continue
        row = row.iloc[0]
        seeds = int(row["seeds"])
        interval = f" {bracket(row['ci95_low'], row['ci95_high'], _signed)}" if seeds > 1 else ""
        other = f", {_seeds_text(seeds)}" if seeds != n else ""
        parts.append(f"{METRIC_NAMES[metric]} {_signed(row['difference'])}{interval}{other}: {verdict(seeds, row['ci95_low'], row['ci95_high'])}")
    return parts


def headline_statements(changes: pd.DataFrame, arms: list[str], origins: dict[str, str]) -> list[str]:
    """Plain sentences: per arm the change from ratio 0 at its largest ratio; per ratio generated minus control."""
    out = []
    for arm in arms:
        at = largest_ratio_changes(changes, [arm])
        at = at[at["metric"].isin(HEADLINE_METRICS)]
        if not len(at):
            continue
        n = int(at["seeds"].max())
        start = (f"{arm} ({origins.get(arm, '?')} twins), {ratio_label(at['ratio'].iloc[0])} of the training images replaced, "
                 f"against the real-only captioner (ratio 0), paired by seed ({_seeds_text(n)})")
        out.append(f"{start}: " + "; ".join(_metric_parts(at, n)) + ".")
    contrast = changes[(changes["comparison"] == CONTRAST) & changes["metric"].isin(HEADLINE_METRICS)]
    for (generated, control, ratio), group in contrast.groupby(["source", "against", "ratio"], sort=False):
        n = int(group["seeds"].max())
        start = f"{generated} (generated) minus {control} (control), both with {ratio_label(ratio)} of the training images replaced, paired by seed ({_seeds_text(n)})"
        out.append(f"{start}: " + "; ".join(_metric_parts(group, n)) + ".")
    return out


# ---- samples ------------------------------------------------------------------------------


def run_table(runs: dict[str, dict], prediction_files: list[str | Path]) -> pd.DataFrame:
    """One row per run: what it is, how it was scored, and its predictions file (None when not given)."""
    predictions = {_path_key(Path(p).parent): str(p) for p in prediction_files}
    rows = []
    for path, data in runs.items():
        source, ratio, seed = _run_key(data)
        rows.append({
            "source": source, "ratio": ratio, "seed": seed, "captioner": str(data["run"].get("captioner", "")),
            "tokenizer": data.get("tokenizer"), "beam_size": data.get("beam_size"), "n_images": data.get("n_images"),
            "CIDEr": rg._number(data.get("coco", {}).get("CIDEr")), "metrics_file": path,
            "predictions_file": predictions.get(_path_key(Path(path).parent)),
        })
    columns = ["source", "ratio", "seed", "captioner", "tokenizer", "beam_size", "n_images", "CIDEr", "metrics_file", "predictions_file"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["ratio", "source", "seed"], ignore_index=True) if len(frame) else frame


def _read_predictions(path: str | None) -> dict[int, str]:
    if not isinstance(path, str):  # a run whose predictions were not given
        return {}
    with open(path) as handle:
        return {int(r["image_id"]): str(r["caption"]) for r in json.load(handle)}


def sample_ids(captioned: pd.DataFrame, count: int, seed: int) -> list[int]:
    """``count`` test image ids drawn with the experiment seed: the same index and seed show the same images."""
    test = sorted(int(i) for i in captioned.loc[captioned["split"] == "test", "image_id"])
    if not test or count < 1:
        return []
    picks = np.random.default_rng(int(seed)).choice(len(test), size=min(count, len(test)), replace=False)
    return [test[i] for i in sorted(picks)]


def sample_captions(captioned: pd.DataFrame, runs: pd.DataFrame, arms: list[str], count: int, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """The sampled test images with their first reference caption and the captions of
    the real-only run and of each arm's run at its largest ratio (each run's first seed).

    Returns the table (image_id, path, reference, then one column per run shown) and
    those columns' names.
    """
    shown: list[tuple[str, pd.Series | None]] = []
    base = runs[runs["source"] == BASELINE_SOURCE]
    shown.append(("ratio 0, real only", base.sort_values("seed").iloc[0] if len(base) else None))
    for arm in arms:
        own = runs[runs["source"] == arm]
        if len(own):
            top = own[own["ratio"] == own["ratio"].max()].sort_values("seed").iloc[0]
            shown.append((f"{arm} at {ratio_label(top['ratio'])}", top))
    names = [f"{name} (seed {int(row['seed'])})" if row is not None else name for name, row in shown]
    captions = [_read_predictions(None if row is None else row["predictions_file"]) for _, row in shown]
    test = captioned[captioned["split"] == "test"].set_index("image_id")
    rows = []
    for image_id in sample_ids(captioned, count, seed):
        refs = list(test.loc[image_id, "captions"])
        row = {"image_id": image_id, "path": str(test.loc[image_id, "path"]), "reference": str(refs[0]) if refs else ""}
        row.update({name: c.get(image_id, "–") for name, c in zip(names, captions)})
        rows.append(row)
    return pd.DataFrame(rows, columns=["image_id", "path", "reference", *names]), names


def _thumb(path: str) -> np.ndarray | None:
    """An image scaled to about THUMB pixels: small ones by a whole factor with nearest
    neighbour (a 32 px scene stays sharp), large ones shrunk; None when it cannot be read."""
    try:
        image = load_rgb(path)
    except DECODE_ERRORS:
        return None
    factor = THUMB / max(image.size)
    if factor >= 1:
        whole = max(1, int(factor))
        image = image.resize((image.width * whole, image.height * whole), resample=0)  # 0: Image.NEAREST
    else:
        image.thumbnail((THUMB, THUMB))
    return np.asarray(image)


def _show(ax, path: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    thumb = _thumb(path)
    if thumb is None:
        ax.text(0.5, 0.5, "image\nmissing", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    else:
        ax.imshow(thumb, interpolation="nearest")


def samples_figure(table: pd.DataFrame, names: list[str], out_png: Path) -> None:
    """One row per sampled test image: the image, then its reference and each run's caption."""
    plt = rg._pyplot()
    rows = max(1, len(table))
    lines = 1 + len(names)
    fig, axes = plt.subplots(rows, 2, figsize=(11, max(1.5, 0.26 * lines + 0.5) * rows + 0.5), squeeze=False, gridspec_kw={"width_ratios": [1, 7]})
    for r, (_, row) in enumerate(table.iterrows()):
        _show(axes[r, 0], row["path"])
        axes[r, 0].set_title(f"test image {row['image_id']}", fontsize=7)
        text = [f"reference: {row['reference']}"] + [f"{name}: {row[name]}" for name in names]
        axes[r, 1].axis("off")
        axes[r, 1].text(0, 0.5, "\n".join(textwrap.shorten(t, 150) for t in text), va="center", fontsize=8, family="monospace", transform=axes[r, 1].transAxes)
    if not len(table):
        for ax in axes[0]:
            ax.axis("off")
        axes[0, 1].text(0, 0.5, "no test images", fontsize=8)
    fig.suptitle("Real test images, their first reference caption and the captions of the real-only captioner and of each arm at its largest ratio", fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def twins_figure(captioned: pd.DataFrame, pools: dict[str, pd.DataFrame], arms: list[str], origins: dict[str, str], seed: int, out_png: Path) -> list[int]:
    """A few training images next to each arm's twin of them; returns the image ids shown."""
    train = captioned[captioned["split"] == "train"].set_index("image_id")
    ids = set(int(i) for i in train.index)
    shared = ids.intersection(*[set(int(i) for i in pools[a]["image_id"]) for a in arms if a in pools]) if pools else set()
    candidates = sorted(shared or ids)
    # Its own stream of the experiment seed, so the test samples do not shift these picks.
    draw = np.random.default_rng([int(seed), 1])
    picked = sorted(candidates[i] for i in draw.choice(len(candidates), size=min(TWINS_SHOWN, len(candidates)), replace=False)) if candidates else []
    twins = {a: pools[a].drop_duplicates("image_id").set_index("image_id")["path"] for a in arms if a in pools}
    plt = rg._pyplot()
    columns = ["real (training)", *(f"{a} twin ({origins.get(a, '?')})" for a in twins)]
    fig, axes = plt.subplots(max(1, len(picked)), len(columns), figsize=(1.8 * len(columns) + 0.4, 1.9 * max(1, len(picked)) + 0.5), squeeze=False)
    for r, image_id in enumerate(picked):
        paths = [str(train.loc[image_id, "path"]), *(str(t.get(image_id, "")) for t in twins.values())]
        for c, path in enumerate(paths):
            _show(axes[r, c], path)
            if r == 0:
                axes[r, c].set_title(columns[c], fontsize=8)
        axes[r, 0].set_ylabel(f"image {image_id}", fontsize=7)
    fig.suptitle(textwrap.fill("What the contamination looks like: a training image and each arm's twin (same captions)", max(30, int(9 * (1.8 * len(columns) + 0.4)))), fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return picked


# ---- the metric figure -----------------------------------------------------------------


def plot_metrics(summary: pd.DataFrame, arms: list[str], origins: dict[str, str], keys: list[str], out_png: Path) -> None:
    """One panel per metric; one line per arm (its ratio 0 is the shared real-only run), bars 95 % t-interval over seeds."""
    plt = rg._pyplot()
    markers, styles = ["o", "s", "^", "D", "v", "P"], ["-", "--", ":", "-."]
    xs = 100 * summary["ratio"].to_numpy(dtype=float) if len(summary) else np.zeros(1)
    dodge = 0.012 * (xs.max() - xs.min() or 1.0)  # arms side by side, so bars at the shared ratio 0 stay visible
    cols = max(1, min(3, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.9 * rows + 0.4), squeeze=False)
    for ax in axes.flat[max(1, len(keys)):]:  # the empty panels of the last row
        ax.axis("off")
    for ax, key in zip(axes.flat, keys):
        for j, arm in enumerate(arms):
            data = summary[(summary["source"] == arm) & (summary["metric"] == key)].sort_values("ratio")
            if not len(data):
                continue
            mean, low, high = (data[c].to_numpy(dtype=float) for c in ("mean", "low", "high"))
            err = np.vstack([mean - low, high - mean])
            err = np.where(np.isfinite(err), np.maximum(err, 0), 0.0)  # no bar where there is no interval (n=1)
            n = data["n"].astype(int)
            seeds = f"n={n.min()}" if n.min() == n.max() else f"n={n.min()}–{n.max()}"
            shift = (j - (len(arms) - 1) / 2) * dodge
            ax.errorbar(100 * data["ratio"].to_numpy(dtype=float) + shift, mean, yerr=err, marker=markers[j % 6], linestyle=styles[j % 4], color=f"C{j}", capsize=3,
                        label=f"{arm} ({origins.get(arm, '?')}, {seeds})")
        ax.set_title(METRIC_NAMES[key] + (" accuracy" if key in SLOT_METRICS else ""), fontsize=10)
        ax.set_xlabel("training images replaced (%)", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if not keys:
        axes[0, 0].text(0.5, 0.5, "no finished runs", ha="center")
    title = "Captioners trained on contaminated data, scored on real test images: mean over seeds, bars 95 % t-interval over seeds (none with n=1); ratio 0 is the shared real-only captioner"
    fig.suptitle(textwrap.fill(title, int(16 * 4.6 * cols)), fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ---- the page: one function per section -------------------------------------------------


class Page:
    """What the sections share: the runs and their tables, read and computed once, and where things go."""

    def __init__(self, out_dir: Path, runs: dict[str, dict], meteor: dict | None, run_frame: pd.DataFrame, arms: list[str], origins: dict[str, str],
                 settings: dict, seed: int, slots: bool) -> None:
        self.out_dir, self.runs, self.meteor, self.run_frame = out_dir, runs, meteor, run_frame
        self.arms, self.origins, self.settings, self.seed, self.slots = arms, origins, settings, seed, slots
        self.tidy = _tidy(runs, meteor)
        self.summary = summarise(self.tidy, arms)
        self.changes = contrasts(self.tidy, arms, origins)
        self.written: dict[str, Path] = {}

    def rel(self, path: str | Path) -> str:
        return html.escape(os.path.relpath(path, self.out_dir))

    def table_metrics(self) -> list[str]:
        return [*COCO_METRICS, *(["all_slots"] if self.slots else [])]

    def has(self, metric: str) -> bool:
        return bool((self.tidy["metric"] == metric).any())


def _list(items: list[str]) -> str:
    return "<ul class='headline'>" + "".join(f"<li>{html.escape(s)}</li>" for s in items) + "</ul>"


def headline_section(page: Page) -> Section:
    statements = headline_statements(page.changes, page.arms, page.origins)
    body = _list(statements) if statements else "<p>No paired change yet: it needs the real-only run and a contaminated run of the same seed.</p>"
    body += (
        "<p class='note'>CIDEr and BLEU-4 of the captions of the real test images. Differences are paired by seed, followed by a 95 % t-interval over seeds [low, high]. "
        "'higher' or 'lower' is said only when the interval excludes 0; 'not resolved' when it contains 0 (these seeds do not show a change) or when one seed gives no interval.</p>"
    )
    return "Headline: captions after contamination", body


def about_section(page: Page) -> Section:
    items = [
        ("Reproduction of Hataya, Bao &amp; Arai, <i>Will Large-scale Generative Models Corrupt Future Datasets?</i> (ICCV 2023), captioning task: "
         "a captioner is trained on each mix, in which a share of the training images is replaced by an arm's twin of the same image with the same captions "
         "(generated pixels, or, for a control arm, other real pixels), and captions the real test images."),
        ("BLEU-1 to 4: n-gram precision against the reference captions; METEOR: unigram matches with stems and paraphrases; ROUGE-L: longest common subsequence; "
         "CIDEr: TF-IDF weighted n-gram consensus with the references (its document frequencies come from the test references, so runs compare only on the same images). Higher is better."),
        *(["Slot accuracy (digit scenes): each caption is parsed back with the template grammar; a slot (a digit, its colour, the relation's axis) is right when the caption names it right, "
           "'all slots' when all five are, 'parsed' is the share of captions the grammar reads at all (an unparsed caption gets every slot wrong). "
           "The ordered slots follow the caption's relation, so a caption that reads both glyphs right but puts them the wrong way round gets all four wrong; "
           "'digits, any order' and 'glyphs, any order' (digit with its colour) count what the caption names whatever the relation says: what is there, apart from where."] if page.slots else []),
        (f"Ratio 0 is one shared real-only captioner per seed; it starts every arm's curve. Means are over seeds with a 95 % t-interval over seeds [low, high]; "
         f"n is the number of seeds; with one seed there is no interval. The table behind the numbers is <a href='{SUMMARY}'>{SUMMARY}</a>."),
    ]
    return "What this measures", "".join(f"<p class='note'>{item}</p>" for item in items)


def scores_section(page: Page) -> Section | None:
    if not len(page.summary):
        return None
    keys = page.table_metrics()
    parts = []
    for arm in page.arms:
        own = page.summary[page.summary["source"] == arm]
        if not len(own):
            continue
        rows = []
        for ratio, group in own.groupby("ratio", sort=True):
            cells = group.set_index("metric")
            row = {"ratio": ratio_label(ratio) + (" (real only)" if ratio == 0 else "")}
            for key in keys:
                row[METRIC_NAMES[key]] = value_cell(*cells.loc[key, ["mean", "low", "high"]], int(cells.loc[key, "n"])) if key in cells.index else "n/a"
            row["n (seeds)"] = str(int(group["n"].max()))
            rows.append(row)
        parts.append(f"<h3>{html.escape(arm)} ({html.escape(page.origins.get(arm, '?'))} twins)</h3>" + html_table(pd.DataFrame(rows)))
    note = "<p class='note'>Mean over seeds [95 % t-interval over seeds]; (n=1): one seed, no interval; n/a: not scored (e.g. METEOR not computed).</p>"
    return "Scores per arm (mean [95 % t-interval over seeds])", "".join(parts) + note


def figure_section(page: Page) -> Section:
    keys = [k for k in PLOT_METRICS if page.has(k) and (k not in SLOT_METRICS or page.slots)]
    png = page.out_dir / "figures" / METRICS_FIGURE
    plot_metrics(page.summary, page.arms, page.origins, keys, png)
    page.written["metrics_figure"] = png
    body = (f"<p><img src='{page.rel(png)}' alt='Caption metrics against the share of training images replaced, one line per arm'></p>"
            "<p class='note'>n in the legend: seeds behind each point. Arms are drawn slightly apart so the bars at a shared ratio stay visible.</p>")
    return "Scores against the share of training images replaced", body


def changes_section(page: Page) -> Section | None:
    if not len(page.changes):
        return None
    keys = [k for k in page.table_metrics() if (page.changes["metric"] == k).any()]
    rows = []
    for (comparison, source, against, ratio), group in page.changes.groupby(["comparison", "source", "against", "ratio"], sort=False):
        cells = group.set_index("metric")
        label = f"{source} minus ratio 0" if comparison == CHANGE else f"{source} (generated) minus {against} (control)"
        row = {"comparison": label, "ratio": ratio_label(ratio), "n (seeds)": str(int(group["seeds"].max()))}
        for key in keys:
            row[METRIC_NAMES[key]] = change_cell(*cells.loc[key, ["difference", "ci95_low", "ci95_high"]], int(cells.loc[key, "seeds"])) if key in cells.index else "n/a"
        rows.append(row)
    note = "<p class='note'>Differences paired by seed [95 % t-interval over seeds]; (n=1): one pair, no interval."
    if (page.changes["comparison"] == CONTRAST).any():
        note += " Generated minus control pairs the two arms at the same ratio and seed, so the effect of replacing images at all cancels and what remains is the effect of their being generated."
    note += "</p>"
    return "Changes, paired by seed", html_table(pd.DataFrame(rows)) + note


def slots_section(page: Page) -> Section | None:
    if not page.slots:
        return None
    table = slot_table(page.summary)
    if not len(table):
        return "Slot accuracy (digit scenes)", "<p>No run reports slot accuracy.</p>"
    shown = pd.DataFrame({
        "arm": [f"{a} ({page.origins.get(a, '?')})" for a in table["source"]], "ratio": [ratio_label(r) for r in table["ratio"]],
        **{SLOT_METRICS[k]: [_value(v) for v in table[k]] for k in SLOT_METRICS}, "n (seeds)": [str(int(n)) for n in table["seeds"]],
    })
    body = html_table(shown) + "<p class='note'>Share of test captions naming each slot right, mean over seeds.</p>"
    hurt = slot_changes(page.changes, page.arms, page.origins)
    if len(hurt):
        rows = []
        for (rank, slot), group in hurt.groupby(["rank", "slot"], sort=False):
            row = {"rank": str(int(rank)), "slot": SLOT_METRICS[slot]}
            for _, r in group.iterrows():
                row[f"{r['arm']} at {ratio_label(r['ratio'])}"] = change_cell(r["difference"], r["ci95_low"], r["ci95_high"], int(r["seeds"]))
            rows.append(row)
        body += "<h3>Change from ratio 0 at each arm's largest ratio, the slot hurt most first</h3>" + html_table(pd.DataFrame(rows).fillna("n/a"))
        body += ("<p class='note'>Paired by seed [95 % t-interval over seeds]. Ranked by the lowest change of a generated arm; with two seeds the intervals are wide, "
                 "so the ranking points at what to look at rather than proving an order.</p>")
    return "Slot accuracy (digit scenes)", body


def samples_section(page: Page, captioned: pd.DataFrame) -> Section:
    count = int(page.settings.get("samples", 6))
    table, names = sample_captions(captioned, page.run_frame, page.arms, count, page.seed)
    png = page.out_dir / "figures" / SAMPLES_FIGURE
    samples_figure(table, names, png)
    page.written["samples_figure"] = png
    body = f"<p><img src='{page.rel(png)}' alt='Real test images with their reference caption and each arm&#39;s captions'></p>"
    if len(table):
        body += html_table(table.drop(columns="path").assign(image_id=table["image_id"].astype(str)))
    body += (f"<p class='note'>{len(table)} test images drawn with the experiment seed ({page.seed}), so the same files give the same images. "
             "Images are upscaled with nearest neighbour. Each caption comes from the first seed of its run; '–': no caption from that run.</p>")
    return "Samples: captions of real test images", body


def twins_section(page: Page, captioned: pd.DataFrame, pools: dict[str, pd.DataFrame]) -> Section | None:
    if not pools or not (captioned["split"] == "train").any():
        return None
    png = page.out_dir / "figures" / TWINS_FIGURE
    shown = twins_figure(captioned, pools, page.arms, page.origins, page.seed, png)
    page.written["twins_figure"] = png
    body = (f"<p><img src='{page.rel(png)}' alt='Training images next to each arm&#39;s twin'></p>"
            f"<p class='note'>Training images {', '.join(str(i) for i in shown)} (a seeded draw) and the twin each arm puts in their place in a mix; the twin keeps the image's captions.</p>")
    return "What the contamination looks like", body


def _counted(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.astype(str).value_counts().sort_index().items()}


def _runs(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


def notes_section(page: Page) -> Section:
    notes, warnings = [], []
    frame = page.run_frame
    tokenizers = _counted(frame["tokenizer"]) if len(frame) else {}
    if len(tokenizers) == 1:
        notes.append(f"Tokenizer: {next(iter(tokenizers))} (all {len(frame)} runs). ptb is pycocoevalcap's Stanford PTB tokenizer, as in published COCO numbers; "
                     "whitespace is the pure-Python fallback (close to it but not interchangeable).")
    elif tokenizers:
        # Name the runs off the most common tokenizer: those are the ones to score again.
        usual = max(tokenizers, key=tokenizers.get)
        odd = frame[frame["tokenizer"].astype(str) != usual]
        per = "; ".join(f"{t}: " + ", ".join(f"{s} ratio {r:g} seed {d}" for s, r, d in zip(group["source"], group["ratio"], group["seed"])) for t, group in odd.groupby(odd["tokenizer"].astype(str)))
        warnings.append(f"The runs disagree on the tokenizer ({', '.join(f'{t}: {_runs(n)}' for t, n in tokenizers.items())}): scores from different tokenizers are close but not interchangeable, "
                        f"so means and paired changes that mix them are suspect; score all runs alike. Not on {usual}: {per}.")
    if page.meteor is None:
        notes.append("METEOR not computed: the study has no meteor.json (METEOR was not scored).")
    elif page.meteor.get("not_computed"):
        notes.append(f"METEOR not computed: {page.meteor['not_computed']}.")
    else:
        meteor_tokenizer = page.meteor.get("tokenizer")
        if meteor_tokenizer and tokenizers and set(tokenizers) != {str(meteor_tokenizer)}:
            warnings.append(f"METEOR was scored with the {meteor_tokenizer} tokenizer, the other metrics with {', '.join(tokenizers)}.")
        scored = set(meteor_of_runs(list(page.runs), page.meteor))
        missing = [_run_name(p, d) for p, d in page.runs.items() if p not in scored]
        if missing:
            warnings.append(f"METEOR is missing for {len(missing)} of {len(page.runs)} runs (left out of its means): " + "; ".join(missing) + ".")
        else:
            notes.append(f"METEOR: scored for all runs in one job (tokenizer {meteor_tokenizer}).")
    notes.append(SPICE_NOTE)
    beams = _counted(frame["beam_size"]) if len(frame) else {}
    configured = page.settings.get("decoding", {}).get("beam_size")
    if len(beams) > 1:
        warnings.append(f"The runs decoded with different beam sizes ({', '.join(f'{b}: {_runs(n)}' for b, n in beams.items())}); their captions are not comparable.")
    elif beams:
        beam = next(iter(beams))
        notes.append(f"Decoding: beam search with beam size {beam}" + (f" (the config now says {configured})" if configured is not None and str(configured) != beam else "") + ".")
    images = _counted(frame["n_images"]) if len(frame) else {}
    if len(images) > 1:
        warnings.append(f"The runs captioned different numbers of test images ({', '.join(f'{k}: {_runs(n)}' for k, n in images.items())}); CIDEr compares only runs scored on the same images.")
    elif images:
        notes.append(f"Every run captioned the same {next(iter(images))} real test images.")
    body = "".join(f"<p class='note'><b>Warning:</b> {html.escape(w)}</p>" for w in warnings)
    body += "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes)
    return "Notes: tokenizer, METEOR, SPICE, decoding", body


def runs_section(page: Page) -> Section | None:
    frame = page.run_frame
    if not len(frame):
        return None
    shown = pd.DataFrame({
        "source": frame["source"], "ratio": [ratio_label(r) for r in frame["ratio"]], "seed": frame["seed"].astype(str), "captioner": frame["captioner"],
        "tokenizer": frame["tokenizer"].astype(str), "beam": frame["beam_size"].astype(str), "test images": frame["n_images"].astype(str),
        "CIDEr": [_value(v) for v in frame["CIDEr"]], "metrics": [f"<a href='{page.rel(p)}'>metrics.json</a>" for p in frame["metrics_file"]],
    })
    return "Runs", "<details><summary>Every trained captioner and its scores file</summary>" + html_table(shown, raw=("metrics",)) + "</details>"


def build_captioning_report(
    out_dir: str | Path,
    *,
    experiment: str,
    seed: int,
    metric_files: list[str | Path],
    prediction_files: list[str | Path],
    meteor_file: str | Path | None,
    captioned: pd.DataFrame,
    pools: dict[str, pd.DataFrame],
    ratios: list[float],
    arms: list[str],
    origins: dict[str, str],
    settings: dict,
    slots: bool,
    benchmark_files: list[str | Path],
    benchmark_root: str | Path | None,
    versions: dict,
    config_for_display: dict | None = None,
) -> dict[str, Path]:
    """Write captioning.html, captioning_summary.csv and the figures into ``out_dir``; return them by name
    (html, summary, metrics_figure, samples_figure and, with a training split and pools, twins_figure).

    ``pools`` maps an arm to its twins (image_id, path). Raises ValueError before
    writing anything when an arm has no origin or a run is not one the study
    declares (arm, ratio) or appears twice.
    """
    out_dir = Path(out_dir)
    arms, origins = list(arms), dict(origins)
    report.check_origins(arms, origins)
    runs = read_runs(metric_files)
    check_runs(runs, arms, list(ratios))
    meteor = read_meteor(meteor_file)
    page = Page(out_dir, runs, meteor, run_table(runs, prediction_files), arms, origins, dict(settings), int(seed), bool(slots))

    table = summary_table(page.summary, page.changes, origins)
    write_text(table.to_csv(index=False), out_dir / SUMMARY)
    page.written["summary"] = out_dir / SUMMARY

    sections = [
        headline_section(page),
        about_section(page),
        scores_section(page),
        figure_section(page),
        changes_section(page),
        slots_section(page),
        samples_section(page, captioned),
        twins_section(page, captioned, pools),
        notes_section(page),
        runs_section(page),
        report.compute_section(benchmark_files, benchmark_root),
        report.settings_section(versions, config_for_display),
    ]
    page.written["html"] = report.write_html(out_dir, f"Contam captioning report: {experiment}", [s for s in sections if s is not None], filename=PAGE)
    return page.written
