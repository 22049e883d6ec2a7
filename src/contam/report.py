"""Stage report: tables and figures like the paper's, as a self-contained HTML page.

``summary.csv`` is the tidy table behind everything: one row per (run, test set,
metric). Ratio 0 is one shared real-only run set; every arm's curve starts there.

Everything that changes what the page says arrives as an explicit argument of
:func:`build_report` (never read from the config here), so the rule can declare
it. Runs of one model are averaged over seeds and paired across sources, ratios
and seeds; that is refused when they were trained with different numbers of
processes (another effective batch size).
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd

from contam.images import load_rgb
from contam.io import atomic_path, write_text
from contam.layout import BASELINE_SOURCE, FLOOR, rule_of_job_file

TIDY_COLUMNS = ["source", "ratio", "model", "seed", "processes", "test_set", "metric", "value", "metrics_file"]
ORIGINS = ("generated", "control")


# ---- reading and checking the runs -------------------------------------------


def read_metrics(metric_files: list[str | Path]) -> dict[str, dict]:
    """Every run's metrics.json, read once, by path."""
    from contam.evaluate import read_metrics as read_one

    return {str(path): read_one(path) for path in metric_files}


def _run_name(path: str, data: dict) -> str:
    run = data["run"]
    return f"{run['source']} ratio {run['ratio']} {run['model']} seed {run['seed']} ({path})"


def check_processes(metrics: dict[str, dict]) -> None:
    """Refuse to average or pair runs of one model trained with different numbers of processes."""
    by_model: dict[str, dict[int, list[str]]] = {}
    for path, data in metrics.items():
        if data.get("processes") is None:
            raise ValueError(f"{path} does not say how many training processes its run used ('processes')")
        by_model.setdefault(data["run"]["model"], {}).setdefault(int(data["processes"]), []).append(_run_name(path, data))
    problems = [
        f"model {model}: " + "; ".join(f"processes={n}: {', '.join(sorted(runs))}" for n, runs in sorted(groups.items()))
        for model, groups in sorted(by_model.items())
        if len(groups) > 1
    ]
    if problems:
        raise ValueError(
            "runs of the same model were trained with different numbers of processes (effective batch = batch_size x processes), "
            "so they cannot be averaged or paired; retrain them alike:\n  " + "\n  ".join(problems)
        )


def check_origins(arms: list[str], origins: dict[str, str]) -> None:
    bad = {arm: origins.get(arm) for arm in arms if origins.get(arm) not in ORIGINS}
    if bad:
        raise ValueError(f"every arm needs an origin of {ORIGINS}; got {bad}")


# Evaluated beside test for choosing settings; not an out-of-distribution set.
VALIDATION = "validation"


def tidy_metrics(metrics: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for path, data in metrics.items():
        run = data["run"]
        key = (run["source"], float(run["ratio"]), run["model"], int(run["seed"]), int(data["processes"]))
        sets = {"test": data["test"], **({VALIDATION: data["validation"]} if "validation" in data else {}), **data.get("ood", {})}
        for test_set, result in sets.items():
            for metric in ("top1", "top5"):
                rows.append((*key, test_set, metric, float(result[metric]), str(path)))
    frame = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    return frame.sort_values(["test_set", "metric", "model", "source", "ratio", "seed"], ignore_index=True)


def with_shared_baseline(tidy: pd.DataFrame, arms: list[str]) -> pd.DataFrame:
    """Copy the shared ratio-0 rows into every arm, so each arm's curve starts at 0."""
    base = tidy[tidy["source"] == BASELINE_SOURCE]
    copies = [base.assign(source=arm) for arm in arms]
    return pd.concat([tidy[tidy["source"] != BASELINE_SOURCE], *copies], ignore_index=True)


def summarise(tidy: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for one seed) and seed count per (set, metric, model, source, ratio)."""
    keys = ["test_set", "metric", "model", "source", "ratio"]
    grouped = tidy.groupby(keys)["value"]
    out = grouped.agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"), seeds="count").reset_index()
    return out.sort_values(keys, ignore_index=True)


def paper_reference() -> pd.DataFrame:
    text = resources.files("contam").joinpath("data/resnet50_top1.csv").read_text()
    return pd.read_csv(StringIO(text))


# ---- paired contrasts ----------------------------------------------------------

CONTRAST_COLUMNS = ["seeds", "difference", "ci95_low", "ci95_high"]


def paired_t(diffs) -> dict:
    """Mean of paired differences and its 95 % t-interval (NaN with fewer than two pairs)."""
    from scipy import stats

    diffs = np.asarray(diffs, dtype=float)
    diffs = diffs[~np.isnan(diffs)]
    n = len(diffs)
    mean = float(diffs.mean()) if n else float("nan")
    half = float(stats.t.ppf(0.975, n - 1) * diffs.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"seeds": n, "difference": mean, "ci95_low": mean - half, "ci95_high": mean + half}


def _select(tidy: pd.DataFrame, test_set: str, metric: str) -> pd.DataFrame:
    return tidy[(tidy["test_set"] == test_set) & (tidy["metric"] == metric)]


def paired_differences(tidy: pd.DataFrame, arms: list[str], test_set: str = "test", metric: str = "top1") -> pd.DataFrame:
    """Accuracy at each ratio minus the shared ratio-0 run of the same model and seed.

    Pairing by seed removes the seed-to-seed spread of the baseline; the 95 %
    interval is a t-interval over seeds (NaN with one seed).
    """
    data = _select(tidy, test_set, metric)
    base = data[data["source"] == BASELINE_SOURCE][["model", "seed", "value"]]
    paired = data[data["source"].isin(arms)].merge(base, on=["model", "seed"], suffixes=("", "_base"))
    rows = [
        {"model": model, "source": source, "ratio": ratio, **paired_t(group["value"] - group["value_base"])}
        for (source, ratio, model), group in paired.groupby(["source", "ratio", "model"])
    ]
    return pd.DataFrame(rows, columns=["model", "source", "ratio", *CONTRAST_COLUMNS])


def generated_minus_control(tidy: pd.DataFrame, origins: dict[str, str], test_set: str = "test", metric: str = "top1") -> pd.DataFrame:
    """Generated source minus control source at the same ratio (> 0), model and seed, for every pair."""
    data = _select(tidy, test_set, metric)
    data = data[data["ratio"] > 0]
    rows = []
    for generated in sorted(s for s, o in origins.items() if o == "generated"):
        for control in sorted(s for s, o in origins.items() if o == "control"):
            pairs = data[data["source"] == generated].merge(data[data["source"] == control], on=["ratio", "model", "seed"], suffixes=("_g", "_c"))
            for (model, ratio), group in pairs.groupby(["model", "ratio"]):
                rows.append({"model": model, "generated": generated, "control": control, "ratio": ratio, **paired_t(group["value_g"] - group["value_c"])})
    return pd.DataFrame(rows, columns=["model", "generated", "control", "ratio", *CONTRAST_COLUMNS])


def headline_statements(contrasts: pd.DataFrame) -> list[str]:
    """In words, per model and (generated, control) pair: the contrast at its largest ratio (plain text)."""
    out = []
    for (model, generated, control), group in contrasts.groupby(["model", "generated", "control"], sort=True):
        row = group.loc[group["ratio"].idxmax()]
        start = f"{model}, {ratio_label(row['ratio'])} of the training images replaced: {generated} (generated) minus {control} (control) = {points(row['difference'])} points"
        if row["seeds"] < 2:
            out.append(f"{start} (n={row['seeds']} seed). With one seed there is no interval, so this cannot be told apart from seed-to-seed noise.")
            continue
        interval = f"95 % interval {bracket(row['ci95_low'], row['ci95_high'], points)}, n={row['seeds']} seeds"
        if row["ci95_low"] > 0 or row["ci95_high"] < 0:
            direction = "lower" if row["difference"] < 0 else "higher"
            out.append(f"{start} ({interval}). The interval excludes zero: training on {generated}'s generated images gave {direction} top-1 than the same share of {control}'s real images.")
        else:
            out.append(f"{start} ({interval}). The interval includes zero: these seeds do not show a difference between {generated} and {control}.")
    return out


# ---- per class -------------------------------------------------------------------


def per_class_metrics(metrics: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for data in metrics.values():
        run = data["run"]
        for label, value in data["test"].get("per_class_top1", {}).items():
            rows.append((run["source"], float(run["ratio"]), run["model"], int(run["seed"]), int(label), float(value)))
    return pd.DataFrame(rows, columns=["source", "ratio", "model", "seed", "label", "top1"])


def classes_hurt_most(per_class: pd.DataFrame, class_names: dict[int, str], top: int = 10) -> pd.DataFrame:
    """Per-class top-1 drop from ratio 0 to each arm's largest ratio (mean over models and seeds; runs counted)."""
    columns = ["source", "ratio", "class", "top1_at_0", "top1_at_ratio", "drop", "runs_at_0", "runs_at_ratio"]
    if per_class.empty:
        return pd.DataFrame(columns=columns)
    base = per_class[per_class["source"] == BASELINE_SOURCE].groupby("label")["top1"].agg(["mean", "count"])
    out = []
    for source, group in per_class[per_class["source"] != BASELINE_SOURCE].groupby("source"):
        ratio = group["ratio"].max()
        at = group[group["ratio"] == ratio].groupby("label")["top1"].agg(["mean", "count"])
        for label, row in at.iterrows():
            b_mean, b_count = (base.loc[label, "mean"], int(base.loc[label, "count"])) if label in base.index else (np.nan, 0)
            out.append({"source": source, "ratio": ratio, "class": class_names.get(int(label), str(label)), "top1_at_0": b_mean, "top1_at_ratio": row["mean"], "drop": b_mean - row["mean"], "runs_at_0": b_count, "runs_at_ratio": int(row["count"])})
    frame = pd.DataFrame(out, columns=columns).sort_values(["source", "drop"], ascending=[True, False])
    return frame.groupby("source", group_keys=False).head(top).reset_index(drop=True)


# ---- compute, distribution analysis, data quality ------------------------------------


def compute_per_rule(benchmark_files: list[str | Path], benchmark_root: str | Path) -> pd.DataFrame:
    """Wall-clock and CPU time per rule, summed over its ``benchmark:`` files.

    The rule is the first path component below ``benchmark_root`` (contam.layout names them).
    """
    rows = []
    for tsv in sorted(benchmark_files):
        rule = rule_of_job_file(str(benchmark_root), str(tsv))
        frame = pd.read_csv(tsv, sep="\t")
        last = lambda column: float(frame[column].iloc[-1]) if column in frame else np.nan  # noqa: E731
        rows.append({"rule": rule, "jobs": 1, "wall_s": last("s"), "cpu_s": last("cpu_time"), "max_rss_mb": last("max_rss")})
    if not rows:
        return pd.DataFrame(columns=["rule", "jobs", "wall_s", "cpu_s", "max_rss_mb"])
    frame = pd.DataFrame(rows)
    return frame.groupby("rule").agg(jobs=("jobs", "sum"), wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"), max_rss_mb=("max_rss_mb", "max")).reset_index().sort_values("wall_s", ascending=False, ignore_index=True)


INTERVAL_METRICS = ["fid", "precision", "recall", "density", "coverage"]
POINT_METRICS = ["kid", "diversity_ratio", "class_mean_precision", "class_mean_recall", "class_mean_density", "class_mean_coverage"]


def analysis_table(analysis_files: list[str | Path], origins: dict[str, str]) -> pd.DataFrame:
    """One row per comparison, the real-vs-real floor first; each interval metric with its 95 % bounds."""
    from contam.analysis import read_comparison

    rows = []
    for path in analysis_files:
        data = read_comparison(path)
        whole, source = data["whole"], data["source"]
        row = {"source": source, "role": "floor" if source == FLOOR else origins.get(source, "unknown"), "features": data.get("feature_extractor", ""), "n_reference": whole.get("n_reference"), "n_other": whole.get("n_other")}
        for key in INTERVAL_METRICS:
            low, high = whole.get(f"{key}_ci95") or (np.nan, np.nan)
            row.update({key: whole.get(key, np.nan), f"{key}_low": low, f"{key}_high": high})
        row.update({key: whole.get(key, np.nan) for key in POINT_METRICS})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["order"] = [0 if role == "floor" else 1 + ORIGINS.index(role) if role in ORIGINS else 3 for role in frame["role"]]
    return frame.sort_values(["order", "source"], ignore_index=True).drop(columns="order")


def against_floor(row: pd.Series, floor: pd.Series, key: str) -> str:
    """'below' or 'above' only when the whole interval lies beyond the floor's; else 'overlaps' or 'no interval'."""
    values = [row[f"{key}_low"], row[f"{key}_high"], floor[f"{key}_low"], floor[f"{key}_high"]]
    if any(v is None or v != v for v in values):
        return "no interval"
    if row[f"{key}_high"] < floor[f"{key}_low"]:
        return "below"
    if row[f"{key}_low"] > floor[f"{key}_high"]:
        return "above"
    return "overlaps"


def quality_rows(quality: dict) -> list[tuple[str, dict]]:
    """(name, counts) per indexed or generated set; per-split counts become one row per split."""
    rows = []
    for name, counts in quality.items():
        if isinstance(counts, dict) and counts and all(isinstance(v, dict) for v in counts.values()):
            rows.extend((f"{name}: {split}", sub) for split, sub in counts.items())
        else:
            rows.append((name, counts))
    return rows


# ---- formatting --------------------------------------------------------------------


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def ratio_label(ratio: float) -> str:
    return f"{100 * float(ratio):g} %"


def percent(value: float) -> str:
    return "n/a" if _missing(value) else f"{100 * value:.1f}"


def points(value: float) -> str:
    """A fraction as signed percentage points."""
    return "n/a" if _missing(value) else f"{100 * value:+.1f}"


def bracket(low: float, high: float, fmt) -> str:
    return "n/a" if _missing(low) or _missing(high) else f"[{fmt(low)}, {fmt(high)}]"


def mean_cell(mean: float, std: float, seeds: int) -> str:
    """'72.0 ± 2.8 (n=2)'; with one seed no spread is printed: '72.0 (n=1)'."""
    if seeds < 2 or _missing(std):
        return f"{100 * mean:.1f} (n={seeds})"
    return f"{100 * mean:.1f} ± {100 * std:.1f} (n={seeds})"


def with_interval(value: float, low: float, high: float, digits: int) -> str:
    fmt = lambda v: f"{v:.{digits}f}"  # noqa: E731
    if _missing(value):
        return "n/a"
    return f"{fmt(value)} {bracket(low, high, fmt)}" if not (_missing(low) or _missing(high)) else f"{fmt(value)} [no interval]"


def accuracy_table(summary: pd.DataFrame, test_set: str = "test") -> pd.DataFrame:
    """Wide table: one row per (model, source), one column per ratio, 'mean ± std (n=seeds)' in %."""
    data = summary[(summary["test_set"] == test_set) & (summary["metric"] == "top1")].copy()
    data["cell"] = [mean_cell(m, s, n) for m, s, n in zip(data["mean"], data["std"], data["seeds"])]
    data["ratio"] = [ratio_label(r) for r in data["ratio"]]
    wide = data.pivot_table(index=["model", "source"], columns="ratio", values="cell", aggfunc="first", sort=False).reset_index()
    ordered = ["model", "source"] + sorted([c for c in wide.columns if c.endswith("%")], key=lambda c: float(c[:-2]))
    wide = wide[ordered].fillna("–")
    wide.columns.name = None
    return wide


def contrast_display(frame: pd.DataFrame) -> pd.DataFrame:
    """A contrast table for the page: ratio in %, difference and interval in points."""
    shown = frame.drop(columns=["difference", "ci95_low", "ci95_high"]).copy()
    shown["ratio"] = [ratio_label(r) for r in shown["ratio"]]
    shown["difference (points)"] = [points(v) for v in frame["difference"]]
    shown["95 % interval"] = [bracket(lo, hi, points) for lo, hi in zip(frame["ci95_low"], frame["ci95_high"])]
    return shown


def compute_display(compute: pd.DataFrame) -> pd.DataFrame:
    """Seconds to one decimal, memory in whole MB, and a total row."""
    total = {"rule": "total", "jobs": compute["jobs"].sum(), "wall_s": compute["wall_s"].sum(), "cpu_s": compute["cpu_s"].sum(min_count=1), "max_rss_mb": compute["max_rss_mb"].max()}
    frame = pd.concat([compute, pd.DataFrame([total])], ignore_index=True)
    return pd.DataFrame({
        "rule": frame["rule"],
        "jobs": [str(int(v)) for v in frame["jobs"]],
        "wall (s)": ["n/a" if _missing(v) else f"{v:.1f}" for v in frame["wall_s"]],
        "CPU (s)": ["n/a" if _missing(v) else f"{v:.1f}" for v in frame["cpu_s"]],
        "peak memory (MB)": ["n/a" if _missing(v) else f"{v:.0f}" for v in frame["max_rss_mb"]],
    })


def html_table(frame: pd.DataFrame, raw: tuple[str, ...] = (), row_classes: list[str] | None = None) -> str:
    """A table (cells escaped except the ``raw`` columns) in a container that scrolls rather than widen the page."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cells = "".join(f"<td>{v if c in raw else html.escape(_cell(v))}</td>" for c, v in zip(frame.columns, row))
        cls = f" class='{row_classes[i]}'" if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _cell(value) -> str:
    if _missing(value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---- figures -------------------------------------------------------------------------


def _seed_range(seeds: pd.Series) -> str:
    low, high = int(seeds.min()), int(seeds.max())
    return f"n={low}" if low == high else f"n={low}–{high}"


def plot_accuracy(summary: pd.DataFrame, out_png: Path, show_paper: bool, origins: dict[str, str] | None = None, test_set: str = "test") -> None:
    """One panel per model (all arms side by side), plus the paper's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = summary[(summary["test_set"] == test_set) & (summary["metric"] == "top1")]
    models = sorted(data["model"].unique())
    panels = max(1, len(models) + (1 if show_paper else 0))
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text in the SVG
        fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.4), squeeze=False)
        for i, model in enumerate(models):
            _plot_model(axes[0, i], data[data["model"] == model], model, test_set, origins or {})
        if show_paper:
            _plot_paper(axes[0, -1])
        elif not models:
            axes[0, 0].text(0.5, 0.5, "no finished runs", ha="center")
        fig.tight_layout()
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        with atomic_path(out_png.with_suffix(".svg")) as tmp:
            fig.savefig(tmp, format="svg")
    plt.close(fig)


def _plot_model(ax, data: pd.DataFrame, model: str, test_set: str, origins: dict[str, str]) -> None:
    markers, styles, grays = ["o", "s", "^", "D", "v", "P"], ["-", "--", ":", "-."], ["black", "dimgray", "darkgray", "gray"]
    for j, source in enumerate(sorted(data["source"].unique())):
        line = data[data["source"] == source].sort_values("ratio")
        label = f"{source} ({origins[source]}, {_seed_range(line['seeds'])})" if source in origins else f"{source} ({_seed_range(line['seeds'])})"
        ax.errorbar(100 * line["ratio"], 100 * line["mean"], yerr=100 * line["std"], marker=markers[j % 6], linestyle=styles[j % 4], color=grays[j % 4], capsize=3, label=label)
    ax.set_xlabel("contamination: training images replaced (%)")
    ax.set_ylabel(f"top-1 on the real {test_set} set (%)")
    ax.set_title(f"{model}, this study: mean over seeds;\nbars: std over seeds (none with n=1)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _plot_paper(ax) -> None:
    ref = paper_reference()
    ax.errorbar(ref["contamination_pct"], ref["sd_imagenet_top1"], yerr=ref["uncertainty_pts"], marker="o", color="black", capsize=3, label="SD-ImageNet (generated)")
    ax.errorbar(ref["contamination_pct"], ref["webvision_top1"], yerr=ref["uncertainty_pts"], marker="s", linestyle="--", color="gray", capsize=3, label="WebVision (real control)")
    ax.set_xlabel("contamination (%)")
    ax.set_ylabel("ImageNet val top-1 (%)")
    ax.set_title("Paper (for reference): ResNet-50 on ImageNet, Hataya et al. 2023;\nbars: digitising uncertainty (reading the published\nfigure), not spread over seeds", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def sample_grid(real: pd.DataFrame, generated: pd.DataFrame, out_png: Path, per_class: int, max_classes: int, seed: int, title: str) -> None:
    """Rows are classes; real samples on the left, generated ones on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted(set(real["label"]) & set(generated["label"]))[:max_classes]
    fig, axes = plt.subplots(len(labels), 2 * per_class, figsize=(2 * per_class * 0.6, len(labels) * 0.65 + 0.6), squeeze=False)
    draw = np.random.default_rng(seed)
    for r, label in enumerate(labels):
        for half, pool in enumerate((real, generated)):
            members = pool[pool["label"] == label]["path"].to_numpy()
            picks = draw.choice(members, size=min(per_class, len(members)), replace=False)
            for c in range(per_class):
                ax = axes[r, half * per_class + c]
                ax.axis("off")
                if c < len(picks):
                    ax.imshow(load_rgb(picks[c]))
        name = str(real[real["label"] == label]["class_name"].iloc[0])
        axes[r, 0].set_title(f"{name}: real", fontsize=7, loc="left")
        axes[r, per_class].set_title(f"{name}: {title}", fontsize=7, loc="left")
    fig.suptitle(f"Real training images (left) and {title} images (right), same classes", fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ---- the page: one function per section ------------------------------------------------

Section = tuple[str, str]


@dataclass
class Study:
    """What the sections share: the runs, read and checked once."""

    out_dir: Path
    arms: list[str]
    origins: dict[str, str]
    settings: dict
    seed: int
    metrics: dict[str, dict]
    tidy: pd.DataFrame = field(init=False)
    summary: pd.DataFrame = field(init=False)
    written: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tidy = tidy_metrics(self.metrics) if self.metrics else pd.DataFrame(columns=TIDY_COLUMNS)
        self.summary = summarise(with_shared_baseline(self.tidy, self.arms))

    def rel(self, path: str | Path) -> str:
        return html.escape(os.path.relpath(path, self.out_dir))


def headline_section(study: Study) -> Section:
    statements = headline_statements(generated_minus_control(study.tidy, study.origins))
    if not statements:
        body = "<p>No generated-minus-control contrast yet: it needs a generated and a control source with finished runs at the same ratio, model and seed.</p>"
    else:
        body = "<ul class='headline'>" + "".join(f"<li>{html.escape(s)}</li>" for s in statements) + "</ul>"
    body += "<p class='note'>Top-1 on the real test set at the largest ratio, paired by model and seed; the interval is a 95 % t-interval over seeds (see the table of all ratios below).</p>"
    return "Headline: generated minus control", body


def about_section() -> Section:
    return "About", (
        "<p class='note'>Reproduction of Hataya, Bao &amp; Arai, <i>Will Large-scale Generative Models Corrupt Future Datasets?</i> (ICCV 2023). "
        "A share of the real training images is replaced by images of each source; ratio 0 is one shared real-only baseline. "
        "Accuracy is top-1 (%) on the real test set; n is the number of seeds behind a mean. "
        "The tidy table behind every number is <a href='summary.csv'>summary.csv</a>.</p>"
    )


def missing_section(missing_runs: list[str]) -> Section | None:
    if not missing_runs:
        return None
    items = "".join(f"<li><code>{html.escape(m)}</code></li>" for m in missing_runs)
    return "Incomplete study", f"<p>{len(missing_runs)} runs have no metrics yet; the tables and figures below leave them out:</p><ul>{items}</ul>"


def accuracy_section(study: Study) -> Section:
    accuracy_png = study.out_dir / "figures" / "accuracy.png"
    show_paper = study.settings.get("paper_reference", True)
    plot_accuracy(study.summary, accuracy_png, show_paper, study.origins)
    study.written["accuracy"] = accuracy_png
    body = html_table(accuracy_table(study.summary)) if len(study.tidy) else "<p>No finished runs yet.</p>"
    body += f"<p><img src='{study.rel(accuracy_png)}' alt='Top-1 accuracy against contamination ratio, per model and arm'></p>"
    body += "<p class='note'>Our error bars: sample standard deviation over seeds (n in the legend and the table); with one seed there is none.</p>"
    if show_paper:
        body += ("<p class='note'>Right-most panel: the paper's ResNet-50 ImageNet curve, read off its published figure; for reference only (another dataset and scale). "
                 "Its error bars are the digitising uncertainty of reading the published figure, not a spread over seeds.</p>")
    return "Classification accuracy (mean ± std over seeds, n = seeds)", body


def change_section(study: Study) -> Section | None:
    diffs = paired_differences(study.tidy, study.arms)
    if not len(diffs):
        return None
    note = "<p class='note'>Each arm at each ratio minus the shared ratio-0 run of the same model and seed. The interval is a t-interval over seeds; with two seeds it is wide, and with one it is not defined (n/a).</p>"
    return "Change against ratio 0 (paired by seed, percentage points, 95 % interval)", html_table(contrast_display(diffs)) + note


def contrast_section(study: Study) -> Section | None:
    contrasts = generated_minus_control(study.tidy, study.origins)
    if not len(contrasts):
        return None
    note = ("<p class='note'>The contrast the study is about: a generated source minus a control source (other real images) at the same ratio, model and seed, "
            "so the effect of replacing images at all cancels and what remains is the effect of their being generated. 95 % t-interval over seeds; n/a with one seed.</p>")
    return "Generated minus control (paired by seed, percentage points, 95 % interval)", html_table(contrast_display(contrasts)) + note


def validation_section(study: Study) -> Section | None:
    if not (study.tidy["test_set"] == VALIDATION).any():
        return None
    note = ("<p class='note'>The real validation split: settings chosen by hand (recipes, sizes of the study) are chosen on these numbers, "
            "never on the test split above.</p>")
    return "Validation accuracy (mean ± std over seeds, n = seeds)", html_table(accuracy_table(study.summary, VALIDATION)) + note


def ood_section(study: Study) -> Section | None:
    ood = study.tidy[~study.tidy["test_set"].isin(["test", VALIDATION]) & (study.tidy["metric"] == "top1")]
    if not len(ood):
        return None
    parts = [f"<h3>{html.escape(s)}</h3>" + html_table(accuracy_table(study.summary, s)) for s in sorted(ood["test_set"].unique())]
    return "Out-of-distribution accuracy (mean ± std over seeds, n = seeds)", "".join(parts)


def classes_section(study: Study, real_index: pd.DataFrame) -> Section | None:
    class_names = dict(zip(real_index["label"].astype(int), real_index["class_name"].astype(str)))
    hurt = classes_hurt_most(per_class_metrics(study.metrics), class_names)
    if not len(hurt):
        return None
    shown = pd.DataFrame({
        "source": hurt["source"], "ratio": [ratio_label(r) for r in hurt["ratio"]], "class": hurt["class"],
        "top-1 at 0 (%)": [percent(v) for v in hurt["top1_at_0"]], "top-1 at ratio (%)": [percent(v) for v in hurt["top1_at_ratio"]],
        "drop (points)": [points(v) for v in hurt["drop"]], "runs (at 0 / at ratio)": [f"{a} / {b}" for a, b in zip(hurt["runs_at_0"], hurt["runs_at_ratio"])],
    })
    return "Classes hurt most (top-1 at ratio 0 and at each arm's largest ratio; mean over models and seeds)", html_table(shown)


def distribution_section(analysis_files: list[str | Path], origins: dict[str, str]) -> Section | None:
    if not analysis_files:
        return None
    table = analysis_table(analysis_files, origins)
    shown = pd.DataFrame({
        "source": [f"{s} (floor: real vs real)" if r == "floor" else f"{s} ({r})" for s, r in zip(table["source"], table["role"])],
        "n (reference / other)": [f"{_cell(a)} / {_cell(b)}" for a, b in zip(table["n_reference"], table["n_other"])],
        **{("FID" if k == "fid" else k): [with_interval(v, lo, hi, 1 if k == "fid" else 3) for v, lo, hi in zip(table[k], table[f"{k}_low"], table[f"{k}_high"])] for k in INTERVAL_METRICS},
    })
    classes = ["floor" if r == "floor" else "" for r in table["role"]]
    more = table[["source", *POINT_METRICS]].rename(columns=lambda c: c.replace("_", " "))
    body = html_table(shown, row_classes=classes) + _distribution_notes(table, analysis_files)
    body += "<details><summary>More measures (no intervals)</summary>" + html_table(more) + "</details>"
    return "How contaminant images differ from real images", body


def _distribution_notes(table: pd.DataFrame, analysis_files: list[str | Path]) -> str:
    from contam.analysis import read_comparison

    first = read_comparison(analysis_files[0])
    ref, boot = first.get("reference", {}), first.get("bootstrap", {})
    notes = [
        f"Features: {html.escape(str(first.get('feature_extractor', '')))}. Reference: a real split no model has seen, {html.escape(str(ref.get('n_per_class', '?')))} images per class, "
        f"{html.escape(str(ref.get('classes', '?')))} classes. Values are followed by a 95 % interval [low, high] ({html.escape(str(boot.get('resamples', '?')))} bootstrap resamples, {html.escape(str(boot.get('method', '?')))}).",
        "The floor compares two disjoint halves of that real split: it is what sampling alone gives, so a source differs from real data only where its interval lies wholly beyond the floor's. "
        "Precision and density: how much of the source lies in the real manifold (fidelity); recall and coverage: how much of the real manifold the source covers (diversity); "
        "Kynkäänniemi et al. 2019, Naeem et al. 2020.",
    ]
    floors = table[table["role"] == "floor"]
    if floors.empty:
        notes.append("No real-vs-real floor was computed, so no source is compared with one.")
        return "".join(f"<p class='note'>{n}</p>" for n in notes)
    items = [_floor_statement(row, floors.iloc[0]) for _, row in table[table["role"] != "floor"].iterrows()]
    return "".join(f"<p class='note'>{n}</p>" for n in notes) + "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def _floor_statement(row: pd.Series, floor: pd.Series) -> str:
    """What the intervals support about one source against the floor, in words."""
    verdicts = {key: against_floor(row, floor, key) for key in INTERVAL_METRICS}
    parts = []
    for verdict, words in (("below", "below the floor"), ("above", "above the floor"), ("overlaps", "not distinguishable from the floor (intervals overlap)"), ("no interval", "not compared (no interval)")):
        keys = [("FID" if k == "fid" else k) for k, v in verdicts.items() if v == verdict]
        if keys:
            parts.append(f"{', '.join(keys)}: {words}")
    text = f"{row['source']} ({row['role']}): " + "; ".join(parts) + "."
    if verdicts["recall"] == "below" and verdicts["coverage"] == "below":
        text += " Its recall and coverage intervals both lie below the floor's: it covers less of the real distribution than a second real sample does."
    return text


def samples_section(study: Study, real_index: pd.DataFrame, generated: dict[str, pd.DataFrame]) -> Section | None:
    grids = []
    train = real_index[real_index["split"] == "train"]
    for name, index in generated.items():
        grid = study.out_dir / "figures" / f"samples-{name}.png"
        sample_grid(train, index, grid, study.settings.get("samples_per_class", 8), study.settings.get("max_classes_shown", 10), study.seed, name)
        study.written[f"samples-{name}"] = grid
        grids.append(f"<h3>{html.escape(name)}</h3><p><img src='{study.rel(grid)}' alt='Real and {html.escape(name)} samples per class'></p>")
    return ("Samples: real against generated, per class", "".join(grids)) if grids else None


INDEX_KEYS = ["found", "indexed", "skipped", "unknown_folders", "empty_classes"]
GENERATION_KEYS = ["shards", "rows", "images", "resumed", "generated", "regenerated", "flagged", "dropped_unsafe", "dropped_invalid"]


def quality_tables(quality: dict) -> list[tuple[str, pd.DataFrame]]:
    """Two readable tables, indexed folders and generated sources; lists count as their length."""
    groups: dict[str, list[tuple[str, dict]]] = {"Indexed image folders": [], "Generated sources": []}
    for name, counts in quality_rows(quality):
        counts = counts if isinstance(counts, dict) else {"value": counts}
        groups["Indexed image folders" if set(INDEX_KEYS[:3]) & set(counts) else "Generated sources"].append((name, counts))
    tables = []
    for title, rows in groups.items():
        preferred = INDEX_KEYS if title.startswith("Indexed") else GENERATION_KEYS
        present = {k for _, c in rows for k, v in c.items() if isinstance(v, (int, float, list)) and not isinstance(v, bool)}
        columns = [k for k in preferred if k in present] + sorted(present - set(preferred) - {"skipped_examples", "flagged_rows"})
        cells = [[name] + [len(c[k]) if isinstance(c.get(k), list) else c.get(k, "–") for k in columns] for name, c in rows]
        if rows:
            tables.append((title, pd.DataFrame(cells, columns=["source", *(k.replace("_", " ") for k in columns)])))
    return tables


def quality_section(quality: dict) -> Section:
    body = "".join(f"<h3>{html.escape(title)}</h3>" + html_table(table) for title, table in quality_tables(quality)) or "<p>No counts.</p>"
    body += "<details><summary>All counts, with examples of skipped images and flagged rows</summary><pre>" + html.escape(json.dumps(quality, indent=2)) + "</pre></details>"
    body += ("<p class='note'>Images skipped while indexing (unreadable, truncated); folders that name no class (counted); generated images flagged by a safety checker "
             "(regenerated with the next seed, or dropped), dropped as invalid (one flat colour, wrong size), and images kept from an interrupted shard (resumed).</p>")
    return "Data quality", body


def compute_section(benchmark_files: list[str | Path], benchmark_root: str | Path | None) -> Section | None:
    if not benchmark_files:
        return None
    if benchmark_root is None:
        raise ValueError("benchmark_files need a benchmark_root to name their rules")
    shown = compute_display(compute_per_rule(benchmark_files, benchmark_root))
    return "Compute spent per rule (from benchmark: files)", html_table(shown, row_classes=[""] * (len(shown) - 1) + ["total"])


def runs_section(study: Study) -> Section | None:
    if not len(study.tidy):
        return None
    runs = _select(study.tidy, "test", "top1")
    shown = pd.DataFrame({
        "source": runs["source"], "ratio": [f"{r:g}" for r in runs["ratio"]], "model": runs["model"], "seed": runs["seed"].astype(str),
        "processes": runs["processes"].astype(str), "test top-1 (%)": [f"{100 * v:.2f}" for v in runs["value"]],
        "metrics": [f"<a href='{study.rel(p)}'>metrics.json</a>" for p in runs["metrics_file"]],
    })
    return "Runs", html_table(shown, raw=("metrics",))


def settings_section(versions: dict, config_for_display: dict | None) -> Section:
    body = "<pre>" + html.escape(json.dumps(versions, indent=2)) + "</pre>"
    if config_for_display is not None:
        body += "<details><summary>Config (for display only)</summary><pre>" + html.escape(json.dumps(config_for_display, indent=2, default=str)) + "</pre></details>"
    return "Settings", body


STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    ".wide{max-width:100%;overflow-x:auto}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}th{background:#eee}tr.floor td{background:#f3f3f3;font-style:italic}tr.total td{font-weight:bold}"
    "ul.headline{font-size:1.1em;line-height:1.5}img{max-width:100%}pre{background:#f6f6f6;padding:.5em;overflow:auto}.note{color:#555}"
)


def remedies_sections_of(study: Study, remedies: dict | None) -> list[Section]:
    """The remedies sections (remedies.enabled), from rule summarise_remedies' summary."""
    if not remedies:
        return []
    from contam.report_remedies import remedies_sections

    return remedies_sections(remedies, study.out_dir, study.rel)


def write_html(out_dir: Path, title: str, sections: list[Section], filename: str = "index.html") -> Path:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, body in sections:
        anchor = "".join(c if c.isalnum() else "-" for c in heading.lower())
        parts.append(f"<section id='{anchor}'><h2>{html.escape(heading)}</h2>{body}</section>")
    parts.append("</body></html>")
    write_text("\n".join(parts), out_dir / filename)
    return out_dir / filename


def build_report(
    out_dir: str | Path,
    *,
    experiment: str,
    seed: int,
    arms: list[str],
    origins: dict[str, str],
    report_settings: dict,
    metric_files: list[str | Path],
    missing_runs: list[str],
    real_index: pd.DataFrame,
    generated: dict[str, pd.DataFrame],
    quality: dict,
    analysis_files: list[str | Path],
    benchmark_files: list[str | Path],
    benchmark_root: str | Path | None,
    versions: dict,
    config_for_display: dict | None = None,
    remedies: dict | None = None,
) -> dict[str, Path]:
    """Write index.html, summary.csv and the figures; return the files written.

    Raises ValueError before writing anything when an arm has no origin or runs
    of one model were trained with different numbers of processes.
    """
    check_origins(arms, origins)
    metrics = read_metrics(metric_files)
    check_processes(metrics)
    study = Study(Path(out_dir), list(arms), dict(origins), dict(report_settings), int(seed), metrics)
    write_text(study.tidy.drop(columns="metrics_file").to_csv(index=False), study.out_dir / "summary.csv")
    study.written["summary"] = study.out_dir / "summary.csv"
    sections = [
        headline_section(study),
        about_section(),
        missing_section(missing_runs),
        accuracy_section(study),
        change_section(study),
        contrast_section(study),
        ood_section(study),
        validation_section(study),
        classes_section(study, real_index),
        distribution_section(analysis_files, study.origins),
        *remedies_sections_of(study, remedies),
        samples_section(study, real_index, generated),
        quality_section(quality),
        compute_section(benchmark_files, benchmark_root),
        runs_section(study),
        settings_section(versions, config_for_display),
    ]
    write_html(study.out_dir, f"Contam report: {experiment}", [s for s in sections if s is not None])
    study.written["html"] = study.out_dir / "index.html"
    return study.written
