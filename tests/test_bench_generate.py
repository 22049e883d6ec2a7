"""bench/generate.py runs end to end (on the tiny pipeline); no timing is asserted."""

import json
import os
import subprocess
import sys

from conftest import REPO


def test_generation_benchmark_prints_its_table(tmp_path):
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "generate.py"), "--shape", "tiny", "--height", "32", "--steps", "2", "--repeats", "1",
         "--configs", "fp32:classic:1", "fp32:sdpa:2", "--unet-flops", "--json", str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| fp32:classic:1 (baseline) |" in result.stdout and "| fp32:sdpa:2 |" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["fp32:classic:1", "fp32:sdpa:2"]
    assert rows[0]["speedup"] == 1.0
    for row in rows:
        assert row["s_per_image"] > 0 and row["unet_tflops"] > 0 and 0 < row["unet_share"]
        assert row["image_std"] > 0  # real images came out, not blanks
        assert row["unet_peak_fraction"] is None  # no GPU peak on CPU


def test_bad_configuration_is_refused():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "generate.py"), "--configs", "fp8:sdpa:1"], env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True)
    assert result.returncode != 0 and "bad configuration 'fp8:sdpa:1'" in result.stderr
