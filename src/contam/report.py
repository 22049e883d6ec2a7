"""Stage report: tables and figures like the paper's, as a self-contained HTML page.

``summary.csv`` is the tidy table behind everything: one row per (run, test set,
metric). Ratio 0 is one shared real-only run set; every arm's curve starts there.
"""

from __future__ import annotations

import html
import json
import os
from importlib import resources
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd

from contam.config import BASELINE_SOURCE
from contam.images import load_rgb
from contam.io import atomic_path, write_text

TIDY_COLUMNS = ["source", "ratio", "model", "seed", "test_set", "metric", "value", "metrics_file"]


def read_metrics(metric_files: list[str | Path]) -> dict[str, dict]:
    """Every run's metrics.json, read once, by path."""
    return {str(path): json.loads(Path(path).read_text()) for path in metric_files}


def tidy_metrics(metrics: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for path, data in metrics.items():
        run = data["run"]
        for test_set, result in {"test": data["test"], **data.get("ood", {})}.items():
            for metric in ("top1", "top5"):
                rows.append((run["source"], float(run["ratio"]), run["model"], int(run["seed"]), test_set, metric, float(result[metric]), str(path)))
    frame = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    return frame.sort_values(["test_set", "metric", "model", "source", "ratio", "seed"], ignore_index=True)


def with_shared_baseline(tidy: pd.DataFrame, arms: list[str]) -> pd.DataFrame:
    """Copy the shared ratio-0 rows into every arm, so each arm's curve starts at 0."""
    base = tidy[tidy["source"] == BASELINE_SOURCE]
    copies = [base.assign(source=arm) for arm in arms]
    return pd.concat([tidy[tidy["source"] != BASELINE_SOURCE], *copies], ignore_index=True)


def summarise(tidy: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof=1; 0 for one seed) and seed count per (set, metric, model, source, ratio)."""
    keys = ["test_set", "metric", "model", "source", "ratio"]
    grouped = tidy.groupby(keys)["value"]
    out = grouped.agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, seeds="count").reset_index()
    return out.sort_values(keys, ignore_index=True)


def paper_reference() -> pd.DataFrame:
    text = resources.files("contam").joinpath("data/resnet50_top1.csv").read_text()
    return pd.read_csv(StringIO(text))


def paired_differences(tidy: pd.DataFrame, arms: list[str], test_set: str = "test", metric: str = "top1") -> pd.DataFrame:
    """Accuracy at each ratio minus the shared ratio-0 run of the same model and seed.

    Pairing by seed removes the seed-to-seed spread of the baseline; the 95 %
    interval is a t-interval over seeds (NaN with one seed).
    """
    from scipy import stats

    data = tidy[(tidy["test_set"] == test_set) & (tidy["metric"] == metric)]
    base = data[data["source"] == BASELINE_SOURCE].set_index(["model", "seed"])["value"]
    rows = []
    for (source, ratio, model), group in data[data["source"].isin(arms)].groupby(["source", "ratio", "model"]):
        diffs = np.array([value - base.get((model, seed), np.nan) for seed, value in zip(group["seed"], group["value"])])
        diffs = diffs[~np.isnan(diffs)]
        n = len(diffs)
        mean = float(diffs.mean()) if n else float("nan")
        half = float(stats.t.ppf(0.975, n - 1) * diffs.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        rows.append({"model": model, "source": source, "ratio": ratio, "seeds": n, "difference": mean, "ci95_low": mean - half, "ci95_high": mean + half})
    return pd.DataFrame(rows, columns=["model", "source", "ratio", "seeds", "difference", "ci95_low", "ci95_high"])


def per_class_metrics(metrics: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for data in metrics.values():
        run = data["run"]
        for label, value in data["test"].get("per_class_top1", {}).items():
            rows.append((run["source"], float(run["ratio"]), run["model"], int(run["seed"]), int(label), float(value)))
    return pd.DataFrame(rows, columns=["source", "ratio", "model", "seed", "label", "top1"])


def classes_hurt_most(per_class: pd.DataFrame, class_names: dict[int, str], top: int = 10) -> pd.DataFrame:
    """Per-class top-1 drop from ratio 0 to each arm's largest ratio (mean over models and seeds)."""
    if per_class.empty:
        return pd.DataFrame(columns=["source", "ratio", "class", "top1_at_0", "top1_at_ratio", "drop"])
    base = per_class[per_class["source"] == BASELINE_SOURCE].groupby("label")["top1"].mean()
    out = []
    for source, group in per_class[per_class["source"] != BASELINE_SOURCE].groupby("source"):
        ratio = group["ratio"].max()
        at = group[group["ratio"] == ratio].groupby("label")["top1"].mean()
        for label, value in at.items():
            out.append({"source": source, "ratio": ratio, "class": class_names.get(int(label), str(label)), "top1_at_0": base.get(label, np.nan), "top1_at_ratio": value, "drop": base.get(label, np.nan) - value})
    frame = pd.DataFrame(out).sort_values(["source", "drop"], ascending=[True, False])
    return frame.groupby("source", group_keys=False).head(top).reset_index(drop=True)


def compute_per_rule(benchmark_dir: str | Path) -> pd.DataFrame:
    """Wall-clock and CPU time per rule, summed over its ``benchmark:`` files."""
    rows = []
    root = Path(benchmark_dir)
    for tsv in sorted(root.rglob("*.tsv")):
        rule = tsv.relative_to(root).parts[0].removesuffix(".tsv")
        frame = pd.read_csv(tsv, sep="\t")
        rows.append({"rule": rule, "jobs": 1, "wall_s": float(frame["s"].iloc[-1]), "cpu_s": float(frame["cpu_time"].iloc[-1]) if "cpu_time" in frame else np.nan, "max_rss_mb": float(frame["max_rss"].iloc[-1]) if "max_rss" in frame else np.nan})
    if not rows:
        return pd.DataFrame(columns=["rule", "jobs", "wall_s", "cpu_s", "max_rss_mb"])
    frame = pd.DataFrame(rows)
    return frame.groupby("rule").agg(jobs=("jobs", "sum"), wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"), max_rss_mb=("max_rss_mb", "max")).reset_index().sort_values("wall_s", ascending=False, ignore_index=True)


def analysis_table(analysis_files: list[str | Path]) -> pd.DataFrame:
    rows = []
    for path in analysis_files:
        data = json.loads(Path(path).read_text())
        whole = data["whole"]
        rows.append({"source": data["source"], "features": data.get("feature_extractor", ""), **{k: whole[k] for k in ("n_real", "n_other", "fid", "kid", "precision", "recall", "density", "coverage", "diversity_ratio", "class_mean_recall", "class_mean_coverage")}})
    return pd.DataFrame(rows)


def plot_accuracy(summary: pd.DataFrame, out_png: Path, show_paper: bool, test_set: str = "test") -> None:
    """One panel per model (all arms side by side), plus the paper's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = summary[(summary["test_set"] == test_set) & (summary["metric"] == "top1")]
    models = sorted(data["model"].unique())
    panels = len(models) + (1 if show_paper else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.2), squeeze=False)
    markers = ["o", "s", "^", "D", "v", "P"]
    styles = ["-", "--", ":", "-."]
    grays = ["black", "dimgray", "darkgray", "gray"]
    for i, model in enumerate(models):
        ax = axes[0, i]
        for j, source in enumerate(sorted(data["source"].unique())):
            line = data[(data["model"] == model) & (data["source"] == source)].sort_values("ratio")
            ax.errorbar(100 * line["ratio"], 100 * line["mean"], yerr=100 * line["std"], marker=markers[j % len(markers)], linestyle=styles[j % len(styles)], color=grays[j % len(grays)], capsize=3, label=source)
        ax.set_xlabel("contamination: training images replaced (%)")
        ax.set_ylabel(f"top-1 on the real {test_set} set (%)")
        ax.set_title(f"{model} (this study, mean ± std over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if show_paper:
        ref = paper_reference()
        ax2 = axes[0, -1]
        ax2.errorbar(ref["contamination_pct"], ref["sd_imagenet_top1"], yerr=ref["uncertainty_pts"], marker="o", color="black", label="SD-ImageNet (generated)")
        ax2.errorbar(ref["contamination_pct"], ref["webvision_top1"], yerr=ref["uncertainty_pts"], marker="s", linestyle="--", color="gray", label="WebVision (real control)")
        ax2.set_xlabel("contamination (%)")
        ax2.set_ylabel("ImageNet val top-1 (%)")
        ax2.set_title("Paper (for reference): ResNet-50 on ImageNet,\nHataya et al. 2023", fontsize=9)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    with atomic_path(out_png.with_suffix(".svg")) as tmp:
        fig.savefig(tmp, format="svg")
    plt.close(fig)


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


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, border=0, classes="table", float_format=lambda v: f"{v:.4f}")


def accuracy_table(summary: pd.DataFrame, test_set: str = "test") -> pd.DataFrame:
    """Wide table: one row per (model, source), one column per ratio, 'mean ± std' in %."""
    data = summary[(summary["test_set"] == test_set) & (summary["metric"] == "top1")].copy()
    data["cell"] = [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in zip(data["mean"], data["std"])]
    data["ratio"] = [f"{100 * r:g} %" for r in data["ratio"]]
    wide = data.pivot_table(index=["model", "source"], columns="ratio", values="cell", aggfunc="first", sort=False).reset_index()
    ordered = ["model", "source"] + sorted([c for c in wide.columns if c.endswith("%")], key=lambda c: float(c[:-2]))
    wide = wide[ordered]
    wide.columns.name = None  # else to_html shows an empty "ratio" column
    return wide


STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th{background:#eee}img{max-width:100%}pre{background:#f6f6f6;padding:.5em;overflow:auto}.note{color:#555}"
)


def write_html(out_dir: Path, title: str, sections: list[tuple[str, str]]) -> None:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, body in sections:
        anchor = "".join(c if c.isalnum() else "-" for c in heading.lower())
        parts.append(f"<section id='{anchor}'><h2>{html.escape(heading)}</h2>{body}</section>")
    parts.append("</body></html>")
    write_text("\n".join(parts), out_dir / "index.html")


def build_report(
    out_dir: str | Path,
    config: dict,
    metric_files: list[str],
    missing_runs: list[str],
    arms: list[str],
    real_index: pd.DataFrame,
    generated: dict[str, pd.DataFrame],
    quality: dict,
    analysis_files: list[str],
    benchmark_dir: str | Path | None,
    versions: dict,
) -> dict[str, Path]:
    """Write index.html, summary.csv and the figures; return the files written."""
    out_dir = Path(out_dir)
    figures_dir = out_dir / "figures"
    settings = config.get("report", {})
    seed = int(config.get("seed", 0))

    def rel(path: str | Path) -> str:
        return html.escape(os.path.relpath(path, out_dir))

    metrics = read_metrics(metric_files)
    tidy = tidy_metrics(metrics) if metrics else pd.DataFrame(columns=TIDY_COLUMNS)
    write_text(tidy.drop(columns="metrics_file").to_csv(index=False), out_dir / "summary.csv")
    summary = summarise(with_shared_baseline(tidy, arms))
    accuracy_png = figures_dir / "accuracy.png"
    plot_accuracy(summary, accuracy_png, settings.get("paper_reference", True))
    written = {"summary": out_dir / "summary.csv", "accuracy": accuracy_png}

    sections: list[tuple[str, str]] = [
        (
            "About",
            "<p class='note'>Reproduction of Hataya, Bao &amp; Arai, <i>Will Large-scale Generative Models Corrupt Future Datasets?</i> (ICCV 2023). "
            "A share of the real training images is replaced by images of each source; ratio 0 is one shared real-only baseline. "
            "Accuracy is top-1 (%) on the real test set. The tidy table behind every number is <a href='summary.csv'>summary.csv</a>.</p>",
        )
    ]
    if missing_runs:
        sections.append(("Incomplete study", f"<p>{len(missing_runs)} runs have no metrics yet; the tables and figures below leave them out:</p><ul>" + "".join(f"<li><code>{html.escape(m)}</code></li>" for m in missing_runs) + "</ul>"))
    body = _table_html(accuracy_table(summary)) if len(tidy) else "<p>No finished runs yet.</p>"
    body += f"<p><img src='{rel(accuracy_png)}' alt='Top-1 accuracy against contamination ratio, per model and arm'></p>"
    if settings.get("paper_reference", True):
        body += "<p class='note'>Right-most panel: the paper's ResNet-50 ImageNet curve, read off its published figure; for reference only (another dataset and scale).</p>"
    sections.append(("Classification accuracy (mean ± std over seeds)", body))

    diffs = paired_differences(tidy, arms)
    if len(diffs):
        shown = diffs.copy()
        shown["ratio"] = [f"{100 * r:g} %" for r in shown["ratio"]]
        for column in ("difference", "ci95_low", "ci95_high"):
            shown[column] = [f"{100 * v:+.1f}" if v == v else "n/a" for v in shown[column]]
        sections.append(("Change against ratio 0 (paired by seed, percentage points, 95 % interval)", _table_html(shown) + "<p class='note'>The interval is a t-interval over seeds; with two seeds it is wide, and with one it is not defined.</p>"))

    ood = tidy[(tidy["test_set"] != "test") & (tidy["metric"] == "top1")]
    if len(ood):
        parts = []
        for test_set in sorted(ood["test_set"].unique()):
            parts.append(f"<h3>{html.escape(test_set)}</h3>" + _table_html(accuracy_table(summary, test_set)))
        sections.append(("Out-of-distribution accuracy", "".join(parts)))

    class_names = dict(zip(real_index["label"].astype(int), real_index["class_name"].astype(str)))
    hurt = classes_hurt_most(per_class_metrics(metrics), class_names)
    if len(hurt):
        shown = hurt.copy()
        shown["ratio"] = [f"{100 * r:g} %" for r in shown["ratio"]]
        for column in ("top1_at_0", "top1_at_ratio"):
            shown[column] = [f"{100 * v:.1f}" for v in shown[column]]
        shown["drop"] = [f"{100 * v:+.1f}" for v in shown["drop"]]
        sections.append(("Classes hurt most (top-1 at ratio 0 and at each arm's largest ratio; mean over models and seeds)", _table_html(shown)))

    if analysis_files:
        table = analysis_table(analysis_files)
        sections.append((
            "How contaminant images differ from real training images",
            _table_html(table)
            + "<p class='note'>Each source against the real training images, on features of the chosen extractor. "
            "Precision: share of the source's images inside the real manifold; recall: share of real images inside the source's manifold "
            "(Kynkäänniemi et al. 2019); density and coverage: Naeem et al. 2020; diversity ratio: mean pairwise feature distance within a class, "
            "source over real (1 = as diverse as real data). Lower recall and coverage than the real control mean the source covers a sub-region of the real distribution.</p>",
        ))

    grids = []
    per_class = settings.get("samples_per_class", 8)
    train = real_index[real_index["split"] == "train"]
    for name, index in generated.items():
        grid = figures_dir / f"samples-{name}.png"
        sample_grid(train, index, grid, per_class, settings.get("max_classes_shown", 10), seed, name)
        written[f"samples-{name}"] = grid
        grids.append(f"<h3>{html.escape(name)}</h3><p><img src='{rel(grid)}' alt='Real and {html.escape(name)} samples per class'></p>")
    if grids:
        sections.append(("Samples: real against generated, per class", "".join(grids)))

    sections.append(("Data quality", "<pre>" + html.escape(json.dumps(quality, indent=2)) + "</pre><p class='note'>Images skipped while indexing (unreadable, truncated), generated images flagged by a safety checker (regenerated with the next seed, or dropped), dropped as invalid (one flat colour, wrong size), and images kept from an interrupted shard.</p>"))

    if benchmark_dir is not None:
        compute = compute_per_rule(benchmark_dir)
        if len(compute):
            sections.append(("Compute spent per rule (from benchmark: files)", _table_html(compute)))

    if len(tidy):
        runs = tidy[(tidy["test_set"] == "test") & (tidy["metric"] == "top1")]
        rows = "".join(
            f"<tr><td>{html.escape(r.source)}</td><td>{r.ratio:g}</td><td>{html.escape(r.model)}</td><td>{r.seed}</td><td>{100 * r.value:.2f}</td><td><a href='{rel(r.metrics_file)}'>metrics.json</a></td></tr>"
            for r in runs.itertuples()
        )
        sections.append(("Runs", "<table><tr><th>source</th><th>ratio</th><th>model</th><th>seed</th><th>test top-1 (%)</th><th>metrics</th></tr>" + rows + "</table>"))

    sections.append(("Settings", "<pre>" + html.escape(json.dumps(versions, indent=2)) + "</pre><details><summary>Config</summary><pre>" + html.escape(json.dumps(config, indent=2, default=str)) + "</pre></details>"))
    write_html(out_dir, f"Contam report: {config['experiment']}", sections)
    written["html"] = out_dir / "index.html"
    return written
