"""What the remedies measured (rule summarise_remedies) and the report's sections on it.

``summarise`` pairs the filtered and SSL runs with the study's own runs, seed
by seed, into ``remedies/summary.json``; the sections draw only from that
file, so the page and the summary never disagree. Accuracies are fractions
there and percentages (or percentage points) on the page, as in the rest of
the report.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from contam.io import atomic_path
from contam.layout import BASELINE_SOURCE, ORACLE_FILTER as ORACLE, ratio_tag
from contam.report import Section, bracket, html_table, paired_t, percent, points, ratio_label, tidy_metrics

GENERATED_ORIGIN = "generated"


# ---- what the remedies measured ----------------------------------------------------------


def _paired(values) -> dict:
    return paired_t(values)


def _top1(tidy: pd.DataFrame) -> pd.DataFrame:
    return tidy[(tidy["test_set"] == "test") & (tidy["metric"] == "top1")]


def recovery_table(supervised: pd.DataFrame, filtered: pd.DataFrame, summaries: list[dict], model: str, origins: dict[str, str]) -> pd.DataFrame:
    """Per (arm, ratio, filter): the gap, what filtering regained, the share closed, and the real images lost.

    ``supervised`` is the study's tidy metrics; ``filtered`` the filtered runs'
    tidy metrics with a ``filter`` column. Everything is paired by seed. A
    control arm's oracle is its unfiltered run (nothing generated to drop).
    """
    sup = _top1(supervised)
    sup = sup[sup["model"] == model]
    clean = sup[(sup["source"] == BASELINE_SOURCE)].set_index("seed")["value"]
    fil = _top1(filtered)
    fil = fil[fil["model"] == model]
    lost = {(s["source"], ratio_tag(s["ratio"]), s["filter"]): s for s in summaries}
    rows = []
    for (source, ratio, name), s in sorted(lost.items()):
        unfiltered = sup[(sup["source"] == source) & (sup["ratio"].map(ratio_tag) == ratio)].set_index("seed")["value"]
        runs = fil[(fil["source"] == source) & (fil["ratio"].map(ratio_tag) == ratio) & (fil["filter"] == name)].set_index("seed")["value"]
        seeds = sorted(set(clean.index) & set(unfiltered.index) & set(runs.index))
        gap = np.array([clean[k] - unfiltered[k] for k in seeds])
        gain = np.array([runs[k] - unfiltered[k] for k in seeds])
        gap_t, gain_t = _paired(gap), _paired(gain)
        # A seed's share is defined where that seed lost accuracy; the gap is
        # "resolved" where its interval over seeds lies above zero.
        has_gap = bool(len(seeds) and (gap > 0).all())
        gap_resolved = bool(len(seeds) > 1 and gap_t["ci95_low"] > 0)
        share_t = _paired(gain / gap) if has_gap else {"seeds": len(seeds), "difference": float("nan"), "ci95_low": float("nan"), "ci95_high": float("nan")}
        rows.append(
            {
                "model": model, "source": source, "origin": origins.get(source), "ratio": float(ratio), "filter": name,
                "seeds": len(seeds),
                "clean": float(np.mean([clean[k] for k in seeds])) if seeds else float("nan"),
                "unfiltered": float(np.mean([unfiltered[k] for k in seeds])) if seeds else float("nan"),
                "filtered": float(np.mean([runs[k] for k in seeds])) if seeds else float("nan"),
                "gap": gap_t["difference"], "gap_low": gap_t["ci95_low"], "gap_high": gap_t["ci95_high"],
                "gain": gain_t["difference"], "gain_low": gain_t["ci95_low"], "gain_high": gain_t["ci95_high"],
                "share_closed": share_t["difference"], "share_low": share_t["ci95_low"], "share_high": share_t["ci95_high"],
                "has_gap": has_gap, "gap_resolved": gap_resolved,
                "rows_after": s["rows_after"], "real_dropped": s["real_dropped"], "real_before": s["real_before"],
                "real_lost_share": s["real_lost_share"], "generated_dropped": s["generated_dropped"],
                "generated_before": s["generated_before"], "threshold": s.get("threshold"),
            }
        )
    return pd.DataFrame(rows)


def ssl_comparison(ssl_tidy: pd.DataFrame, supervised: pd.DataFrame, model: str, arms: list[str]) -> pd.DataFrame:
    """Per arm and contaminated ratio: the drop from ratio 0 under SSL + linear probe and under supervised training.

    Both drops are paired by seed with their own ratio-0 run; their difference
    (SSL drop minus supervised drop; > 0 means SSL lost less) is paired too.
    """
    sup = _top1(supervised)
    sup = sup[sup["model"] == model]
    ssl = _top1(ssl_tidy)
    rows = []
    ssl_base = ssl[ssl["source"] == BASELINE_SOURCE].set_index("seed")["value"]
    sup_base = sup[sup["source"] == BASELINE_SOURCE].set_index("seed")["value"]
    for arm in arms:
        for ratio in sorted(set(ssl.loc[ssl["source"] == arm, "ratio"])):
            s = ssl[(ssl["source"] == arm) & (ssl["ratio"] == ratio)].set_index("seed")["value"]
            u = sup[(sup["source"] == arm) & (sup["ratio"] == ratio)].set_index("seed")["value"]
            seeds = sorted(set(s.index) & set(u.index) & set(ssl_base.index) & set(sup_base.index))
            ssl_drop = np.array([s[k] - ssl_base[k] for k in seeds])
            sup_drop = np.array([u[k] - sup_base[k] for k in seeds])
            a, b, d = _paired(ssl_drop), _paired(sup_drop), _paired(ssl_drop - sup_drop)
            rows.append(
                {
                    "source": arm, "ratio": float(ratio), "seeds": len(seeds),
                    "ssl_clean": float(np.mean([ssl_base[k] for k in seeds])) if seeds else float("nan"),
                    "ssl_contaminated": float(np.mean([s[k] for k in seeds])) if seeds else float("nan"),
                    "ssl_drop": a["difference"], "ssl_drop_low": a["ci95_low"], "ssl_drop_high": a["ci95_high"],
                    "supervised_clean": float(np.mean([sup_base[k] for k in seeds])) if seeds else float("nan"),
                    "supervised_contaminated": float(np.mean([u[k] for k in seeds])) if seeds else float("nan"),
                    "supervised_drop": b["difference"], "supervised_drop_low": b["ci95_low"], "supervised_drop_high": b["ci95_high"],
                    "difference": d["difference"], "difference_low": d["ci95_low"], "difference_high": d["ci95_high"],
                }
            )
    return pd.DataFrame(rows)


def ssl_tidy(records: list[dict]) -> pd.DataFrame:
    """The SSL probes' metrics.json records as tidy rows (test and validation top-1)."""
    rows = []
    for record in records:
        run = record["run"]
        for test_set in ("test", "validation"):
            if test_set in record["sets"]:
                rows.append((run["source"], float(run["ratio"]), run["method"], int(run["seed"]), test_set, "top1", float(record["sets"][test_set]["top1"])))
    return pd.DataFrame(rows, columns=["source", "ratio", "method", "seed", "test_set", "metric", "value"])




def tidy_filtered(metrics: dict[str, dict]) -> pd.DataFrame:
    """The filtered runs' metrics as the report's tidy rows, with their ``filter``."""
    if not metrics:
        return pd.DataFrame(columns=["source", "ratio", "model", "seed", "test_set", "metric", "value", "filter"])
    tidy = tidy_metrics(metrics)
    return tidy.assign(filter=tidy["metrics_file"].map({path: data["run"]["filter"] for path, data in metrics.items()}))


def summarise(
    supervised: dict[str, dict],
    filtered: dict[str, dict],
    filter_summaries: list[dict],
    detectors: dict[str, dict],
    audit: dict,
    ssl_records: list[dict],
    model: str,
    origins: dict[str, str],
    settings: dict,
) -> dict:
    """Everything the report's remedies sections show, as one JSON-able record."""
    tidy = tidy_metrics(supervised)
    recovery = recovery_table(tidy, tidy_filtered(filtered), filter_summaries, model, origins)
    ssl = ssl_comparison(ssl_tidy(ssl_records), tidy, model, sorted(origins)) if ssl_records else pd.DataFrame()

    untrained = [r["untrained"]["top1"] for r in ssl_records if "untrained" in r]

    def records(frame: pd.DataFrame) -> list[dict]:
        # NaN (no interval with one seed, no gap to close) is written as null.
        return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]

    return {
        "model": model,
        "detectors": detectors,
        "audit": audit,
        "recovery": records(recovery),
        "ssl": records(ssl),
        "ssl_method": settings["ssl"]["method"] if ssl_records else None,
        # A linear probe on the untrained encoder (the same seeds): the floor pretraining is measured from.
        "ssl_untrained_top1": float(np.mean(untrained)) if untrained else None,
        "ssl_untrained_runs": len(untrained),
        "filter": settings["filter"],
        "detector_data": settings["detector_data"],
    }


# ---- the sections -------------------------------------------------------------------------


def _interval(entry: dict | None, fmt=lambda v: f"{v:.3f}") -> str:
    if not entry or entry.get("estimate") is None:
        return "n/a"
    low, high = (entry.get("interval") or [None, None])[:2]
    shown = fmt(entry["estimate"])
    return shown if low is None or high is None else f"{shown} [{fmt(low)}, {fmt(high)}]"


def detector_table(detectors: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for name, m in sorted(detectors.items()):
        row = {"detector": name, "AUROC [95 %]": _interval(m["auroc"]), "AP [95 %]": _interval(m["average_precision"])}
        for budget, entry in sorted(m["tpr_at_fpr"].items(), key=lambda kv: float(kv[0])):
            row[f"TPR at {100 * float(budget):g} % FPR"] = _interval(entry)
        for budget, entry in sorted(m.get("at_threshold", {}).items(), key=lambda kv: float(kv[0])):
            row[f"validation threshold for {100 * float(budget):g} %: test FPR / TPR"] = f"{_interval(entry['fpr'])} / {_interval(entry['tpr'])}"
        row["test images (real / generated)"] = f"{m['n_real']} / {m['n_generated']}"
        rows.append(row)
    return pd.DataFrame(rows)


def save_png(fig, out_png: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_roc(detectors: dict[str, dict], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    styles = ["-", "--", ":", "-."]
    for i, (name, m) in enumerate(sorted(detectors.items())):
        ax.plot(m["roc"]["fpr"], m["roc"]["tpr"], linestyle=styles[i % 4], color="black" if i == 0 else "dimgray", label=f"{name} (AUROC {m['auroc']['estimate']:.3f})")
    ax.plot([0, 1], [0, 1], color="lightgray", linewidth=1, label="chance")
    ax.set_xlabel("false-positive rate (real images flagged)")
    ax.set_ylabel("true-positive rate (generated images flagged)")
    ax.set_title("Detectors on held-out real vs generated images", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, out_png)


def audit_statement(audit: dict) -> str:
    auroc = audit["auroc"]
    shown = _interval(auroc)
    if audit["trustworthy"]:
        verdict = (f"near chance (at most {audit['near_chance']:g}): real and generated images are stored alike "
                   "(format, mode, bit depth, size, codec, value grid), so the detectors' scores reflect content, not storage.")
    else:
        verdict = (f"above {audit['near_chance']:g}: real and generated images differ in how they are stored. "
                   "<b>The detectors' scores are not trustworthy</b>: they may have learnt the storage, not the content.")
    return f"<p>Format-parity audit: a detector on storage features only scores test AUROC {html.escape(shown)}, {verdict}</p>"


def detectors_section(summary: dict, out_dir: Path, rel) -> Section:
    detectors = summary["detectors"]
    roc_png = out_dir / "figures" / "remedies_roc.png"
    plot_roc(detectors, roc_png)
    data = summary["detector_data"]
    body = audit_statement(summary["audit"])
    body += html_table(detector_table(detectors))
    body += f"<p><img src='{rel(roc_png)}' alt='ROC curves of the detectors'></p>"
    body += (
        "<p class='note'>Detector data: real images of the split "
        f"<code>{html.escape(str(data['real_split']))}</code> (at most {data['real_per_class']} per class) and "
        f"{data['generated_per_class']} generated images per class from prompt rows no mix holds; split "
        f"{data['split_fractions']} into train (fits), validation (thresholds) and test (this table). "
        "Intervals: 95 % bootstrap over test images, real and generated resampled separately. "
        "TPR at an FPR is read off the test ROC; the validation-threshold columns show what filtering realises.</p>"
    )
    return "Remedies: detecting generated images", body


def recovery_display(recovery: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in recovery.itertuples(index=False):
        if not r.has_gap:
            share = "no gap to close"
        else:
            share = f"{percent(r.share_closed)} % {bracket(r.share_low, r.share_high, percent)}" + ("" if r.gap_resolved else " (gap not resolved by these seeds)")
        rows.append(
            {
                "arm": f"{r.source} ({r.origin})",
                "ratio": ratio_label(r.ratio),
                "filter": r.filter,
                "clean": percent(r.clean),
                "unfiltered": percent(r.unfiltered),
                "filtered": percent(r.filtered),
                "gap (points) [95 %]": f"{points(r.gap)} {bracket(r.gap_low, r.gap_high, points)}",
                "gain (points) [95 %]": f"{points(r.gain)} {bracket(r.gain_low, r.gain_high, points)}",
                "share of gap closed [95 %]": share,
                "generated dropped": f"{r.generated_dropped} of {r.generated_before}",
                "real images lost": f"{r.real_dropped} of {r.real_before} ({100 * r.real_lost_share:.1f} %)",
                "seeds": r.seeds,
            }
        )
    return pd.DataFrame(rows)


def plot_recovery(recovery: pd.DataFrame, out_png: Path) -> None:
    """Per arm: top-1 against ratio, unfiltered and each filter, with the oracle ceiling and the clean level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted(recovery["source"].unique())
    fig, axes = plt.subplots(1, max(1, len(arms)), figsize=(4.6 * max(1, len(arms)), 4.4), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        data = recovery[recovery["source"] == arm].sort_values("ratio")
        first = data.groupby("ratio").first().reset_index()
        clean = float(first["clean"].iloc[0])
        ax.axhline(100 * clean, color="lightgray", linestyle="-", label="clean (ratio 0)")
        ax.plot(100 * first["ratio"], 100 * first["unfiltered"], marker="o", color="black", label="unfiltered")
        styles = ["--", ":", "-."]
        for i, name in enumerate(sorted(f for f in data["filter"].unique() if f != ORACLE)):
            line = data[data["filter"] == name]
            ax.plot(100 * line["ratio"], 100 * line["filtered"], marker="s", linestyle=styles[i % 3], color="dimgray", label=f"filtered: {name}")
        oracle = data[data["filter"] == ORACLE]
        if len(oracle):
            ax.plot(100 * oracle["ratio"], 100 * oracle["filtered"], marker="^", linestyle="-", color="darkgray", label="oracle (generated rows dropped)")
        ax.set_xlabel("contamination: training images replaced (%)")
        ax.set_ylabel("top-1 on the real test set (%)")
        ax.set_title(f"{arm} ({data['origin'].iloc[0]}): mean over seeds", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_png(fig, out_png)


def recovery_section(summary: dict, out_dir: Path, rel) -> Section | None:
    recovery = pd.DataFrame(summary["recovery"])
    if recovery.empty:
        return None
    recovery = recovery.astype({c: float for c in recovery.columns if c.endswith(("_low", "_high")) or c in ("gain", "gap", "share_closed")})
    png = out_dir / "figures" / "remedies_recovery.png"
    plot_recovery(recovery, png)
    body = html_table(recovery_display(recovery))
    body += f"<p><img src='{rel(png)}' alt='Top-1 against ratio: unfiltered, filtered and the oracle ceiling'></p>"
    body += (
        "<p class='note'>Share of the gap closed = (filtered − unfiltered) / (clean − unfiltered), per seed, then a 95 % t-interval over seeds; "
        "it is defined where every seed lost accuracy to contamination, and the gap counts as resolved where its interval lies above zero. "
        "The oracle drops exactly the generated rows: the ceiling of filtering at the same dataset size. "
        "A control arm has nothing generated to find: its oracle is its unfiltered manifest, and its rows show what filtering costs. "
        "Real images lost count every dropped real row (control rows are real images too).</p>"
    )
    return "Remedies: filtering and recovery", body


def ssl_display(ssl: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "arm": ssl["source"],
            "ratio": [ratio_label(r) for r in ssl["ratio"]],
            "SSL + linear probe: clean → contaminated": [f"{percent(a)} → {percent(b)}" for a, b in zip(ssl["ssl_clean"], ssl["ssl_contaminated"])],
            "SSL drop (points) [95 %]": [f"{points(v)} {bracket(lo, hi, points)}" for v, lo, hi in zip(ssl["ssl_drop"], ssl["ssl_drop_low"], ssl["ssl_drop_high"])],
            "supervised: clean → contaminated": [f"{percent(a)} → {percent(b)}" for a, b in zip(ssl["supervised_clean"], ssl["supervised_contaminated"])],
            "supervised drop (points) [95 %]": [f"{points(v)} {bracket(lo, hi, points)}" for v, lo, hi in zip(ssl["supervised_drop"], ssl["supervised_drop_low"], ssl["supervised_drop_high"])],
            "SSL drop − supervised drop [95 %]": [f"{points(v)} {bracket(lo, hi, points)}" for v, lo, hi in zip(ssl["difference"], ssl["difference_low"], ssl["difference_high"])],
            "seeds": ssl["seeds"],
        }
    )


def ssl_section(summary: dict) -> Section | None:
    ssl = pd.DataFrame(summary["ssl"])
    if ssl.empty:
        return None
    ssl = ssl.astype({c: float for c in ssl.columns if c not in ("source", "seeds")})
    body = html_table(ssl_display(ssl))
    body += (
        f"<p class='note'>SSL: {html.escape(str(summary['ssl_method']))} pretraining without labels on each mix, then a linear probe (logistic regression) "
        f"on the real training labels; supervised: the study's {html.escape(summary['model'])} runs on the same mixes. "
        "Each drop is paired by seed with its own ratio-0 run; the last column is paired too (above zero: SSL lost less).</p>"
    )
    if summary.get("ssl_untrained_top1") is not None:
        body += (f"<p class='note'>The same probe on the untrained encoder (random weights, same seeds) scores {percent(summary['ssl_untrained_top1'])} % "
                 f"on the real test set, the mean of n = {summary.get('ssl_untrained_runs', 'n/a')} runs (one per SSL run): "
                 "what pretraining adds is the difference from that floor, not the whole score.</p>")
    return "Remedies: self-supervised pretraining", body


def remedies_sections(summary: dict, out_dir: Path, rel) -> list[Section]:
    sections = [detectors_section(summary, out_dir, rel), recovery_section(summary, out_dir, rel), ssl_section(summary)]
    return [s for s in sections if s is not None]
