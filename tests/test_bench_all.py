"""bench/all.py: the small CPU form runs end to end and fills the ledger; no timing is asserted."""

import functools
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from contam import ledger

EXPECTED = {
    # rule: (work unit, settings keys, jobs)
    "generate_shard": ("image_step_mpx", {"dtype", "batch_size", "attention", "compile", "shape"}, {"fp32:classic:1", "fp16:sdpa:2", "bf16:sdpa:2"}),
    "train": ("image_epoch_gmac", {"arch", "image_size", "precision", "channels_last", "batch_size", "loader", "loop"},
              {"plain:synthetic", "contam:synthetic", "plain:files", "contam:files"}),
    "evaluate": ("image_gmac", {"arch", "image_size", "precision", "batch_size", "loader", "loop"}, {"plain:synthetic", "contam:files"}),
    "extract_features": ("image_gmac", {"arch", "image_size", "precision", "batch_size", "extractor", "loader", "loop"}, {"plain:synthetic", "contam:files"}),
}


def run_all(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "all.py"), *args],
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_small_cpu_run_writes_every_part_to_the_ledger(tmp_path):
    result = run_all("--device", "cpu", "--small", "--ledger", str(tmp_path / "ledger"), "--json", str(tmp_path / "all.json"))
    assert result.returncode == 0, result.stderr[-4000:]
    kind = ledger.cpu_kind()
    assert (tmp_path / "ledger" / f"{ledger.slug(kind)}.parquet").exists()
    table = ledger.read(tmp_path / "ledger")
    assert set(table["device_kind"]) == {kind} and set(table["rule"]) == set(EXPECTED)
    for rule, (unit, keys, jobs) in EXPECTED.items():
        rows = table[table["rule"] == rule]
        assert set(rows["job"]) == jobs and len(rows) == len(jobs), rule
        assert (rows["work_unit"] == unit).all() and (rows["work"] > 0).all() and (rows["wall_s"] > 0).all(), rule
        assert (rows["gpus"] == 0).all() and (rows["experiment"] == "bench").all()
        assert rows["origin"].str.startswith("bench:all.py/").all()
        for settings in rows["settings"]:
            assert set(json.loads(settings)) == keys, rule
    train = [json.loads(s) for s in table.loc[table["rule"] == "train", "settings"]]
    assert {(s["precision"], s["channels_last"]) for s in train} == {("bf16", True)}
    assert {json.loads(s)["dtype"] for s in table.loc[table["rule"] == "generate_shard", "settings"]} == {"fp32", "fp16", "bf16"}

    # Each part's table, with its ratio against the baseline of the same run.
    out = result.stdout
    for title in ("## generation, eager", "## training", "## evaluation", "## features"):
        assert title in out
    assert "| fp32:classic:1 (baseline) | 1 |" in out and "| plain loop, in memory (baseline) |" in out
    record = json.loads((tmp_path / "all.json").read_text())
    assert record["skipped"] == [] and record["ledger_rows"] == len(table)
    generation = record["parts"]["generation"]
    assert generation[0]["vs_baseline"] == 1.0 and all(r["vs_baseline"] > 0 for r in generation)
    for part in ("training", "evaluation", "features"):
        assert all(r["vs_baseline"] > 0 for r in record["parts"][part]), part
    # The work of a generation row is its images x steps x megapixels x 2 (guidance).
    bf16 = next(r for r in generation if r["name"] == "bf16:sdpa:2")
    row = table[(table["rule"] == "generate_shard") & (table["job"] == "bf16:sdpa:2")].iloc[0]
    assert row["work"] == pytest.approx(bf16["images"] * 2 * (32 * 32 / 1e6) * 2)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "tpu"], "expected cpu, cuda, cuda:N or auto, got 'tpu'"),
        (["--device", "cpu"], "add --small for the tiny CPU form"),
        pytest.param(["--device", "cuda"], "sees no CUDA device", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
    ],
)
def test_a_device_it_cannot_use_is_refused(args, message, tmp_path, capsys):
    # In this process: a refusal comes before any work, so a new interpreter would cost more than the check.
    with pytest.raises(SystemExit) as refused:
        bench_all().main([*args, "--ledger", str(tmp_path / "ledger")])
    assert refused.value.code not in (0, None)
    assert message in f"{refused.value.code}\n{capsys.readouterr().err}"
    assert not (tmp_path / "ledger").exists()


@functools.cache
def bench_all():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("bench_all", REPO / "bench" / "all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_all"] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module
