import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from contam import report


def write_metrics(tmp_path, source, ratio, model, seed, top1):
    path = tmp_path / f"{source}-{ratio}-{model}-{seed}.json"
    path.write_text(json.dumps({"run": {"source": source, "ratio": str(ratio), "model": model, "seed": seed}, "test": {"top1": top1, "top5": 1.0}, "ood": {}}))
    return path


@pytest.fixture
def metric_files(tmp_path):
    files = []
    for seed, (base, gen, ctl) in enumerate([(0.90, 0.70, 0.88), (0.94, 0.74, 0.90)]):
        files.append(write_metrics(tmp_path, "real", 0.0, "m", seed, base))
        files.append(write_metrics(tmp_path, "generated", 1.0, "m", seed, gen))
        files.append(write_metrics(tmp_path, "control", 1.0, "m", seed, ctl))
    return files


def test_summary_maths(metric_files):
    tidy = report.tidy_metrics(metric_files)
    assert len(tidy) == 6 * 2  # top1 and top5 per run
    summary = report.summarise(report.with_shared_baseline(tidy, ["generated", "control"]))
    top1 = summary[(summary["metric"] == "top1")].set_index(["source", "ratio"])
    assert top1.loc[("generated", 1.0), "mean"] == pytest.approx(0.72)
    assert top1.loc[("generated", 1.0), "std"] == pytest.approx(np.std([0.70, 0.74], ddof=1))
    assert top1.loc[("generated", 1.0), "seeds"] == 2
    # The shared baseline appears in both arms, identically.
    assert top1.loc[("generated", 0.0), "mean"] == top1.loc[("control", 0.0), "mean"] == pytest.approx(0.92)
    assert "real" not in set(summary["source"])


def test_single_seed_std_is_zero(tmp_path):
    tidy = report.tidy_metrics([write_metrics(tmp_path, "real", 0.0, "m", 0, 0.5)])
    assert report.summarise(tidy)["std"].tolist() == [0.0, 0.0]


def test_accuracy_table_layout(metric_files):
    summary = report.summarise(report.with_shared_baseline(report.tidy_metrics(metric_files), ["generated", "control"]))
    table = report.accuracy_table(summary)
    assert list(table.columns) == ["model", "source", "0 %", "100 %"]
    row = table[table["source"] == "generated"].iloc[0]
    assert row["100 %"] == "72.0 ± 2.8"


def test_paper_reference_is_shipped():
    ref = report.paper_reference()
    assert list(ref["contamination_pct"]) == [0, 20, 40, 80, 100]
    assert ref["sd_imagenet_top1"].iloc[-1] == pytest.approx(15.7)


def test_figures_and_html(metric_files, tmp_path):
    summary = report.summarise(report.with_shared_baseline(report.tidy_metrics(metric_files), ["generated", "control"]))
    out = tmp_path / "report"
    report.plot_accuracy(summary, out / "figures" / "accuracy.png", show_paper=True)
    assert Image.open(out / "figures" / "accuracy.png").size[0] > 800
    assert (out / "figures" / "accuracy.svg").read_text().startswith("<?xml")
    tidy = report.tidy_metrics(metric_files)
    report.write_html(out, {"experiment": "x"}, summary, tidy, {"accuracy": str(out / "figures" / "accuracy.png")}, {"real": {"skipped": 2}}, ["runs/a/metrics.json"], {"torch": "1"})
    page = (out / "index.html").read_text()
    assert "figures/accuracy.png" in page and "72.0 ± 2.8" in page
    assert "Incomplete study" in page and "runs/a/metrics.json" in page
    assert "http" not in page.replace("https://", "")  # no CDN or remote assets
