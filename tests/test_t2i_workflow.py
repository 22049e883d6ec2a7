"""The workflow on its text-to-image path, with a tiny Stable Diffusion pipeline
(random weights, saved and loaded by path): SD-COCO-style generation only, and
the digits study with a diffusers generator, including a shard stopped midway."""

import copy
import json
import signal
import subprocess
import time

import psutil
import pytest
import yaml

from conftest import REPO, SNAKEMAKE, job_counts, run_snakemake, snakemake_env, tiny_config, write_yaml
from contam.io import read_parquet

pytestmark = pytest.mark.slow


def tiny_sd_generator(model, steps=3) -> dict:
    return {"kind": "diffusers", "model": str(model), "scheduler": "ddim", "steps": steps, "guidance": 7.5, "height": 32, "width": 32, "dtype": "fp32", "seed": 42}


def test_coco_generation_only(tiny_sd, tmp_path):
    """Like config/coco.yaml: one image per caption, keeping image and caption ids."""
    captions = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (5, 7, 9)],
        "annotations": [{"id": 100 + k, "image_id": (5, 7, 9)[k % 3], "caption": f"A photo number {k} of a cat on a sofa."} for k in range(9)],
    }
    (tmp_path / "captions_train2017.json").write_text(json.dumps(captions))
    config = yaml.safe_load((REPO / "config" / "coco.yaml").read_text())
    config["experiment"] = "coco-tiny"
    config["generators"]["sd_v1_1"].update(tiny_sd_generator(tiny_sd))
    config["sources"]["sd_coco"].update(shards=2, prompts={"style": "coco", "captions": str(tmp_path / "captions_train2017.json")})
    config["resources"] = {"default": {"threads": 1}, "generate_shard": {"threads": 1}}
    path = write_yaml(tmp_path / "coco.yaml", config)

    plan = run_snakemake("-n", "--configfile", str(path), cwd=tmp_path)
    assert job_counts(plan.stdout) == {"build_prompts": 1, "generate_shard": 2, "gather_generated": 1, "all": 1, "total": 5}
    run_snakemake("--cores", "2", "--configfile", str(path), cwd=tmp_path)
    out = tmp_path / "results" / "coco-tiny"
    index = read_parquet(out / "generated" / "sd_coco.parquet")
    assert list(index["row"]) == list(range(9))
    assert sorted(index["caption_id"]) == list(range(100, 109))
    assert set(index["image_id"]) == {5, 7, 9} and index["label"].isna().all()
    assert all((tmp_path / p).exists() for p in index["path"])
    counts = json.loads((out / "generated" / "sd_coco.json").read_text())
    assert counts["images"] == 9 and counts["generated"] == 9 and counts["shards"] == 2
    assert not (out / "runs").exists()
    assert "Nothing to be done" in run_snakemake("-n", "--configfile", str(path), cwd=tmp_path).stdout


def test_digits_study_on_a_text_to_image_generator(tiny_sd, tmp_path):
    config = tiny_config(copy.deepcopy(yaml.safe_load((REPO / "config" / "config.yaml").read_text())))
    config["experiment"] = "t2i"
    # Steps enough that a shard takes seconds, time to stop it midway; and
    # only as many images as the run below needs: ratio 1.0 replaces every
    # real training image, 5 per class at this train share.
    config["generators"] = {"tiny_sd": tiny_sd_generator(tiny_sd, steps=10)}
    config["real"]["split_fractions"]["train"] = 0.03
    config["mixing"]["ratios"] = [0.0, 1.0]
    per_class = 6
    shard_size = 10 * per_class // 2
    config["sources"]["generated"].update(generator="tiny_sd", shards=2, prompts={"style": "plain", "template": "a photo of the digit {name}", "images_per_class": per_class})
    config["execution"] = {"generate_batch_size": 2}
    path = write_yaml(tmp_path / "t2i.yaml", config)
    counts = job_counts(run_snakemake("-n", "--configfile", str(path), cwd=tmp_path).stdout)
    assert "fit_generator" not in counts and counts["generate_shard"] == 2 and counts["build_prompts"] == 1

    # Kill shard 0's job midway (as an out-of-memory kill or a lost node
    # would): Snakemake fails the job and removes its declared outputs, but
    # the finished images are not outputs, so they stay.
    out = tmp_path / "results" / "t2i"
    shard = "results/t2i/generated/generated/shard-0.parquet"
    process = subprocess.Popen([*SNAKEMAKE, shard, "--cores", "1", "--configfile", str(path)], cwd=tmp_path, env=snakemake_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while len(list(out.glob("generated/generated/images-*/*/*.png"))) < 6 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    jobs = [p for p in psutil.Process(process.pid).children(recursive=True) if any("generate_shard" in part for part in p.cmdline())]
    assert jobs, "no generate_shard job was running"
    for job in jobs:
        job.send_signal(signal.SIGKILL)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0 and "Error in rule generate_shard" in output
    before = {p: p.stat().st_mtime_ns for p in out.glob("generated/generated/images-*/*/*.png")}
    assert 6 <= len(before) < shard_size, "the shard was not killed midway"
    assert not (tmp_path / shard).exists()

    # Run again, up to the mix that replaces every real training image by a
    # generated one: shard 0 runs again and resumes, keeping the images it had
    # made. (A classifier trains on such a mix as on any other: the tiny study's runs.)
    mix = "results/t2i/manifests/generated/ratio-1.0.parquet"
    run_snakemake(mix, "--cores", "2", "--configfile", str(path), cwd=tmp_path)
    log = (tmp_path / "logs" / "t2i" / "generate_shard" / "generated" / "shard-0.log").read_text()
    assert f", {len(before)} already on disk" in log
    assert all(p.stat().st_mtime_ns == before[p] for p in before)  # kept, not remade
    assert (tmp_path / shard).exists()
    manifest = read_parquet(out / "manifests" / "generated" / "ratio-1.0.parquet")
    assert (manifest["origin"] == "generated").all() and manifest["prompt"].str.startswith("a photo of the digit ").all()
    assert set(manifest["generator"]) == {"tiny_sd"}
