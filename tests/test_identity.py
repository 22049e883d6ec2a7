"""What names an image folder and fingerprints a run (contam.identity, contam.layout)."""

import pandas as pd

from conftest import validated
from contam import identity, index_real, layout
from contam.io import write_parquet


def test_generation_settings_hold_what_changes_images_only(default_config):
    config = validated(default_config)
    settings = identity.generation_settings(config, "generated")
    assert set(settings) == {"generator_name", "generator", "prompts"}
    config["execution"]["generate_batch_size"] = 3  # speed only
    assert identity.generation_settings(config, "generated") == settings
    base = identity.settings_id(settings, "w")
    policy = {**settings, "generator": {**settings["generator"], "on_unsafe": "drop", "allow_download": True}}
    assert identity.settings_id(policy, "w") == base
    changed = {**settings, "generator": {**settings["generator"], "sample": {"steps": 9}}}
    assert identity.settings_id(changed, "w") != base
    assert identity.settings_id(settings, "other weights") != base


def test_run_settings_count_training_processes(default_config):
    config = validated(default_config)
    assert identity.run_settings(config, "resnet10t", 0)["processes"] == 1
    config["resources"]["train"]["gpu"] = 4
    settings = identity.run_settings(config, "resnet10t", "1")
    assert settings["processes"] == 4 and settings["seed"] == 1


def test_row_keys_see_prompt_label_and_seed():
    rows = pd.DataFrame({"prompt": ["a", "a", "a", "b"], "label": [0, 1, 0, 0], "seed": [5, 5, 6, 5]})
    keys = identity.row_keys(rows)
    assert len(set(keys)) == 4
    # Pinned: a key names files on disk, so it must not drift between versions.
    assert keys[0] == identity.row_keys(rows.iloc[:1])[0] == "0828eebe55"


def test_run_fingerprint_sees_images_remade_under_the_same_paths(tmp_path):
    """A manifest lists paths; the indexes behind it say what the images are."""
    first = index_real.export_digits(tmp_path / "a", 8, {"train": 0.5, "test": 0.5}, seed=0)
    again = index_real.export_digits(tmp_path / "a", 12, {"train": 0.5, "test": 0.5}, seed=0)
    assert list(first["path"]) == list(again["path"])
    assert (first["content_id"] != again["content_id"]).all()

    manifest = tmp_path / "manifest.parquet"
    write_parquet(first[["path", "label"]], manifest)
    write_parquet(first, tmp_path / "index.parquet")
    before = identity.run_fingerprint({"seed": 0}, manifest, [tmp_path / "index.parquet"])
    write_parquet(again, tmp_path / "index.parquet")
    assert identity.run_fingerprint({"seed": 0}, manifest, [tmp_path / "index.parquet"]) != before
    assert identity.run_fingerprint({"seed": 1}, manifest, [tmp_path / "index.parquet"]) != before


def test_layout_owns_each_path():
    assert layout.metrics("out", "generated", "0.4", "resnet18", 1) == "out/runs/generated/ratio-0.4/resnet18/seed-1/metrics.json"
    assert layout.weights("out", "{source}", "{ratio}", "{model}", "{seed}") == "out/runs/{source}/ratio-{ratio}/{model}/seed-{seed}/model.safetensors"
    assert layout.manifest("out", layout.BASELINE_SOURCE, layout.BASELINE_RATIO) == "out/manifests/real/ratio-0.0.parquet"
    assert layout.job_file("logs/x", "train", "log") == "logs/x/train/{source}/ratio-{ratio}/{model}/seed-{seed}.log"
    assert layout.job_file("b/x", "generate_shard", "tsv", generated_source="g", shard=3) == "b/x/generate_shard/g/shard-3.tsv"
    assert layout.job_file("b/x", "index_real", "tsv") == "b/x/index_real.tsv"
    assert layout.rule_of_job_file("b/x", "b/x/index_real.tsv") == "index_real"
    assert layout.rule_of_job_file("b/x", "b/x/train/real/ratio-0.0/m/seed-0.tsv") == "train"
