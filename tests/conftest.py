import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def default_config() -> dict:
    return copy.deepcopy(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))


def validated(config: dict) -> dict:
    """Validate like the Snakefile does: schema (with defaults), then semantics."""
    from snakemake.utils import validate

    from contam.config_checks import check_semantics

    validate(config, str(SCHEMA))
    check_semantics(config)
    return config


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny Stable Diffusion pipeline with random weights, saved as safetensors
    and loaded by path like real weights."""
    from contam import random_pipelines

    return random_pipelines.save_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd", "tiny")


@pytest.fixture
def make_image_folder(tmp_path):
    """Build root/<folder>/<image> trees of small coloured images."""

    def build(name: str, folders: list[str], per_class: int = 3, size: int = 12, seed: int = 0) -> Path:
        root = tmp_path / name
        rng = np.random.default_rng(seed)
        for label, folder in enumerate(folders):
            (root / folder).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                array = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                array[..., label % 3] = 255  # a class signal a model can learn
                Image.fromarray(array).save(root / folder / f"img{i}.png")
        return root

    return build


def images_of(index) -> dict[int, np.ndarray]:
    """The pixels of a generated-images index, by prompt row."""
    return {int(r): np.asarray(Image.open(p)) for r, p in zip(index["row"], index["path"])}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def run_snakemake(*args, cwd: Path, env: dict | None = None, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run the workflow as a user would (targets go before --configfile, which takes several values)."""
    result = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, env=env or snakemake_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The "Job stats" table of a dry run, as {rule: count} (with "total")."""
    counts, in_table = {}, False
    for line in dry_run_output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table, counts = True, {}
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
            elif counts:
                in_table = False
    return counts


def snakemake_env() -> dict:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(REPO / "src")
    return env


def tiny_config(default: dict) -> dict:
    """The embedded default shrunk to run the whole DAG in about two minutes.

    Every job is a new Python process that imports torch (and timm or
    diffusers), which costs more than the work of any job here, so the DAG is
    kept to the fewest jobs that still hold every rule and both arms: one seed,
    one contaminated ratio (3 runs) and one generation shard (the text-to-image
    test uses two). No assertion looks at what the generator draws, so it fits
    for a few steps only. The bootstrap intervals and KID use few resamples: an
    interval is re-centred on its estimate (contam.analysis), so it is well
    formed at any count.
    """
    config = yaml.safe_load(yaml.safe_dump(default))
    config["experiment"] = "tiny"
    config["real"]["image_size"] = 8
    config["real"]["split_fractions"] = {"train": 0.1, "control": 0.12, "validation": 0.05, "reference": 0.12, "test": 0.1}
    config["generators"]["digits_ddim"]["image_size"] = 8
    config["generators"]["digits_ddim"]["fit"].update(steps=10, block_channels=[16, 32])
    config["generators"]["digits_ddim"]["sample"]["steps"] = 4
    config["sources"]["generated"]["shards"] = 1
    config["sources"]["generated"]["prompts"]["images_per_class"] = 22
    config["mixing"]["ratios"] = [0.0, 0.5]
    config["training"]["epochs"] = 2
    config["models"] = {"resnet10t": {"arch": "resnet10t", "image_size": 16}}
    config["analysis"].update(classifier="resnet10t", max_per_class=20, bootstrap=10, kid_subsets=10)
    config["seeds"] = [0]
    return config


# Built by the tiny study beside its default target: no run uses ratio 1.0 (one
# contaminated ratio keeps the study small), but its manifests are cheap.
FULL_REPLACEMENT = [f"results/tiny/manifests/{source}/ratio-1.0.parquet" for source in ("generated", "control")]


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> tuple[Path, Path]:
    """The whole DAG on the tiny config, run once per session: its root and config file.

    test_workflow.py checks it, and works on copies of it where a test changes
    inputs; test_slurm.py compares the SLURM run of the same study with it.
    Tests that rebuild part of it in place must leave it complete again.
    """
    root = tmp_path_factory.mktemp("study")
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config = write_yaml(root / "tiny.yaml", tiny_config(copy.deepcopy(default)))
    # The caller does not set HF_HUB_OFFLINE: the workflow itself does, for every
    # job (test_changed_real_data_regenerates_every_image checks a job's log).
    caller = {k: v for k, v in snakemake_env().items() if not k.startswith("HF_")}
    run_snakemake("all", *FULL_REPLACEMENT, "--cores", "2", "--configfile", str(config), cwd=root, env=caller)
    return root, config
