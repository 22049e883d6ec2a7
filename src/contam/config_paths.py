"""Data paths an experiment config names, checked before the first job runs.

The Snakefile checks them in ``onstart``: a real run fails before any job when
a path is missing, while a dry run plans the paper-scale DAG on any machine.
"""

from __future__ import annotations

from pathlib import Path

from contam import label_files


def data_paths(config: dict) -> dict[str, str]:
    """Every input path the config names, by key."""
    paths: dict[str, str] = {}
    real = config.get("real", {})
    for key in ("root", "test_root", "class_index", "test_labels", "test_labels_meta", "split_file"):
        if key in real:
            paths[f"real.{key}"] = real[key]
    for key in ("captions", "images"):
        for i, path in enumerate(real.get(key, [])):
            paths[f"real.{key}[{i}]"] = path
    captioner = config.get("captioning", {}).get("captioner", {})
    if captioner.get("kind") == "folder" and "folder" in captioner:
        paths["captioning.captioner.folder"] = captioner["folder"]
    for name, src in config["sources"].items():
        if "root" in src:
            paths[f"sources.{name}.root"] = src["root"]
            for i, file_list in enumerate(src.get("file_lists", [])):
                paths[f"sources.{name}.file_lists[{i}]"] = str(label_files.resolve(src["root"], file_list))
        if "index" in src:
            paths[f"sources.{name}.index"] = src["index"]
        captions = src.get("prompts", {}).get("captions")
        if captions:
            paths[f"sources.{name}.prompts.captions"] = captions
    for name, gen in config.get("generators", {}).items():
        # A model is a local folder unless the config opts in to hub downloads.
        if gen.get("model") and not gen.get("allow_download", False):
            paths[f"generators.{name}.model"] = gen["model"]
    analysis = config.get("analysis", {})
    if analysis.get("enabled", True) and analysis.get("feature_extractor") == "inception" and "inception_weights" in analysis:
        paths["analysis.inception_weights"] = analysis["inception_weights"]
    for name, ood in config.get("evaluation", {}).get("ood_sets", {}).items():
        paths[f"evaluation.ood_sets.{name}.root"] = ood["root"]
    return paths


def missing_paths(config: dict) -> list[str]:
    problems = []
    for key, path in data_paths(config).items():
        if not Path(path).expanduser().exists():
            hint = " (a hub id needs allow_download: true)" if key.startswith("generators.") and not str(path).startswith(("/", ".", "~")) else ""
            problems.append(f"{key}: path {path!r} does not exist{hint}")
    real = config.get("real", {})
    if not problems and real.get("kind") == "coco" and config.get("task") == "captioning":
        # Only once every path exists: the split file is read against the captions and image folders.
        from contam.caption_data import split_file_problems

        problems += split_file_problems(real)
    return problems


def hub_downloads_allowed(config: dict) -> bool:
    """Whether any generator may fetch its weights from a hub (else jobs run offline)."""
    return any(gen.get("allow_download", False) for gen in config.get("generators", {}).values())
