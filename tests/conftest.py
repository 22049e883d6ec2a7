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
