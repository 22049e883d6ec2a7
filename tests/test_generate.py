import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import images_of
from contam import fit_generator, generate, prompts
from contam.gather import gather
from contam.io import read_parquet, write_json, write_parquet

CLASSES = pd.DataFrame({"label": range(3), "folder": ["0", "1", "2"], "names": ["zero", "one", "two"]})
SAMPLE = {"steps": 4, "guidance": 0.5, "eta": 0.0}


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory) -> Path:
    """An untrained embedded generator, saved and loaded by path like a trained one."""
    out = tmp_path_factory.mktemp("generator")
    torch.manual_seed(0)
    unet = fit_generator.build_unet(image_size=8, num_classes=3, block_channels=[8, 16], layers_per_block=1)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    fit_generator.noise_schedulers()[1].save_pretrained(out / "scheduler")
    return out


def table(per_class=4):
    return prompts.plain_prompts(CLASSES, "photo of the digit {name}", per_class, base_seed=42)


def test_shards_partition_rows_by_fixed_rule():
    rows = table(per_class=5)
    shards = [generate.shard_rows(rows, 4, k) for k in range(4)]
    assert sorted(sum((list(s["row"]) for s in shards), [])) == list(range(15))
    assert list(shards[1]["row"]) == [1, 5, 9, 13]
    with pytest.raises(ValueError):
        generate.shard_rows(rows, 4, 4)


def test_image_depends_only_on_row_and_seed(tiny_generator, tmp_path):
    sampler = generate.EmbeddedSampler(tiny_generator, SAMPLE, torch.device("cpu"))
    rows = table()
    whole, _ = generate.generate_shard(rows, tmp_path / "a", sampler, batch_size=12, generator_name="g", settings_id="x")
    parts = [generate.generate_shard(generate.shard_rows(rows, 3, k), tmp_path / "b", sampler, batch_size=b, generator_name="g", settings_id="x")[0] for k, b in zip(range(3), (1, 2, 5))]
    a, b = images_of(whole), images_of(pd.concat(parts))
    assert a.keys() == b.keys() == set(range(12))
    for row in a:
        assert a[row].shape == (8, 8, 3)
        # Identical pixels whatever the batch size and shard count.
        assert np.array_equal(a[row], b[row]), row
    assert not np.array_equal(a[0], a[1])  # different seeds give different images


def test_eta_noise_is_per_image_too(tiny_generator, tmp_path):
    sampler = generate.EmbeddedSampler(tiny_generator, {**SAMPLE, "eta": 1.0}, torch.device("cpu"))
    rows = table(per_class=2)
    one = images_of(generate.generate_shard(rows, tmp_path / "a", sampler, 6, "g", "x")[0])
    two = images_of(generate.generate_shard(rows.iloc[::-1], tmp_path / "b", sampler, 4, "g", "x")[0])
    assert all(np.array_equal(one[r], two[r]) for r in one)


def test_bad_images_are_dropped_and_counted(tmp_path):
    class FlatSampler:
        image_hw = (8, 8)

        def __call__(self, batch):
            images = np.random.default_rng(0).integers(0, 255, (len(batch), 8, 8, 3), dtype=np.uint8)
            images[0] = 0  # all one colour
            flags = [False] * len(batch)
            flags[-1] = True  # flagged by a safety checker
            return images, flags

    index, counts = generate.generate_shard(table(per_class=2), tmp_path, FlatSampler(), batch_size=6, generator_name="g", settings_id="x")
    assert counts["dropped_invalid"] == 1 and counts["dropped_unsafe"] == 1 and counts["generated"] == 4
    assert len(index) == 4 and 0 not in set(index["row"]) and 5 not in set(index["row"])
    assert all(Path(p).exists() for p in index["path"])


DRIVER = textwrap.dedent(
    """
    import sys, time
    from contam import generate
    from contam.io import read_parquet
    tests, kind, model, prompts_path, images, pause = sys.argv[1:7]
    sys.path.insert(0, tests)
    from test_generate import same_sampler
    sampler = same_sampler(kind, model)
    def slow_sampler(batch):
        time.sleep(float(pause))
        return sampler(batch)
    slow_sampler.image_hw = sampler.image_hw
    generate.generate_shard(read_parquet(prompts_path), images, slow_sampler, 1, "g", "x", writer_threads=1)
    """
)


def same_sampler(kind: str, model) -> generate.Sampler:
    """The sampler of the killed driver and of the rerun (in the test's process: a new interpreter costs more than the work)."""
    import torch

    if kind == "embedded":
        return generate.EmbeddedSampler(model, {"steps": 4, "guidance": 0.5, "eta": 0.0}, torch.device("cpu"))
    return generate.DiffusersSampler({"kind": "diffusers", "model": model, "steps": 3, "height": 32, "width": 32, "dtype": "fp32"}, torch.device("cpu"))


# The diffusers sampler's shard is killed and resumed through the workflow in
# test_t2i_workflow.py (images kept, not remade), and its images depend only on
# row and seed (test_text_to_image.py): the same kill here cost 20 s of the suite.
@pytest.mark.parametrize("kind, model_fixture", [("embedded", "tiny_generator")])
def test_killed_shard_resumes_without_redoing_images(kind, model_fixture, request, tmp_path):
    """A real shard process is killed with SIGKILL midway, then rerun."""
    rows = table(per_class=10)
    write_parquet(rows, tmp_path / "prompts.parquet")
    (tmp_path / "driver.py").write_text(DRIVER)
    model = request.getfixturevalue(model_fixture)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "HF_HUB_OFFLINE": "1"}

    images = tmp_path / "images"
    command = [sys.executable, str(tmp_path / "driver.py"), str(Path(__file__).parent), kind, str(model), str(tmp_path / "prompts.parquet"), str(images), "0.3"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(images.rglob("*.png"))) < 5 and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {p: p.stat().st_mtime_ns for p in images.rglob("*.png")}
    assert 5 <= len(before) < 30
    for path in before:  # nothing half-written under a final name
        assert np.asarray(Image.open(path)).std() > 0

    # The rerun (in this process: only the kill needs a process of its own).
    sampler = same_sampler(kind, model)
    index, counts = generate.generate_shard(rows, images, sampler, 1, "g", "x", writer_threads=1)
    assert counts["resumed"] == len(before)
    after = {p: p.stat().st_mtime_ns for p in images.rglob("*.png")}
    assert len(after) == 30
    assert all(after[p] == before[p] for p in before)  # kept, not regenerated
    assert not list(images.rglob("*.tmp"))  # a killed write's temporary file is cleaned up
    assert list(index["row"]) == list(range(30))

    # The resumed shard holds exactly the images of an uninterrupted one.
    fresh, _ = generate.generate_shard(rows, tmp_path / "fresh", sampler, 1, "g", "x", writer_threads=1)
    resumed, fresh = images_of(index), images_of(fresh)
    assert all(np.array_equal(resumed[r], fresh[r]) for r in resumed)


def test_gather_joins_shards(tmp_path):
    rows = table()
    for k in range(2):
        part = generate.shard_rows(rows, 2, k).assign(path=lambda f: f["row"].astype(str))
        write_parquet(part, tmp_path / f"shard-{k}.parquet")
        write_json({"rows": len(part), "generated": len(part) - 1, "images_per_s": 3.0}, tmp_path / f"shard-{k}.json")
    index, totals = gather([tmp_path / "shard-0.parquet", tmp_path / "shard-1.parquet"], [tmp_path / "shard-0.json", tmp_path / "shard-1.json"])
    assert list(index["row"]) == list(range(12))
    assert totals == {"shards": 2, "images": 12, "rows": 12, "generated": 10}


# ---- image identity: a kept image is one made from the same weights and row ----

EMBEDDED = {"kind": "embedded", "image_size": 8, "seed": 0, "sample": SAMPLE}
EXECUTION = {"device": "cpu", "allow_cpu_fallback": False, "generate_batch_size": 5, "generate_attention": "sdpa", "generate_compile": False}


def run_shard(model_dir, rows, out, batch_size=5):
    settings = {"generator_name": "g", "generator": EMBEDDED, "prompts": {}}
    index_path, counts_path = out / "shard-0.parquet", out / "shard-0.json"
    counts = generate.run_shard(
        settings, rows, shards=1, shard=0, model_dir=model_dir, images_root=out,
        execution={**EXECUTION, "generate_batch_size": batch_size}, gpus=0, threads=1,
        index_path=index_path, counts_path=counts_path,
    )
    return read_parquet(index_path), counts


@pytest.fixture
def generator_copy(tiny_generator, tmp_path):
    import shutil

    return Path(shutil.copytree(tiny_generator, tmp_path / "generator"))


def test_batch_size_remakes_nothing(generator_copy, tmp_path):
    rows = table()
    first, counts = run_shard(generator_copy, rows, tmp_path / "out", batch_size=5)
    assert counts["generated"] == 12
    again, counts = run_shard(generator_copy, rows, tmp_path / "out", batch_size=3)
    assert counts["resumed"] == 12 and counts["generated"] == 0
    assert list(again["path"]) == list(first["path"])


def test_replaced_weights_regenerate_every_image(generator_copy, tmp_path):
    rows = table()
    before, _ = run_shard(generator_copy, rows, tmp_path / "out")
    # New weights in place, under the same folder and file names.
    torch.manual_seed(1)
    unet = fit_generator.build_unet(image_size=8, num_classes=3, block_channels=[8, 16], layers_per_block=1)
    unet.save_pretrained(generator_copy / "unet", safe_serialization=True)
    after, counts = run_shard(generator_copy, rows, tmp_path / "out")
    assert counts["resumed"] == 0 and counts["generated"] == 12
    assert before["settings_id"].iloc[0] != after["settings_id"].iloc[0]
    old, new = images_of(before), images_of(after)
    assert not any(np.array_equal(old[r], new[r]) for r in old)


def test_reordered_class_index_never_keeps_a_mislabelled_image(generator_copy, tmp_path):
    before, _ = run_shard(generator_copy, table(), tmp_path / "out")
    swapped = CLASSES.assign(names=["one", "zero", "two"])  # labels 0 and 1 trade names
    rows = prompts.plain_prompts(swapped, "photo of the digit {name}", 4, base_seed=42)
    after, counts = run_shard(generator_copy, rows, tmp_path / "out")
    # Rows of the untouched class are kept; the others are made again for their new prompts.
    assert counts["resumed"] == 4 and counts["generated"] == 8
    kept = after[after["label"] == 2]
    assert list(kept["path"]) == list(before[before["label"] == 2]["path"])
    for _, row in after.iterrows():
        assert row["prompt"] == f"photo of the digit {['one', 'zero', 'two'][row['label']]}"
    remade = after[after["label"] != 2]
    assert not set(remade["path"]) & set(before["path"])


def test_weights_fingerprint_sees_every_weight_file(generator_copy):
    from contam import identity

    first = identity.weights_fingerprint(generator_copy)
    (generator_copy / "fit_summary.json").write_text("{\"seconds\": 1}")  # a log, not weights
    assert identity.weights_fingerprint(generator_copy) == first
    config = generator_copy / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace("squaredcos_cap_v2", "linear"))
    assert identity.weights_fingerprint(generator_copy) != first
