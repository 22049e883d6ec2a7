import pytest

from conftest import validated

from contam import resources


def test_scaled_grows_per_attempt_and_caps():
    assert resources.scaled(60, 1, 2.0, 1000) == 60
    assert resources.scaled(60, 2, 2.0, 1000) == 120
    assert resources.scaled(60, 3, 2.0, 1000) == 240
    assert resources.scaled(60, 6, 2.0, 1000) == 1000


def test_scaled_rejects_attempt_zero():
    with pytest.raises(ValueError):
        resources.scaled(60, 0, 2.0, 1000)


def test_rule_sizes_come_from_config(default_config):
    default_config["resources"] = {"default": {"runtime": 10, "mem_mb": 1000}, "train": {"runtime": 600, "gpu": 1}, "max_runtime": 1000, "max_mem_mb": 3000, "growth": 1.5}
    config = validated(default_config)
    assert resources.resource_set(config, "train")["gpu"] == 1
    assert resources.resource_set(config, "evaluate")["gpu"] == 0
    assert resources.runtime_minutes(config, "train", 1) == 600
    assert resources.runtime_minutes(config, "train", 2) == 900
    assert resources.runtime_minutes(config, "train", 3) == 1000
    assert resources.mem_mb(config, "evaluate", 4) == 3000


def test_default_resources_reach_every_rule_without_its_own_entry(default_config):
    # The schema fills defaults; a rule entry must not shadow resources.default with them.
    default_config["resources"] = {"default": {"threads": 4, "mem_mb": 8000}, "train": {"gpu": 2}}
    config = validated(default_config)
    assert resources.resource_set(config, "evaluate") == {"threads": 4, "mem_mb": 8000, "runtime": 30, "gpu": 0}
    assert resources.resource_set(config, "train") == {"threads": 4, "mem_mb": 8000, "runtime": 30, "gpu": 2}
