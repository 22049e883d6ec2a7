import copy
import os
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

    from contam.config import check_semantics

    validate(config, str(SCHEMA))
    check_semantics(config)
    return config


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


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def snakemake_env() -> dict:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(REPO / "src")
    return env


def tiny_config(default: dict) -> dict:
    """The embedded default shrunk to run the whole DAG in about two minutes."""
    config = yaml.safe_load(yaml.safe_dump(default))
    config["experiment"] = "tiny"
    config["real"]["image_size"] = 8
    config["real"]["split_fractions"] = {"train": 0.1, "control": 0.12, "test": 0.1}
    config["generators"]["digits_ddim"]["image_size"] = 8
    config["generators"]["digits_ddim"]["fit"].update(steps=30, block_channels=[16, 32])
    config["generators"]["digits_ddim"]["sample"]["steps"] = 4
    config["sources"]["generated"]["shards"] = 2
    config["sources"]["generated"]["prompts"]["images_per_class"] = 22
    config["mixing"]["ratios"] = [0.0, 0.5, 1.0]
    config["training"]["epochs"] = 2
    config["models"] = {"resnet10t": {"arch": "resnet10t", "image_size": 16}}
    config["analysis"].update(classifier="resnet10t", max_per_class=20)
    config["seeds"] = [0]
    return config
