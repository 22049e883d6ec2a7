"""The captioning study's report page: numbers, paired contrasts, slot ranking, samples and notes."""

import html
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from contam import report_captioning as rc
from contam.layout import ratio_tag

ARMS = ["generated", "control"]
ORIGINS = {"generated": "generated", "control": "control"}
RATIOS = [0.0, 0.4, 1.0]
SEEDS = (0, 1)
CAPTIONER = "tiny-tx"
TRAIN_IDS = list(range(8))
TEST_IDS = [100, 101, 102, 103]

BASE = {"Bleu_1": 0.7, "Bleu_2": 0.5, "Bleu_3": 0.4, "Bleu_4": 0.3, "METEOR": 0.25, "ROUGE_L": 0.5, "CIDEr": 1.0}
# Per run and seed (seed 0, seed 1), added to every metric: seeds differ, so paired
# intervals have width. Against ratio 0, generated drops (CIDEr by half at 100 %),
# control only moves both ways.
JITTER = {
    ("real", 0.0): (0.00, 0.04),
    ("generated", 0.4): (0.00, 0.06),
    ("generated", 1.0): (0.00, 0.06),
    ("control", 0.4): (0.01, 0.03),
    ("control", 1.0): (-0.02, 0.06),
}
# Each slot's accuracy lost per unit of ratio by the generated arm: colour 1 most.
SLOT_DROP = {"digit_1": 0.1, "colour_1": 0.4, "digit_2": 0.2, "colour_2": 0.05, "axis": 0.0}


def value(metric, source, ratio, seed):
    """The known score of a run: CIDEr = 1.0 - 0.5*ratio (+ jitter) for generated, 1.0 (+ jitter) otherwise."""
    factor = 1 - 0.5 * ratio if source == "generated" else 1.0
    return BASE[metric] * factor + JITTER[(source, ratio)][seed]


def slot_value(slot, source, ratio, seed):
    drop = {**SLOT_DROP, "all_slots": 0.3, "parsed": 0.0}[slot] if source == "generated" else 0.0
    return 0.9 - drop * ratio + JITTER[(source, ratio)][seed] / 2


def caption(source, ratio, seed, image_id):
    return f"{source} at {ratio:g} seed {seed} captions image {image_id}"


def write_png(path, colour, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).save(path)


def make_captioned(root):
    """12 tiny scenes (8 train, 4 test) with five captions each, and each arm's twins of the train scenes."""
    rows = []
    for i, image_id in enumerate(TRAIN_IDS + TEST_IDS):
        path = root / "scenes" / f"{image_id}.png"
        write_png(path, (20 * i, 255 - 20 * i, 100))
        split = "train" if image_id in TRAIN_IDS else "test"
        captions = [f"reference {k} of scene {image_id}" for k in range(5)]
        rows.append({"image_id": image_id, "split": split, "path": str(path), "captions": captions,
                     "digit_a": i % 10, "digit_b": (i + 3) % 10, "colour_a": "red", "colour_b": "blue", "relation": "left of"})
    pools = {}
    for j, arm in enumerate(ARMS):
        twins = []
        for image_id in TRAIN_IDS:
            path = root / "pools" / arm / f"{image_id}.png"
            write_png(path, (200, 40 * j, 10 * image_id))
            twins.append({"image_id": image_id, "path": str(path)})
        pools[arm] = pd.DataFrame(twins)
    return pd.DataFrame(rows), pools


def runs():
    for seed in SEEDS:
        yield "real", 0.0, seed
        for arm in ARMS:
            for ratio in (0.4, 1.0):
                yield arm, ratio, seed


def make_study(root, tokenizer_of=None, meteor=True, not_computed=None):
    """metrics.json and predictions.json of every run, and meteor.json; returns (metric files, prediction files, meteor file)."""
    metric_files, prediction_files, scores = [], [], {}
    for source, ratio, seed in runs():
        folder = root / "captioning" / "runs" / source / f"ratio-{ratio_tag(ratio)}" / CAPTIONER / f"seed-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        predictions = [{"image_id": i, "caption": caption(source, ratio, seed, i)} for i in TEST_IDS]
        (folder / "predictions.json").write_text(json.dumps(predictions))
        tokenizer = (tokenizer_of or {}).get((source, ratio, seed), "ptb")
        metrics = {
            "run": {"source": source, "ratio": ratio_tag(ratio), "captioner": CAPTIONER, "seed": seed},
            "coco": {k: value(k, source, ratio, seed) for k in BASE if k != "METEOR"},
            "per_image": {"CIDEr": [0.0] * len(TEST_IDS)},
            "tokenizer": tokenizer,
            "n_images": len(TEST_IDS),
            "beam_size": 3,
            "slots": {**{k: slot_value(k, source, ratio, seed) for k in [*SLOT_DROP, "all_slots", "parsed"]}, "n": len(TEST_IDS)},
        }
        (folder / "metrics.json").write_text(json.dumps(metrics))
        metric_files.append(folder / "metrics.json")
        prediction_files.append(folder / "predictions.json")
        scores[str(folder / "predictions.json")] = None if not_computed else value("METEOR", source, ratio, seed)
    meteor_file = None
    if meteor:
        meteor_file = root / "captioning" / "meteor.json"
        meteor_file.write_text(json.dumps({"tokenizer": "ptb", "not_computed": not_computed, "runs": scores}))
    return metric_files, prediction_files, meteor_file


def build(root, metric_files, prediction_files, meteor_file, captioned, pools, benchmark_files=(), benchmark_root=None, samples=3):
    return rc.build_captioning_report(
        root / "report", experiment="demo", seed=7, metric_files=metric_files, prediction_files=prediction_files, meteor_file=meteor_file,
        captioned=captioned, pools=pools, ratios=RATIOS, arms=ARMS, origins=ORIGINS,
        settings={"samples": samples, "decoding": {"beam_size": 3}, "metrics": {"tokenizer": "auto", "meteor": True}},
        slots=True, benchmark_files=list(benchmark_files), benchmark_root=benchmark_root,
        versions={"python": "3"}, config_for_display={"captioning": {"samples": samples}},
    )


def t_interval(values):
    values = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return values.mean(), values.mean() - half, values.mean() + half


def headline_items(page):
    block = page.split("<ul class='headline'>", 1)[1].split("</ul>", 1)[0]
    return [html.unescape(item.split("</li>")[0]) for item in block.split("<li>")[1:]]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioning")
    captioned, pools = make_captioned(root)
    metric_files, prediction_files, meteor_file = make_study(root)
    bench = root / "benchmarks"
    tsv = bench / "train_captioner" / "generated" / "ratio-0.4" / CAPTIONER / "seed-0.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("s\th:m:s\tmax_rss\tcpu_time\n42.5\t0:00:42\t512.0\t40.0\n")
    written = build(root, metric_files, prediction_files, meteor_file, captioned, pools, benchmark_files=[tsv], benchmark_root=bench)
    page = (root / "report" / "captioning.html").read_text()
    return {"root": root, "captioned": captioned, "pools": pools, "metric_files": metric_files, "prediction_files": prediction_files,
            "meteor_file": meteor_file, "written": written, "page": page}


# ---- tables ----------------------------------------------------------------------------


def test_tidy_rows_and_meteor_through_the_predictions_path(study):
    tidy = rc.tidy_runs(study["metric_files"], study["meteor_file"])
    assert list(tidy.columns) == ["source", "ratio", "seed", "metric", "value"]
    # 10 runs x (7 COCO metrics + 7 slot shares); ratio is a float and ratio 0 keeps source 'real'.
    assert len(tidy) == 10 * 14
    assert set(tidy["ratio"]) == {0.0, 0.4, 1.0} and tidy["ratio"].dtype == float
    assert set(tidy.loc[tidy["ratio"] == 0, "source"]) == {"real"}
    row = tidy[(tidy["source"] == "control") & (tidy["ratio"] == 1.0) & (tidy["seed"] == 1) & (tidy["metric"] == "METEOR")]
    assert row["value"].item() == pytest.approx(value("METEOR", "control", 1.0, 1))


def test_meteor_found_by_resolved_path_or_by_the_run_part_of_the_path(tmp_path):
    metric_files, _, _ = make_study(tmp_path, meteor=False)
    first, second = metric_files[0], metric_files[1]
    # One key spelled with '..' (resolves to the same file); one written from another working directory.
    odd = str(first.parent / ".." / first.parent.name / "predictions.json")
    moved = "elsewhere/results/" + "/".join(second.parent.parts[-4:]) + "/predictions.json"
    found = rc.meteor_of_runs(metric_files, {"runs": {odd: 0.21, moved: 0.22}})
    assert found == {str(first): 0.21, str(second): 0.22}
    assert rc.meteor_of_runs(metric_files, {"runs": {odd: None}}) == {}  # null: no METEOR for that run


def test_summarise_means_and_t_intervals_with_the_shared_baseline(study):
    summary = rc.summarise(rc.tidy_runs(study["metric_files"], study["meteor_file"]), ARMS)
    assert list(summary["source"].unique()) == ARMS  # declared order; ratio 0 belongs to every arm
    cell = summary.set_index(["source", "ratio", "metric"])
    for arm in ARMS:
        mean, low, high = t_interval([1.00, 1.04])  # the shared real-only CIDEr of seeds 0 and 1
        assert tuple(cell.loc[(arm, 0.0, "CIDEr"), ["mean", "low", "high", "n"]]) == pytest.approx((mean, low, high, 2))
    mean, low, high = t_interval([0.50, 0.56])  # generated at 100 %: 1.0 - 0.5 plus the seeds' jitter
    assert tuple(cell.loc[("generated", 1.0, "CIDEr"), ["mean", "low", "high", "n"]]) == pytest.approx((mean, low, high, 2))
    assert cell.loc[("generated", 1.0, "CIDEr"), "mean"] == pytest.approx(0.53)
    mean, low, high = t_interval([0.3 * 0.8 + 0.00, 0.3 * 0.8 + 0.06])
    assert tuple(cell.loc[("generated", 0.4, "Bleu_4"), ["mean", "low", "high"]]) == pytest.approx((mean, low, high))
    assert cell.loc[("control", 0.4, "METEOR"), "mean"] == pytest.approx(0.25 + 0.02)


def test_paired_changes_and_generated_minus_control(study):
    tidy = rc.tidy_runs(study["metric_files"], study["meteor_file"])
    changes = rc.contrasts(tidy, ARMS, ORIGINS).set_index(["comparison", "source", "against", "ratio", "metric"])
    row = changes.loc[(rc.CHANGE, "generated", "ratio 0", 1.0, "CIDEr")]
    mean, low, high = t_interval([0.50 - 1.00, 0.56 - 1.04])  # paired by seed
    assert (row["difference"], row["ci95_low"], row["ci95_high"], row["seeds"]) == pytest.approx((mean, low, high, 2))
    assert row["difference"] == pytest.approx(-0.49)
    row = changes.loc[(rc.CHANGE, "control", "ratio 0", 1.0, "CIDEr")]
    assert row["difference"] == pytest.approx(0.0) and row["ci95_low"] < 0 < row["ci95_high"]
    row = changes.loc[(rc.CONTRAST, "generated", "control", 0.4, "CIDEr")]
    mean, low, high = t_interval([0.80 - 1.01, 0.86 - 1.03])
    assert (row["difference"], row["ci95_low"], row["ci95_high"], row["seeds"]) == pytest.approx((mean, low, high, 2))
    row = changes.loc[(rc.CONTRAST, "generated", "control", 1.0, "Bleu_4")]
    assert row["difference"] == pytest.approx(np.mean([0.15 - 0.28, 0.21 - 0.36]))
    # No contrast at ratio 0 (it is the same run for both arms) and none of control minus generated.
    assert not ((changes.reset_index()["comparison"] == rc.CONTRAST) & (changes.reset_index()["ratio"] == 0)).any()
    assert set(changes.reset_index().query("comparison == @rc.CONTRAST")["source"]) == {"generated"}


def test_slot_tables_rank_the_slot_hurt_most_first(study):
    tidy = rc.tidy_runs(study["metric_files"], study["meteor_file"])
    summary = rc.summarise(tidy, ARMS)
    table = rc.slot_table(summary).set_index(["source", "ratio"])
    assert table.loc[("generated", 1.0), "colour_1"] == pytest.approx(np.mean([0.9 - 0.4 + 0.0, 0.9 - 0.4 + 0.03]))
    assert table.loc[("control", 0.0), "axis"] == pytest.approx(0.91)  # the shared baseline's row
    assert table.loc[("generated", 0.4), "seeds"] == 2
    hurt = rc.slot_changes(rc.contrasts(tidy, ARMS, ORIGINS), ARMS, ORIGINS)
    ranked = list(dict.fromkeys(hurt["slot"]))
    assert ranked == ["colour_1", "digit_2", "digit_1", "colour_2", "axis"]
    first = hurt.iloc[0]
    assert (first["rank"], first["slot"], first["arm"], first["ratio"]) == (1, "colour_1", "generated", 1.0)
    assert first["difference"] == pytest.approx(-0.395)  # paired: -0.4 plus the seeds' jitter
    assert set(hurt["arm"]) == set(ARMS) and (hurt["ratio"] == 1.0).all()


# ---- the page ------------------------------------------------------------------------------


def test_files_written(study):
    out = study["root"] / "report"
    expected = {
        "summary": out / "captioning_summary.csv", "html": out / "captioning.html", "metrics_figure": out / "figures" / "captioning_metrics.png",
        "samples_figure": out / "figures" / "captioning_samples.png", "twins_figure": out / "figures" / "captioning_twins.png",
    }
    assert study["written"] == expected
    for path in expected.values():
        assert path.stat().st_size > 0
    with Image.open(expected["samples_figure"]) as image:
        assert image.height > 200  # three sample rows
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_summary_csv_rows(study):
    summary = pd.read_csv(study["root"] / "report" / "captioning_summary.csv")
    assert {"arm", "ratio", "metric", "mean", "low", "high", "n", "change_from_0", "change_low", "change_high"} <= set(summary.columns)
    # One row per (arm, ratio, metric): 2 arms x 3 ratios x 14 metrics.
    assert len(summary) == 2 * 3 * 14 and not summary.duplicated(["arm", "ratio", "metric"]).any()
    row = summary.set_index(["arm", "ratio", "metric"]).loc[("generated", 1.0, "CIDEr")]
    mean, low, high = t_interval([-0.50, -0.48])
    assert (row["mean"], row["n"], row["change_from_0"], row["change_low"], row["change_high"]) == pytest.approx((0.53, 2, mean, low, high))
    assert row["origin"] == "generated"
    base = summary[summary["ratio"] == 0]
    assert base["change_from_0"].isna().all()  # ratio 0 is the baseline, not a change
    assert base.groupby("metric")["mean"].nunique().eq(1).all()  # the same shared runs in every arm


def test_page_sections_numbers_and_figures(study):
    page = study["page"]
    for title in ("Headline: captions after contamination", "What this measures", "Scores per arm (mean [95 % t-interval over seeds])",
                  "Scores against the share of training images replaced", "Changes, paired by seed", "Slot accuracy (digit scenes)",
                  "Samples: captions of real test images", "What the contamination looks like", "Notes: tokenizer, METEOR, SPICE, decoding",
                  "Runs", "Compute spent per rule", "Settings"):
        assert html.escape(title) in page, title
    mean, low, high = t_interval([0.50, 0.56])
    assert f"{mean:.3f} [{low:.3f}, {high:.3f}]" in page  # generated CIDEr at 100 %
    mean, low, high = t_interval([-0.50, -0.48])
    assert f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]" in page  # its paired change
    for name in ("captioning_metrics.png", "captioning_samples.png", "captioning_twins.png"):
        assert f"<img src='figures/{name}'" in page
    assert "train_captioner" in page and "42.5" in page  # compute per rule
    assert "beam size 3" in page and html.escape(rc.SPICE_NOTE) in page and "Tokenizer: ptb (all 10 runs)" in page
    assert "Warning" not in page
    assert "tiny-tx" in page and "&quot;samples&quot;: 3" in page  # runs table and the config shown


def test_headline_statements_say_when_an_interval_contains_zero(study):
    items = headline_items(study["page"])
    assert len(items) == 2 + 2  # one per arm, one per ratio of generated minus control
    generated = next(i for i in items if i.startswith("generated (generated twins), 100 %"))
    mean, low, high = t_interval([-0.50, -0.48])
    assert f"CIDEr {mean:+.3f} [{low:+.3f}, {high:+.3f}]: lower" in generated and "n=2 seeds" in generated
    control = next(i for i in items if i.startswith("control (control twins)"))
    assert "CIDEr +0.000" in control and "not resolved (the interval contains 0)" in control
    at_40 = next(i for i in items if "minus control (control), both with 40 %" in i)
    assert "CIDEr -0.190" in at_40 and "not resolved (the interval contains 0)" in at_40
    at_100 = next(i for i in items if "minus control (control), both with 100 %" in i)
    assert "CIDEr -0.490" in at_100 and ": lower" in at_100


def test_samples_are_a_seeded_draw_with_their_captions(study):
    page, captioned = study["page"], study["captioned"]
    ids = rc.sample_ids(captioned, 3, 7)
    assert ids == rc.sample_ids(captioned, 3, 7) and len(ids) == 3 and set(ids) <= set(TEST_IDS)
    for image_id in ids:
        assert f"reference 0 of scene {image_id}" in page
        assert caption("real", 0.0, 0, image_id) in page  # ratio 0, first seed
        assert caption("generated", 1.0, 0, image_id) in page and caption("control", 1.0, 0, image_id) in page
    left_out = (set(TEST_IDS) - set(ids)).pop()
    assert caption("real", 0.0, 0, left_out) not in page
    assert caption("generated", 0.4, 0, ids[0]) not in page and caption("generated", 1.0, 1, ids[0]) not in page


def test_missing_meteor_renders_a_note(tmp_path):
    captioned, pools = make_captioned(tmp_path)
    metric_files, prediction_files, meteor_file = make_study(tmp_path, not_computed="Java was not found (METEOR runs in Java)")
    written = build(tmp_path, metric_files, prediction_files, meteor_file, captioned, pools)
    page = written["html"].read_text()
    assert "METEOR not computed: Java was not found (METEOR runs in Java)." in page
    summary = pd.read_csv(written["summary"])
    assert "METEOR" not in set(summary["metric"]) and "CIDEr" in set(summary["metric"])
    assert "<th>METEOR</th>" in page and ">n/a<" in page  # the column stays, with no numbers
    # No meteor.json at all (none among the rule's inputs): the same page, another reason.
    written = build(tmp_path, metric_files, prediction_files, None, captioned, pools)
    assert "METEOR not computed: the study has no meteor.json" in written["html"].read_text()


def test_a_run_on_another_tokenizer_is_warned_about(tmp_path):
    captioned, pools = make_captioned(tmp_path)
    metric_files, prediction_files, meteor_file = make_study(tmp_path, tokenizer_of={("control", 0.4, 1): "whitespace"})
    page = build(tmp_path, metric_files, prediction_files, meteor_file, captioned, pools)["html"].read_text()
    assert "<b>Warning:</b> The runs disagree on the tokenizer (ptb: 9 runs, whitespace: 1 run)" in page
    assert "Not on ptb: whitespace: control ratio 0.4 seed 1." in page  # the odd run is named
    assert "Tokenizer: ptb (all" not in page


def test_undeclared_or_duplicate_runs_are_refused(tmp_path):
    captioned, pools = make_captioned(tmp_path)
    metric_files, prediction_files, meteor_file = make_study(tmp_path)
    with pytest.raises(ValueError, match="not one of the arms"):
        rc.build_captioning_report(
            tmp_path / "report", experiment="demo", seed=7, metric_files=metric_files, prediction_files=prediction_files, meteor_file=meteor_file,
            captioned=captioned, pools=pools, ratios=RATIOS, arms=["generated"], origins=ORIGINS, settings={"samples": 2}, slots=True,
            benchmark_files=[], benchmark_root=None, versions={},
        )
    with pytest.raises(ValueError, match="the same run"):
        rc.check_runs(rc.read_runs([*metric_files, metric_files[0].parent / ".." / metric_files[0].parent.name / "metrics.json"]), ARMS, RATIOS)
    assert not (tmp_path / "report").exists()  # refused before writing anything
