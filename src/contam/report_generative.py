"""Report page of the generative study: do generative models trained on contaminated data lose diversity?

Task 2 of Hataya, Bao & Arai (ICCV 2023), plus a self-consuming loop across model
generations. A *unit* is one trained generative model, scored against a held-out
real reference split (its ``metrics.json``). Two parts share one baseline:

* contamination: a share (ratio) of the generator's training images is replaced by
  a source's images; ratio 0 is one shared real-only unit per seed, and it starts
  every arm's curve;
* loop: generation g >= 1 trains on data built from earlier generations' samples
  (per regime); generation 0 is the same real-only ratio-0 unit of that seed.

Means over seeds carry a 95 % t-interval over seeds (none with one seed); changes
are paired by seed. The floor (two halves of the real reference split, scored like
samples) is what sampling alone gives. The page reuses contam.report's helpers and
look; it is written beside the classification report as ``generative.html``.
"""

from __future__ import annotations

import html
import math
import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from contam import report
from contam.images import load_rgb
from contam.io import atomic_path, read_parquet, write_text
from contam.layout import BASELINE_SOURCE, FLOOR, ratio_tag
from contam.report import Section, html_table, paired_t, ratio_label, with_interval
from contam.score_samples import read_record

PAGE = "generative.html"
SUMMARY = "generative_summary.csv"
STUDIES = ("contamination", "loop")

# metric key -> (name on the page, digits shown)
METRICS = {
    "fid": ("FID", 2),
    "kid": ("KID", 4),
    "precision": ("precision", 3),
    "recall": ("recall", 3),
    "density": ("density", 3),
    "coverage": ("coverage", 3),
    "tail_recall": ("tail recall", 3),
    "class_accuracy": ("class accuracy", 3),
    "diversity_ratio": ("diversity ratio", 3),
    "class_mean_precision": ("class-mean precision", 3),
    "class_mean_recall": ("class-mean recall", 3),
}
PLOT_METRICS = ["fid", "precision", "recall", "coverage", "tail_recall", "class_accuracy", "kid", "density"]
TABLE_METRICS = PLOT_METRICS
MORE_METRICS = ["diversity_ratio", "class_mean_precision", "class_mean_recall"]
# What the headline is about: how much of the real distribution the samples still reach.
HEADLINE_METRICS = ["recall", "coverage", "tail_recall"]
TOP_CLASSES = 10
UNIT_KEYS = ["study", "track", "level", "seed", "arm", "origin", "ratio", "regime", "generation"]
SUMMARY_KEYS = ["study", "track", "level", "arm", "origin", "ratio", "regime", "generation"]


# ---- reading and checking the units -------------------------------------------------


def _number(value) -> float:
    """A metric value as float; NaN when absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("nan")
    return float(value)


def metric_value(data: dict, key: str) -> float:
    source = data if key == "class_accuracy" else data.get("whole", {})
    return _number(source.get(key))


def read_units(metric_files: list[str | Path]) -> dict[str, dict]:
    """Every unit's metrics file, read once, by path."""
    return {str(path): read_record(path) for path in metric_files}


def _unit_name(path: str, unit: dict) -> str:
    return f"{unit.get('study')} {unit.get('track')}/{unit.get('level')}/seed-{unit.get('seed')} ({path})"


def check_units(units: dict[str, dict], arms: list[str], ratios: list[float], regimes: list[str]) -> None:
    """Refuse units the study does not declare (a stray arm, ratio or regime) and duplicates."""
    declared_ratios = {ratio_tag(r) for r in ratios} | {ratio_tag(0)}
    problems, seen = [], {}
    for path, data in units.items():
        unit = data.get("unit", {})
        name = _unit_name(path, unit)
        study = unit.get("study")
        if study == "contamination":
            ratio = unit.get("ratio")
            if ratio is None:
                problems.append(f"{name}: a contamination unit needs a ratio")
            elif float(ratio) == 0:
                if unit.get("arm") not in (BASELINE_SOURCE, None):
                    problems.append(f"{name}: ratio 0 is the shared real-only unit, but its arm is {unit.get('arm')!r}")
            elif unit.get("arm") not in arms:
                problems.append(f"{name}: arm {unit.get('arm')!r} is not one of {arms}")
            elif ratio_tag(ratio) not in declared_ratios:
                problems.append(f"{name}: ratio {ratio} is not one of {sorted(declared_ratios)}")
        elif study == "loop":
            if unit.get("regime") not in regimes:
                problems.append(f"{name}: regime {unit.get('regime')!r} is not one of {regimes}")
            if not isinstance(unit.get("generation"), int) or unit["generation"] < 1:
                problems.append(f"{name}: a loop unit needs a generation >= 1 (generation 0 is the real ratio-0 unit)")
        else:
            problems.append(f"{name}: study {study!r} is not one of {STUDIES}")
        key = (study, unit.get("track"), unit.get("level"), unit.get("seed"))
        if key in seen:
            problems.append(f"{name}: the same unit as {seen[key]}")
        seen[key] = path
    if problems:
        raise ValueError("the generative report cannot use these metric files:\n  " + "\n  ".join(problems))


def unit_table(units: dict[str, dict]) -> pd.DataFrame:
    """One row per unit: what it is, its sample sizes and every metric (NaN where missing)."""
    rows = []
    for path, data in units.items():
        unit = data.get("unit", {})
        row = {key: unit.get(key) for key in UNIT_KEYS}
        row["ratio"] = np.nan if row["ratio"] is None else float(row["ratio"])
        row["generation"] = np.nan if row["generation"] is None else float(row["generation"])
        whole, training = data.get("whole", {}), data.get("training_data", {})
        row.update({
            "n_reference": _number(whole.get("n_reference")),
            "n_other": _number(whole.get("n_other")),
            "training_images": _number(training.get("images")),
            "samples": _number(data.get("samples", {}).get("n")),
            "samples_dropped": _number(data.get("samples", {}).get("dropped")),
            "by_origin": training.get("by_origin", {}),
            "by_generation": training.get("by_generation", {}),
            "fit_steps": _number(data.get("fit", {}).get("steps")),
            "final_loss": _number(data.get("fit", {}).get("final_loss")),
            "init": data.get("fit", {}).get("init"),
            "file": path,
        })
        row.update({key: metric_value(data, key) for key in METRICS})
        rows.append(row)
    columns = [*UNIT_KEYS, "n_reference", "n_other", "training_images", "samples", "samples_dropped", "by_origin", "by_generation", "fit_steps", "final_loss", "init", "file", *METRICS]
    return pd.DataFrame(rows, columns=columns)


def is_baseline(units: pd.DataFrame) -> pd.Series:
    """The shared real-only units: contamination at ratio 0 (generation 0 of every regime)."""
    return (units["study"] == "contamination") & (units["ratio"] == 0)


def read_floor(floor_file: str | Path | None) -> dict:
    """The real-vs-real floor: per metric its value and bootstrap interval (NaN where absent)."""
    if floor_file is None:
        return {}
    data = read_record(floor_file)
    study = data.get("unit", {}).get("study")
    if study != "floor":
        raise ValueError(f"{floor_file} is not the floor file: its unit's study is {study!r}, not 'floor'")
    whole = data.get("whole", {})
    out = {"n_reference": _number(whole.get("n_reference")), "n_other": _number(whole.get("n_other")), "data": data}
    for key in METRICS:
        low, high = whole.get(f"{key}_ci95") or (np.nan, np.nan)
        out[key] = (metric_value(data, key), _number(low), _number(high))
    return out


# ---- over seeds ------------------------------------------------------------------------


def mean_interval(values) -> tuple[float, float, float, int]:
    """Mean over seeds, its 95 % t-interval and the seeds counted (NaNs left out; no interval with one)."""
    t = paired_t(values)  # a one-sample t-interval: the same computation on plain values
    return t["difference"], t["ci95_low"], t["ci95_high"], t["seeds"]


def _order(frame: pd.DataFrame, arms: list[str], regimes: list[str]) -> pd.DataFrame:
    """Floor, then the real-only unit, then arms and regimes in the order declared, by ratio or generation."""

    def rank(study: str, track: str, ratio: float) -> tuple[int, int]:
        if study == "floor":
            return 0, 0
        if study == "contamination":
            return 1, 0 if ratio == 0 else 1 + (arms.index(track) if track in arms else len(arms))
        return 2, regimes.index(track) if track in regimes else len(regimes)

    ranks = [rank(s, t, r) for s, t, r in zip(frame["study"], frame["track"], frame["ratio"])]
    x = frame["ratio"].astype(float).fillna(frame["generation"].astype(float)).fillna(-1)
    keyed = frame.assign(_s=[r[0] for r in ranks], _t=[r[1] for r in ranks], _x=x.to_numpy())
    return keyed.sort_values(["_s", "_t", "_x"], kind="stable").drop(columns=["_s", "_t", "_x"]).reset_index(drop=True)


def summarise_units(units: pd.DataFrame, floor: dict, arms: list[str], regimes: list[str]) -> pd.DataFrame:
    """One row per (study, track, level): per metric mean, 95 % t-interval over seeds and seeds counted.

    The floor row (study 'floor') has its value as the mean, no t-interval and n = 1.
    """
    rows = []
    for _, group in units.groupby(["study", "track", "level"], sort=False, dropna=False):
        first = group.iloc[0]
        row = {key: first[key] for key in SUMMARY_KEYS}
        row.update({"seeds": int(group["seed"].nunique()), "n_reference": group["n_reference"].min(), "n_other": group["n_other"].min()})
        for key in METRICS:
            mean, low, high, n = mean_interval(group[key])
            row.update({f"{key}_mean": mean, f"{key}_low": low, f"{key}_high": high, f"{key}_n": n})
        rows.append(row)
    if floor:
        row = {key: None for key in SUMMARY_KEYS} | {"study": "floor", "track": FLOOR, "level": "", "seeds": 1, "n_reference": floor["n_reference"], "n_other": floor["n_other"]}
        for key in METRICS:
            value = floor[key][0]
            row.update({f"{key}_mean": value, f"{key}_low": np.nan, f"{key}_high": np.nan, f"{key}_n": int(not math.isnan(value))})
        rows.append(row)
    columns = [*SUMMARY_KEYS, "seeds", "n_reference", "n_other", *(f"{key}_{part}" for key in METRICS for part in ("mean", "low", "high", "n"))]
    return _order(pd.DataFrame(rows, columns=columns), arms, regimes)


def curves(units: pd.DataFrame, study: str, lines: list[str]) -> pd.DataFrame:
    """Units as points of curves: x is the ratio (contamination) or the generation (loop).

    The real-only units are copied into every line at x = 0, so each arm's and each
    regime's curve starts at the same shared unit. Lines with no unit of their own are left out.
    """
    base = units[is_baseline(units)]
    column = "arm" if study == "contamination" else "regime"
    x = "ratio" if study == "contamination" else "generation"
    own = units[(units["study"] == study) & ~is_baseline(units)]
    parts = []
    for line in lines:
        mine = own[own[column] == line]
        if len(mine):
            parts += [mine.assign(line=line, x=mine[x].astype(float)), base.assign(line=line, x=0.0)]
    if not parts:
        return pd.DataFrame(columns=[*units.columns, "line", "x"])
    return pd.concat(parts, ignore_index=True)


def curve_summary(points: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    rows = []
    for (line, x), group in points.groupby(["line", "x"], sort=False):
        row = {"line": line, "x": x}
        for key in metrics:
            row.update(dict(zip((f"{key}_mean", f"{key}_low", f"{key}_high", f"{key}_n"), mean_interval(group[key]))))
        rows.append(row)
    return pd.DataFrame(rows)


# ---- paired changes and the headline ----------------------------------------------------

CHANGE_COLUMNS = ["study", "track", "x", "against", "metric", "seeds", "difference", "ci95_low", "ci95_high"]


def paired_changes(units: pd.DataFrame, arms: list[str], regimes: list[str], origins: dict[str, str], metrics: list[str]) -> pd.DataFrame:
    """Paired by seed: each arm's ratio and each regime's generation minus the real-only unit;
    and each generated arm minus each control arm at the same ratio."""
    rows = []
    for study, lines in (("contamination", arms), ("loop", regimes)):
        for line in lines:
            points = curves(units, study, [line])
            if not len(points):
                continue
            base = points[points["x"] == 0].set_index("seed")
            against = "ratio 0" if study == "contamination" else "generation 0"
            for x, group in points[points["x"] > 0].groupby("x"):
                group = group.set_index("seed")
                seeds = group.index.intersection(base.index)
                for key in metrics:
                    rows.append({"study": study, "track": line, "x": x, "against": against, "metric": key, **paired_t(group.loc[seeds, key] - base.loc[seeds, key])})
    contamination = units[(units["study"] == "contamination") & ~is_baseline(units)]
    for generated in [a for a in arms if origins.get(a) == "generated"]:
        for control in [a for a in arms if origins.get(a) == "control"]:
            pairs = contamination[contamination["arm"] == generated].merge(contamination[contamination["arm"] == control], on=["ratio", "seed"], suffixes=("_g", "_c"))
            for x, group in pairs.groupby("ratio"):
                for key in metrics:
                    rows.append({"study": "contrast", "track": generated, "x": x, "against": control, "metric": key, **paired_t(group[f"{key}_g"] - group[f"{key}_c"])})
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


def verdict(seeds: int, low: float, high: float) -> str:
    """'higher' or 'lower' only when the whole 95 % interval lies on one side of zero."""
    if seeds < 1:
        return "no pairs"
    if seeds < 2 or report._missing(low) or report._missing(high):
        return f"not resolved (n={seeds}: no interval)"
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    return "not resolved (the interval contains 0)"


def _signed(value: float, key: str) -> str:
    return "n/a" if report._missing(value) else f"{value:+.{METRICS[key][1]}f}"


def _level_text(study: str, x: float) -> str:
    return f"generation {int(x)}" if study == "loop" else f"{ratio_label(x)} of the training images replaced"


def headline_statements(changes: pd.DataFrame, origins: dict[str, str]) -> list[str]:
    """Plain sentences: per arm at its largest ratio, per regime at its last generation, per generated/control pair."""
    out = []
    for (study, track, against), group in changes.groupby(["study", "track", "against"], sort=False):
        x = group["x"].max()
        at = group[group["x"] == x]
        n = int(at["seeds"].max())
        if study == "contamination":
            start = f"{track} ({origins.get(track, '?')} images), {_level_text(study, x)}, against the real-only model (ratio 0)"
        elif study == "loop":
            start = f"Loop regime {track}, generation {int(x)} against generation 0 (the real-only model)"
        else:
            start = f"{track} (generated) minus {against} (control), both with {ratio_label(x)} of the training images replaced"
        parts = []
        for _, row in at.iterrows():
            key = row["metric"]
            seeds = f", n={int(row['seeds'])}" if int(row["seeds"]) != n else ""
            interval = "" if int(row["seeds"]) < 2 else " " + report.bracket(row["ci95_low"], row["ci95_high"], lambda v, k=key: _signed(v, k))
            parts.append(f"{METRICS[key][0]} {_signed(row['difference'], key)}{interval}{seeds}: {verdict(int(row['seeds']), row['ci95_low'], row['ci95_high'])}")
        out.append(f"{start}, paired by seed (n={n} seed{'s' if n != 1 else ''}): " + "; ".join(parts) + ".")
    return out


# ---- figures ------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(summary: pd.DataFrame, floor: dict, lines: list[str], labels: dict[str, str], x_label: str, x_scale: float, out_png: Path, title: str, integer_x: bool = False) -> None:
    """One panel per metric; one line per arm or regime, mean over seeds with 95 % t-interval bars; the floor dashed."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    markers, styles = ["o", "s", "^", "D", "v", "P"], ["-", "--", ":", "-."]
    xs = x_scale * summary["x"].to_numpy(dtype=float) if len(summary) else np.zeros(1)
    dodge = 0.012 * (xs.max() - xs.min() or 1.0)  # lines side by side, so bars at a shared point stay visible
    fig, axes = plt.subplots(2, 4, figsize=(18, 8.6), squeeze=False)
    for ax, key in zip(axes.flat, PLOT_METRICS):
        for j, line in enumerate(lines):
            shift = (j - (len(lines) - 1) / 2) * dodge
            data = summary[summary["line"] == line].sort_values("x")
            if not len(data):
                continue
            mean, low, high = (data[f"{key}_{p}"].to_numpy(dtype=float) for p in ("mean", "low", "high"))
            err = np.vstack([mean - low, high - mean])
            err = np.where(np.isfinite(err), np.maximum(err, 0), 0.0)  # no bar where there is no interval (n=1)
            ax.errorbar(x_scale * data["x"].to_numpy(dtype=float) + shift, mean, yerr=err, marker=markers[j % 6], linestyle=styles[j % 4], color=f"C{j}", capsize=3, label=labels[line])
        if floor and not math.isnan(floor[key][0]):
            ax.axhline(floor[key][0], linestyle="--", color="gray", linewidth=1, label="floor: real vs real")
        ax.set_title(METRICS[key][0], fontsize=10)
        ax.set_xlabel(x_label, fontsize=8)
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _seed_counts(summary: pd.DataFrame, line: str) -> str:
    counts = summary[summary["line"] == line][[f"{k}_n" for k in PLOT_METRICS]].to_numpy()
    counts = counts[counts > 0]
    if not len(counts):
        return "n=0"
    low, high = int(counts.min()), int(counts.max())
    return f"n={low}" if low == high else f"n={low}–{high}"


THUMB = 48


def _resolve(path: str, index_file: str | Path) -> str:
    """An index's image path as written, else relative to the index's folder."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    return str(Path(index_file).parent / path)


def _mosaic(paths: list[str], per_class: int) -> np.ndarray:
    """Up to ``per_class`` thumbnails tiled in a near-square block on white."""
    cols = max(1, math.ceil(math.sqrt(per_class)))
    rows = max(1, math.ceil(per_class / cols))
    gap = 2
    block = np.full((rows * (THUMB + gap) - gap, cols * (THUMB + gap) - gap, 3), 255, dtype=np.uint8)
    for i, path in enumerate(paths):
        r, c = divmod(i, cols)
        thumb = np.asarray(load_rgb(path).resize((THUMB, THUMB)))
        block[r * (THUMB + gap) : r * (THUMB + gap) + THUMB, c * (THUMB + gap) : c * (THUMB + gap) + THUMB] = thumb
    return block


def generation_grid(rows: list[tuple[str, pd.DataFrame | None]], class_names: dict[int, str], labels: list[int], per_class: int, seed: int, out_png: Path, title: str) -> None:
    """One row per image set (real, then generations), one column per class; images picked with a seeded draw."""
    plt = _pyplot()
    width = 1.3 * len(labels) + 1.6
    fig, axes = plt.subplots(len(rows), len(labels), figsize=(width, 1.35 * len(rows) + 0.9), squeeze=False)
    for r, (name, index) in enumerate(rows):
        for c, label in enumerate(labels):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            members = [] if index is None else index.loc[index["label"] == label, "path"].tolist()
            if members:
                draw = np.random.default_rng([int(seed), r, int(label)])  # one draw per cell: rows do not shift each other
                picks = sorted(draw.choice(len(members), size=min(per_class, len(members)), replace=False))
                ax.imshow(_mosaic([members[i] for i in picks], per_class))
            else:
                ax.text(0.5, 0.5, "no samples", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            if r == 0:
                ax.set_title(class_names.get(int(label), str(label)), fontsize=7)
            if c == 0:
                ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(textwrap.fill(title, max(30, int(width * 11))), fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def sample_key(track: str, level: str, seed) -> str:
    return f"{track}/{level}/seed-{seed}"


# ---- the page: one function per section ---------------------------------------------------


class Page:
    """What the sections share: the units, the floor and where things go."""

    def __init__(self, out_dir: Path, units: pd.DataFrame, floor: dict, arms: list[str], regimes: list[str], origins: dict[str, str], settings: dict, seed: int) -> None:
        self.out_dir, self.units, self.floor = out_dir, units, floor
        self.arms, self.regimes, self.origins, self.settings, self.seed = arms, regimes, origins, settings, seed
        self.written: dict[str, Path] = {}

    def rel(self, path: str | Path) -> str:
        return html.escape(os.path.relpath(path, self.out_dir))

    def has(self, study: str) -> bool:
        return bool(((self.units["study"] == study) & ~is_baseline(self.units)).any())


def headline_section(page: Page) -> Section:
    changes = paired_changes(page.units, page.arms, page.regimes, page.origins, HEADLINE_METRICS)
    statements = headline_statements(changes, page.origins)
    if statements:
        body = "<ul class='headline'>" + "".join(f"<li>{html.escape(s)}</li>" for s in statements) + "</ul>"
    else:
        body = "<p>No paired change yet: it needs the real-only unit and a contaminated or loop unit of the same seed.</p>"
    body += (
        "<p class='note'>Recall, coverage and tail recall measure how much of the real distribution the samples reach (diversity); lower is less diverse. "
        "Differences are paired by seed, followed by a 95 % t-interval over seeds [low, high]. 'higher' or 'lower' is said only when the interval excludes 0; "
        "'not resolved' when it contains 0 or when one seed gives no interval.</p>"
    )
    return "Headline: diversity of the generative models", body


def about_section(page: Page, floor_data: dict | None, any_unit: dict) -> Section:
    first = floor_data or any_unit
    reference = first.get("reference", {})
    tail = first.get("tail_fraction")
    tail_text = f"the bottom {100 * float(tail):g} %" if isinstance(tail, (int, float)) else "a bottom share"

    def esc(value) -> str:
        return html.escape(str(value))

    items = [
        ("Reproduction of task 2 of Hataya, Bao &amp; Arai, <i>Will Large-scale Generative Models Corrupt Future Datasets?</i> (ICCV 2023): "
         "generative models trained on contaminated data, plus a self-consuming loop over model generations."),
        (f"Every metric compares a model's samples with a held-out real reference split ({esc(reference.get('n_per_class', '?'))} images per class, "
         f"{esc(reference.get('classes', '?'))} classes) that no generator and no feature extractor saw."),
        ("Precision and density: how much of the samples lies on the real manifold (fidelity). Recall and coverage: how much of the real manifold the samples reach (diversity) "
         "(Kynkäänniemi et al. 2019; Naeem et al. 2020). FID and KID: distances between the feature distributions (lower is closer)."),
        f"Tail recall: recall restricted to the reference points of lowest density, {tail_text} by k-NN radius (the largest radii): rare modes, where a loss of diversity shows first.",
        "Class accuracy: the share of samples that a classifier trained on real data only assigns to the class the sample was conditioned on.",
        "Floor: half B of the real reference split scored exactly like samples; what a second real sample gives, sampling noise alone (dashed in the figures).",
        ("Contamination: a share (ratio) of the generator's training images is replaced by a source's images; ratio 0 is one shared real-only model per seed. "
         "Loop: generation g trains on data built, per regime, from real images and earlier generations' samples; generation 0 is the same real-only model. "
         "What each unit trained on is listed under Units."),
        (f"Means are over seeds with a 95 % t-interval over seeds [low, high]; n is the number of seeds; with one seed there is no interval. "
         f"The table behind the numbers is <a href='{SUMMARY}'>{SUMMARY}</a>."),
    ]
    return "What this measures", "".join(f"<p class='note'>{item}</p>" for item in items)


def _cell(key: str, mean: float, low: float, high: float, n: int) -> str:
    digits = METRICS[key][1]
    if n < 1 or report._missing(mean):
        return "n/a"
    if n < 2:
        return f"{mean:.{digits}f} (n=1)"
    return with_interval(mean, low, high, digits)


def _level_label(row: pd.Series) -> str:
    if row["study"] == "floor":
        return "–"
    if row["study"] == "loop":
        return f"generation {int(row['generation'])}"
    label = f"ratio {ratio_label(row['ratio'])}"
    return label + " (= generation 0)" if row["ratio"] == 0 else label


def _track_label(row: pd.Series, origins: dict[str, str]) -> str:
    if row["study"] == "floor":
        return f"{FLOOR} (floor)"
    if row["study"] == "contamination":
        return f"{row['track']} ({origins.get(row['arm'], 'real only' if row['ratio'] == 0 else '?')})"
    return str(row["track"])


def _count(value) -> str:
    return "n/a" if report._missing(value) else f"{value:.0f}"


def numbers_section(page: Page, summary: pd.DataFrame, metrics: list[str], title: str, note: bool = True) -> Section:
    rows = []
    for _, row in summary.iterrows():
        shown = {
            "study": row["study"], "unit": _track_label(row, page.origins), "level": _level_label(row), "seeds": "–" if row["study"] == "floor" else str(int(row["seeds"])),
            "n (reference / other)": f"{_count(row['n_reference'])} / {_count(row['n_other'])}",
        }
        for key in metrics:
            if row["study"] == "floor":
                value, low, high = page.floor[key]
                shown[METRICS[key][0]] = with_interval(value, low, high, METRICS[key][1])
            else:
                shown[METRICS[key][0]] = _cell(key, row[f"{key}_mean"], row[f"{key}_low"], row[f"{key}_high"], int(row[f"{key}_n"]))
        rows.append(shown)
    frame = pd.DataFrame(rows)
    body = html_table(frame, row_classes=["floor" if s == "floor" else "" for s in summary["study"]])
    if note:
        body += ("<p class='note'>Mean over seeds [95 % t-interval over seeds]; (n=1): one seed, no interval. The floor row (real vs real) is one scoring; "
                 "its interval is its own bootstrap 95 % interval where the floor file gives one. n (reference / other): reference points and samples scored (the fewest over seeds).</p>")
    return title, body


def curve_section(page: Page, study: str) -> Section | None:
    if not page.has(study):
        return None
    lines = page.arms if study == "contamination" else page.regimes
    points = curves(page.units, study, lines)
    summary = curve_summary(points, PLOT_METRICS)
    lines = [line for line in lines if (summary["line"] == line).any()]
    if study == "contamination":
        png = page.out_dir / "figures" / "generative_ratio.png"
        labels = {a: f"{a} ({page.origins.get(a, '?')}, {_seed_counts(summary, a)})" for a in lines}
        plot_curves(summary, page.floor, lines, labels, "training images replaced (%)", 100.0, png,
                    "Generative models trained on contaminated data: mean over seeds, bars 95 % t-interval over seeds (none with n=1); ratio 0 is the shared real-only model")
        page.written["ratio_figure"] = png
        heading, alt = "Contamination: metrics against the share of training images replaced", "Metrics against contamination ratio, one line per arm"
    else:
        png = page.out_dir / "figures" / "generative_loop.png"
        labels = {r: f"{r} ({_seed_counts(summary, r)})" for r in lines}
        plot_curves(summary, page.floor, lines, labels, "generation (0 = the real-only model)", 1.0, png,
                    "Self-consuming loop: mean over seeds, bars 95 % t-interval over seeds (none with n=1); generation 0 is the shared real-only model", integer_x=True)
        page.written["loop_figure"] = png
        heading, alt = "Loop: metrics against model generation", "Metrics against generation, one line per regime"
    body = f"<p><img src='{page.rel(png)}' alt='{alt}'></p><p class='note'>Dashed gray: the real-vs-real floor. n in the legend: seeds behind each point.</p>"
    return heading, body


def changes_section(page: Page) -> Section | None:
    changes = paired_changes(page.units, page.arms, page.regimes, page.origins, PLOT_METRICS)
    if not len(changes):
        return None
    rows = []
    for (study, track, x, against), group in changes.groupby(["study", "track", "x", "against"], sort=False):
        shown = {"comparison": f"{track} (generated) minus {against} (control)" if study == "contrast" else f"{track} minus {against}",
                 "at": _level_text(study, x), "seeds": str(int(group["seeds"].max()))}
        for _, row in group.iterrows():
            key = row["metric"]
            interval = report.bracket(row["ci95_low"], row["ci95_high"], lambda v, k=key: _signed(v, k))
            shown[METRICS[key][0]] = f"{_signed(row['difference'], key)} {interval}" if int(row["seeds"]) > 1 else f"{_signed(row['difference'], key)} (n={int(row['seeds'])})"
        rows.append(shown)
    note = "<p class='note'>Differences paired by seed [95 % t-interval over seeds]; (n=1): one pair, no interval.</p>"
    return "Changes, paired by seed", html_table(pd.DataFrame(rows)) + note


def samples_section(page: Page, sample_indexes: dict[str, str], real_index: pd.DataFrame) -> Section | None:
    if not page.has("loop"):
        return None
    per_class = int(page.settings.get("samples_per_class", 8))
    max_classes = int(page.settings.get("max_classes_shown", 10))
    real = real_index[real_index["split"] == "train"] if "split" in real_index and (real_index["split"] == "train").any() else real_index
    class_names = dict(zip(real_index["label"].astype(int), real_index["class_name"].astype(str))) if "class_name" in real_index else {}
    labels = sorted(int(v) for v in real["label"].unique())[:max_classes]
    base = page.units[is_baseline(page.units)]
    parts = []
    for regime in page.regimes:
        loop = page.units[(page.units["study"] == "loop") & (page.units["regime"] == regime)]
        if not len(loop):
            continue
        seed = min(loop["seed"].unique())
        rows: list[tuple[str, pd.DataFrame | None]] = [("real (training)", real)]
        generation_units = [("generation 0\n(real only)", base[base["seed"] == seed])]
        generation_units += [(f"generation {g}", loop[(loop["generation"] == g) & (loop["seed"] == seed)]) for g in sorted(loop["generation"].unique().astype(int))]
        for name, unit in generation_units:
            path = sample_indexes.get(sample_key(unit["track"].iloc[0], unit["level"].iloc[0], seed)) if len(unit) else None
            if path is None:
                rows.append((name, None))
                continue
            index = read_parquet(path, columns=["path", "label"])
            rows.append((name, index.assign(path=[_resolve(p, path) for p in index["path"]])))
        png = page.out_dir / "figures" / f"generative_samples_{regime}.png"
        generation_grid(rows, class_names, labels, per_class, page.seed, png, f"Loop regime {regime}, seed {seed}: real training images, then each generation's samples ({per_class} per class)")
        page.written[f"samples_{regime}"] = png
        parts.append(f"<h3>{html.escape(regime)}</h3><p><img src='{page.rel(png)}' alt='Samples per generation, regime {html.escape(regime)}'></p>")
    note = (f"<p class='note'>One row per generation of the first seed, below a row of real training images; up to {per_class} images per class for at most {max_classes} classes, "
            f"picked with a draw seeded by the experiment seed ({page.seed}), so the same files give the same grid. Collapse shows as rows that grow alike.</p>")
    return "Samples across generations", "".join(parts) + note


def per_class_table(units: list[dict], base: list[dict]) -> pd.DataFrame:
    """Per class: recall and class accuracy at the baseline and at the end, mean over seeds,
    and the recall drop with its 95 % t-interval over the seeds paired at both ends."""
    def by_seed(datas: list[dict]) -> pd.DataFrame:
        rows = [(d["unit"].get("seed"), int(r["label"]), "recall", _number(r.get("recall"))) for d in datas for r in d.get("per_class", [])]
        rows += [(d["unit"].get("seed"), int(r["label"]), "accuracy", _number(r.get("accuracy"))) for d in datas for r in d.get("class_accuracy_per_class", [])]
        frame = pd.DataFrame(rows, columns=["seed", "label", "metric", "value"])
        if frame.empty:
            return pd.DataFrame(columns=["recall", "accuracy"], index=pd.MultiIndex.from_tuples([], names=["seed", "label"]), dtype=float)
        return frame.pivot_table(index=["seed", "label"], columns="metric", values="value", aggfunc="mean").reindex(columns=["recall", "accuracy"])

    paired = by_seed(base).join(by_seed(units), lsuffix="_start", rsuffix="_end", how="inner")
    paired["drop"] = paired["recall_start"] - paired["recall_end"]
    rows = []
    for label, group in paired.groupby(level="label"):
        drop = paired_t(group["drop"])
        rows.append({"label": label, **group[["recall_start", "recall_end", "accuracy_start", "accuracy_end"]].mean().to_dict(),
                     "recall_drop": drop["difference"], "drop_low": drop["ci95_low"], "drop_high": drop["ci95_high"], "seeds": drop["seeds"]})
    columns = ["label", "recall_start", "recall_end", "accuracy_start", "accuracy_end", "recall_drop", "drop_low", "drop_high", "seeds"]
    return pd.DataFrame(rows, columns=columns).sort_values("recall_drop", ascending=False, na_position="last", ignore_index=True)


def classes_section(page: Page, units: dict[str, dict], real_index: pd.DataFrame) -> Section | None:
    class_names = dict(zip(real_index["label"].astype(int), real_index["class_name"].astype(str))) if "class_name" in real_index else {}
    frame = page.units
    if not is_baseline(frame).any():
        return None
    parts = []
    for study, column, lines in (("contamination", "arm", page.arms), ("loop", "regime", page.regimes)):
        for line in lines:
            own = frame[(frame["study"] == study) & (frame[column] == line) & ~is_baseline(frame)]
            if not len(own):
                continue
            x = "ratio" if study == "contamination" else "generation"
            last = own[own[x] == own[x].max()]
            paired = frame[is_baseline(frame) & frame["seed"].isin(last["seed"])]  # the same seeds at both ends
            table = per_class_table([units[f] for f in last["file"]], [units[f] for f in paired["file"]]).head(TOP_CLASSES)
            if not len(table):
                continue
            shown = pd.DataFrame({
                "class": [class_names.get(int(label), str(label)) for label in table["label"]],
                "recall at 0": [f"{v:.3f}" for v in table["recall_start"]], "recall at end": [f"{v:.3f}" for v in table["recall_end"]],
                "recall drop [95 % t-interval]": [with_interval(v, lo, hi, 3) for v, lo, hi in zip(table["recall_drop"], table["drop_low"], table["drop_high"])],
                "class accuracy at 0": [f"{v:.3f}" for v in table["accuracy_start"]], "class accuracy at end": [f"{v:.3f}" for v in table["accuracy_end"]],
            }).replace("nan", "n/a").replace("+nan", "n/a")
            per_class = units[last["file"].iloc[0]].get("reference", {}).get("n_per_class", "?")
            sizes = f" (n={last['seed'].nunique()} seeds, {per_class} images per class on each side)"
            parts.append(f"<h3>{html.escape(line)}: {html.escape(_level_text(study, own[x].max()) + sizes)}</h3>" + html_table(shown))
    if not parts:
        return None
    note = f"<p class='note'>Per class, mean over the same seeds: at the real-only model (0) and at each arm's largest ratio or each regime's last generation (end); the {TOP_CLASSES} largest recall drops. The drop's interval is over the seeds paired at both ends; with 2 seeds it is wide, and ranking the classes by it picks the noisiest first, so these tables are for finding classes to look at.</p>"
    return "Classes whose diversity dropped most", "".join(parts) + note


def units_section(page: Page) -> Section | None:
    if not len(page.units):
        return None
    frame = _order(page.units, page.arms, page.regimes)
    shown = pd.DataFrame({
        "study": frame["study"], "unit": [f"{t}/{lv}" for t, lv in zip(frame["track"], frame["level"])], "seed": frame["seed"].astype(str),
        "training images": [_count(v) for v in frame["training_images"]],
        "by origin": [", ".join(f"{k}: {v}" for k, v in sorted(d.items())) for d in frame["by_origin"]],
        "by generation": [", ".join(f"{k}: {v}" for k, v in sorted(d.items(), key=lambda kv: (len(str(kv[0])), str(kv[0])))) for d in frame["by_generation"]],
        "samples kept": [_count(v) for v in frame["samples"]], "samples dropped (flat or wrong size)": [_count(v) for v in frame["samples_dropped"]],
        "fit steps": [_count(v) for v in frame["fit_steps"]], "final loss": [report._cell(v) for v in frame["final_loss"]], "init": frame["init"].astype(str),
        "metrics": [f"<a href='{page.rel(p)}'>metrics.json</a>" for p in frame["file"]],
    })
    return "Units", "<details><summary>Every trained generative model and what it trained on</summary>" + html_table(shown, raw=("metrics",)) + "</details>"


def build_generative_report(
    out_dir: str | Path,
    *,
    experiment: str,
    seed: int,
    metric_files: list[str | Path],
    floor_file: str | Path | None,
    sample_indexes: dict[str, str],
    real_index: pd.DataFrame,
    regimes: list[str],
    ratios: list[float],
    arms: list[str],
    origins: dict[str, str],
    report_settings: dict,
    benchmark_files: list[str | Path],
    benchmark_root: str | Path | None,
    versions: dict,
    config_for_display: dict | None,
) -> dict[str, Path]:
    """Write generative.html, generative_summary.csv and the figures into ``out_dir``; return them by name.

    ``sample_indexes`` maps '<track>/<level>/seed-<seed>' to a unit's samples index.
    Raises ValueError before writing anything when an arm has no origin or a unit
    is not one the study declares (arm, ratio, regime) or appears twice.
    """
    out_dir = Path(out_dir)
    report.check_origins(list(arms), dict(origins))
    units = read_units(metric_files)
    check_units(units, list(arms), list(ratios), list(regimes))
    floor = read_floor(floor_file)
    page = Page(out_dir, unit_table(units), floor, list(arms), list(regimes), dict(origins), dict(report_settings), int(seed))

    summary = summarise_units(page.units, floor, page.arms, page.regimes)
    write_text(summary.to_csv(index=False), out_dir / SUMMARY)
    page.written["summary"] = out_dir / SUMMARY

    sections = [
        headline_section(page),
        about_section(page, floor.get("data"), next(iter(units.values()), {})),
        curve_section(page, "contamination"),
        curve_section(page, "loop"),
        numbers_section(page, summary, TABLE_METRICS, "Numbers (mean [95 % t-interval over seeds]; floor first)") if len(summary) else None,
        changes_section(page),
        samples_section(page, sample_indexes, real_index),
        classes_section(page, units, real_index),
        ("More measures (mean over seeds)", "<details><summary>Diversity ratio and class-mean precision and recall</summary>" + numbers_section(page, summary, MORE_METRICS, "", note=False)[1] + "</details>") if len(summary) else None,
         units_section(page),
        report.compute_section(benchmark_files, benchmark_root),
        report.settings_section(versions, config_for_display),
    ]
    page.written["html"] = report.write_html(out_dir, f"Contam generative report: {experiment}", [s for s in sections if s is not None], filename=PAGE)
    return page.written
