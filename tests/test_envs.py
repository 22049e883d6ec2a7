"""Conda cannot run here, so check that envs/*.yaml pin what requirements.txt pins."""

import re

import yaml


def pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            out[match.group(1).lower().replace("_", "-")] = match.group(2)
    return out


def test_conda_envs_agree_with_requirements(repo):
    required = pins((repo / "requirements.txt").read_text().splitlines())
    assert required["torch"] == "2.14.1" and "diffusers" in required
    envs = sorted((repo / "envs").glob("*.yaml"))
    assert {e.stem for e in envs} >= {"generate", "train", "evaluate", "report"}
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip_lists = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d]
        assert pip_lists, env
        env_pins = pins(pip_lists[0])
        assert env_pins, env
        for name, version in env_pins.items():
            assert required.get(name) == version, f"{env.name}: {name}=={version} but requirements.txt pins {required.get(name)}"


def test_pyproject_pins_agree_with_requirements(repo):
    required = pins((repo / "requirements.txt").read_text().splitlines())
    text = (repo / "pyproject.toml").read_text()
    declared = pins(re.findall(r'^\s*"([^"]+)",\s*$', text, flags=re.M))
    assert declared == required


def test_every_rule_uses_an_existing_env(repo):
    for rules in (repo / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'"\.\./\.\./(envs/[^"]+)"', rules.read_text()):
            assert (repo / env).exists(), (rules.name, env)
