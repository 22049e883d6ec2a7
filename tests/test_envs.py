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


def _imports(path):
    """Top-level names a Python file imports, anywhere in it (functions included)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            if node.module == "contam":
                names |= {f"contam.{alias.name}" for alias in node.names}
    return names


def _third_party_imports(script, src):
    """Packages a glue script needs: its imports and, transitively, the contam modules'."""
    import sys

    seen, todo, packages = set(), [script], set()
    while todo:
        path = todo.pop()
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "contam":
                module = src / (name.replace(".", "/") + ".py")
                if module.exists() and module not in seen:
                    seen.add(module)
                    todo.append(module)
            elif top not in sys.stdlib_module_names and top != "snakemake":
                packages.add(top)
    return packages


def test_each_env_pins_what_its_rules_import(repo):
    """A conda env must hold every package its rules' scripts import (conda cannot run here)."""
    from importlib.metadata import packages_distributions

    distributions = packages_distributions()
    problems = []
    for rules in (repo / "workflow" / "rules").glob("*.smk"):
        text = rules.read_text()
        for block in re.split(r"(?m)^rule ", text)[1:]:
            env = re.search(r'conda:\s*"\.\./\.\./(envs/[^"]+)"', block)
            script = re.search(r'script:\s*"\.\./(scripts/[^"]+)"', block)
            if not (env and script):
                continue
            spec = yaml.safe_load((repo / env.group(1)).read_text())
            pinned = set(pins(next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))))
            for package in _third_party_imports(repo / "workflow" / script.group(1), repo / "src"):
                names = {n.lower().replace("_", "-") for n in distributions.get(package, [package])}
                if not names & pinned:
                    problems.append(f"rule {block.split(':')[0]}: {script.group(1)} imports {package} ({', '.join(sorted(names))}), which {env.group(1)} does not pin")
    assert not problems, "\n".join(problems)
