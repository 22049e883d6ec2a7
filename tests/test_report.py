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
    tidy = report.tidy_metrics(report.read_metrics(metric_files))
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
    tidy = report.tidy_metrics(report.read_metrics([write_metrics(tmp_path, "real", 0.0, "m", 0, 0.5)]))
    assert report.summarise(tidy)["std"].tolist() == [0.0, 0.0]


def test_accuracy_table_layout(metric_files):
    summary = report.summarise(report.with_shared_baseline(report.tidy_metrics(report.read_metrics(metric_files)), ["generated", "control"]))
    table = report.accuracy_table(summary)
    assert list(table.columns) == ["model", "source", "0 %", "100 %"]
    row = table[table["source"] == "generated"].iloc[0]
    assert row["100 %"] == "72.0 ± 2.8"


def test_paper_reference_is_shipped():
    ref = report.paper_reference()
    assert list(ref["contamination_pct"]) == [0, 20, 40, 80, 100]
    assert ref["sd_imagenet_top1"].iloc[-1] == pytest.approx(15.7)


def test_paired_differences_with_interval(metric_files):
    tidy = report.tidy_metrics(report.read_metrics(metric_files))
    diffs = report.paired_differences(tidy, ["generated", "control"]).set_index("source")
    # generated - baseline per seed: 0.70-0.90 = -0.20 and 0.74-0.94 = -0.20
    assert diffs.loc["generated", "difference"] == pytest.approx(-0.20)
    assert diffs.loc["generated", "ci95_low"] == pytest.approx(-0.20)  # no spread, zero width
    # control: -0.02 and -0.04 -> mean -0.03, t(0.975, 1) * sd / sqrt(2)
    half = 12.7062047 * np.std([-0.02, -0.04], ddof=1) / np.sqrt(2)
    assert diffs.loc["control", "difference"] == pytest.approx(-0.03)
    assert diffs.loc["control", "ci95_high"] == pytest.approx(-0.03 + half, rel=1e-5)


def test_classes_hurt_most():
    per_class = pd.DataFrame(
        [("real", 0.0, "m", 0, 0, 0.9), ("real", 0.0, "m", 0, 1, 0.8), ("generated", 0.5, "m", 0, 0, 0.1), ("generated", 1.0, "m", 0, 0, 0.5), ("generated", 1.0, "m", 0, 1, 0.7)],
        columns=["source", "ratio", "model", "seed", "label", "top1"],
    )
    hurt = report.classes_hurt_most(per_class, {0: "zero", 1: "one"})
    assert list(hurt["class"]) == ["zero", "one"]  # at the largest ratio, 1.0
    assert hurt["drop"].tolist() == pytest.approx([0.4, 0.1])


def test_compute_per_rule(tmp_path):
    for name, seconds in (("train/a/s0.tsv", 10.0), ("train/b/s1.tsv", 5.0), ("index_real.tsv", 1.0)):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{seconds}\t0:00:10\t100.0\t{seconds / 2}\n")
    table = report.compute_per_rule(tmp_path).set_index("rule")
    assert table.loc["train", "jobs"] == 2 and table.loc["train", "wall_s"] == 15.0
    assert table.loc["index_real", "cpu_s"] == 0.5


def test_build_report(metric_files, tmp_path):
    real = pd.DataFrame({"path": ["a.png"], "label": [0], "class_name": ["zero"], "split": ["train"]})
    out = tmp_path / "report"
    written = report.build_report(out, {"experiment": "x", "report": {}}, [str(p) for p in metric_files], ["runs/missing/metrics.json"], ["generated", "control"], real, {}, {"real": {"skipped": 2}}, [], None, {"torch": "1"})
    assert Image.open(written["accuracy"]).size[0] > 800
    assert (out / "figures" / "accuracy.svg").read_text().startswith("<?xml")
    page = (out / "index.html").read_text()
    assert "figures/accuracy.png" in page and "72.0 ± 2.8" in page
    assert "Incomplete study" in page and "runs/missing/metrics.json" in page
    assert "-20.0" in page  # the paired difference of the generated arm
    assert "http://" not in page and "https://" not in page  # no CDN or remote assets
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 12 and set(summary["source"]) == {"real", "generated", "control"}
