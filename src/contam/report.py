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


def tidy_metrics(metric_files: list[str | Path]) -> pd.DataFrame:
    rows = []
    for path in metric_files:
        data = json.loads(Path(path).read_text())
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


def plot_accuracy(summary: pd.DataFrame, out_png: Path, show_paper: bool, test_set: str = "test") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = summary[(summary["test_set"] == test_set) & (summary["metric"] == "top1")]
    panels = 2 if show_paper else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.4), squeeze=False)
    ax = axes[0, 0]
    markers = ["o", "s", "^", "D", "v", "P"]
    styles = ["-", "--", ":", "-."]
    for i, model in enumerate(sorted(data["model"].unique())):
        for j, source in enumerate(sorted(data["source"].unique())):
            line = data[(data["model"] == model) & (data["source"] == source)].sort_values("ratio")
            ax.errorbar(100 * line["ratio"], 100 * line["mean"], yerr=100 * line["std"], marker=markers[j % len(markers)], linestyle=styles[i % len(styles)], capsize=3, label=f"{model}, {source}")
    ax.set_xlabel("contamination: share of training images replaced (%)")
    ax.set_ylabel(f"top-1 accuracy on the real {test_set} set (%)")
    ax.set_title("This study (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if show_paper:
        ref = paper_reference()
        ax2 = axes[0, 1]
        ax2.errorbar(ref["contamination_pct"], ref["sd_imagenet_top1"], yerr=ref["uncertainty_pts"], marker="o", color="black", label="SD-ImageNet (generated)")
        ax2.errorbar(ref["contamination_pct"], ref["webvision_top1"], yerr=ref["uncertainty_pts"], marker="s", linestyle="--", color="gray", label="WebVision (real control)")
        ax2.set_xlabel("contamination (%)")
        ax2.set_ylabel("ImageNet val top-1 (%)")
        ax2.set_title("Paper: ResNet-50 on ImageNet (Hataya et al. 2023)")
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
    return wide[ordered]


def write_html(
    out_dir: Path,
    config: dict,
    summary: pd.DataFrame,
    tidy: pd.DataFrame,
    figures: dict[str, str],
    quality: dict,
    missing: list[str],
    versions: dict,
) -> None:
    def rel(path: str) -> str:
        return html.escape(os.path.relpath(path, out_dir))

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Contam report: {html.escape(config['experiment'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#eee}img{max-width:100%}code,pre{background:#f6f6f6}.note{color:#555}</style></head><body>",
        f"<h1>Contam report: {html.escape(config['experiment'])}</h1>",
        "<p class='note'>Reproduction of Hataya, Bao &amp; Arai, <i>Will Large-scale Generative Models Corrupt Future Datasets?</i> (ICCV 2023). "
        "Accuracy is top-1 on the real test set; each cell is mean ± std over seeds. Ratio 0 is one shared real-only baseline.</p>",
    ]
    if missing:
        parts.append(f"<h2>Incomplete study</h2><p>{len(missing)} runs have no metrics yet:</p><ul>" + "".join(f"<li><code>{html.escape(m)}</code></li>" for m in missing) + "</ul>")
    parts.append("<h2>Classification accuracy</h2>")
    parts.append(_table_html(accuracy_table(summary)))
    if "accuracy" in figures:
        parts.append(f"<p><img src='{rel(figures['accuracy'])}' alt='Top-1 accuracy against contamination ratio'></p>")
        parts.append("<p class='note'>Right panel: the paper's ResNet-50 ImageNet curve, read off its published figure, for reference only (another dataset and scale).</p>")
    for name, path in figures.items():
        if name.startswith("samples:"):
            parts.append(f"<h2>Samples: {html.escape(name.split(':', 1)[1])}</h2><p><img src='{rel(path)}' alt='Real and generated samples per class'></p>")
    if quality:
        parts.append("<h2>Data quality</h2><pre>" + html.escape(json.dumps(quality, indent=2)) + "</pre>")
    parts.append("<h2>Runs</h2><table><tr><th>source</th><th>ratio</th><th>model</th><th>seed</th><th>test top-1</th><th>metrics</th></tr>")
    runs = tidy[(tidy["test_set"] == "test") & (tidy["metric"] == "top1")]
    for row in runs.itertuples():
        parts.append(f"<tr><td>{html.escape(row.source)}</td><td>{row.ratio:g}</td><td>{html.escape(row.model)}</td><td>{row.seed}</td><td>{100 * row.value:.2f}</td><td><a href='{rel(row.metrics_file)}'>metrics.json</a></td></tr>")
    parts.append("</table>")
    parts.append("<h2>Settings</h2><pre>" + html.escape(json.dumps(versions, indent=2)) + "</pre><details><summary>Config</summary><pre>" + html.escape(json.dumps(config, indent=2, default=str)) + "</pre></details>")
    parts.append("</body></html>")
    write_text("\n".join(parts), out_dir / "index.html")
