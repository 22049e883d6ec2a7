"""Stage fit_and_score_generative_model (the fit and samples): the paper's second task, and the self-consuming loop.

A *unit* is one generative model (``contam.fit_generator``'s class-conditional
UNet) and the samples it draws:

* **contamination** units are trained on a classification manifest, one per
  (source, ratio, seed): the same mixes the classification study trains on, so
  both tasks share their data (ratio 0 is the shared real-only unit);
* **loop** units are generation g >= 1 of a regime (``contam.loop``), trained on a
  manifest built from the real data and earlier generations' samples.
  Generation 0 of every regime is the real-only unit of the same seed.

A unit's job fits the model (checkpointed, resumable) and then draws
``samples_per_class`` images per class with the same per-image machinery as a
generation shard (``contam.generate``): each image depends only on its row and
seed, is written atomically, and a killed job keeps the images already written.
Samples are drawn, and scored (``contam.score_samples``), in the same job as the
fit because another job would pay the imports again (about 10 s a job on the
embedded study's machine). The finished fit's checkpoint is kept beside the
model, so a rerun to rescore does not refit.

Seeds give common random numbers: every unit of seed s starts from the same
initial weights (from scratch), draws the same batch indices and the same
sampling noise, so paired differences between units of one seed come from their
training data, not from the noise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from contam import layout
from contam.config import num_classes
from contam.seeds import derive_seed

log = logging.getLogger(__name__)

CONTAMINATION = "contamination"
LOOP = "loop"
# A unit's samples are prompted by class name alone; the embedded model is class-conditional.
SAMPLE_TEMPLATE = "{name}"


@dataclass(frozen=True, order=True)
class Unit:
    track: str  # a source, the real baseline, or a regime
    level: str  # ratio-<r> or gen-<g>
    seed: int

    @property
    def study(self) -> str:
        return LOOP if self.level.startswith("gen-") else CONTAMINATION

    @property
    def ratio(self) -> float | None:
        return float(self.level.removeprefix("ratio-")) if self.study == CONTAMINATION else None

    @property
    def generation(self) -> int | None:
        return int(self.level.removeprefix("gen-")) if self.study == LOOP else None

    @property
    def name(self) -> str:
        return f"{self.track}/{self.level}/seed-{self.seed}"

    def metrics(self, out: str) -> str:
        return layout.generative_metrics(out, self.track, self.level, self.seed)

    def samples(self, out: str) -> str:
        return layout.generative_samples(out, self.track, self.level, self.seed)

    def model(self, out: str) -> str:
        return layout.generative_model(out, self.track, self.level, self.seed)


def real_unit(seed: int) -> Unit:
    """The real-only unit of a seed: ratio 0 of the contamination study, generation 0 of the loop."""
    return Unit(layout.BASELINE_SOURCE, layout.ratio_level(0), int(seed))


def loop_unit(regime: str, generation: int, seed: int) -> Unit:
    return real_unit(seed) if generation == 0 else Unit(regime, layout.generation_level(generation), int(seed))


def contamination_units(config: dict) -> list[Unit]:
    units = set()
    for ratio in config["mixing"]["ratios"]:
        tracks = [layout.BASELINE_SOURCE] if float(ratio) == 0 else sorted(config["sources"])
        units.update(Unit(t, layout.ratio_level(ratio), int(s)) for t in tracks for s in config["seeds"])
    return sorted(units)


def loop_units(config: dict) -> list[Unit]:
    loop = config["generative"]["loop"]
    return sorted(loop_unit(r, g, s) for r in loop["regimes"] for g in range(1, loop["generations"]) for s in config["seeds"])


def units(config: dict) -> list[Unit]:
    """Every generative model of the study, the shared real-only ones once."""
    return sorted(set(contamination_units(config)) | set(loop_units(config)) | {real_unit(s) for s in config["seeds"]})


def previous_unit(config: dict, unit: Unit) -> Unit | None:
    """The unit whose weights start a loop unit's fit (``loop.init: previous``), else None."""
    if unit.study != LOOP or config["generative"]["loop"]["init"] != "previous":
        return None
    return loop_unit(unit.track, unit.generation - 1, unit.seed)


def unit_settings(config: dict, unit: Unit) -> dict:
    """Everything that changes a unit's model or samples (its rule params), and nothing else."""
    spec = config["generative"]
    model = dict(spec["model"])
    fit = dict(model["fit"])
    init = "previous" if previous_unit(config, unit) else "scratch"
    if init == "previous" and spec["loop"].get("finetune_steps"):
        fit["steps"] = spec["loop"]["finetune_steps"]
    return {
        "image_size": model["image_size"],
        "fit": fit,
        "sample": model["sample"],
        "init": init,
        "samples_per_class": spec["samples_per_class"],
        "num_classes": num_classes(config),
        # Common random numbers: the unit's seed alone, never its track or level.
        "fit_seed": derive_seed(config["seed"], int(unit.seed), "generative-fit"),
        "sample_seed": derive_seed(config["seed"], int(unit.seed), "generative-samples"),
    }


def score_settings(config: dict) -> dict:
    """What changes a unit's scores: the comparison's settings and the judge."""
    keys = ("max_per_class", "nearest_k", "kid_subsets", "kid_subset_size", "bootstrap", "reference_split")
    analysis = config["analysis"]
    judge = analysis.get("classifier") or next(iter(config["models"]))
    return {key: analysis[key] for key in keys} | {
        "seed": config["seed"],
        "tail_fraction": config["generative"]["tail_fraction"],
        "judge": judge,
        "judge_model": config["models"][judge],
        "num_classes": num_classes(config),
        "crop_ratio": config["evaluation"]["crop_ratio"],
    }


def unit_description(unit: Unit, origins: dict[str, str]) -> dict:
    """The ``unit`` block of a unit's metrics record."""
    contamination = unit.study == CONTAMINATION
    return {
        "study": unit.study,
        "track": unit.track,
        "level": unit.level,
        "seed": int(unit.seed),
        "arm": unit.track if contamination else None,
        "origin": ("real" if unit.track == layout.BASELINE_SOURCE else origins.get(unit.track)) if contamination else None,
        "ratio": unit.ratio,
        "regime": None if contamination else unit.track,
        "generation": unit.generation,
    }


def loop_settings(config: dict, regime: str, generation: int) -> dict:
    loop = config["generative"]["loop"]
    return {
        "regime": regime,
        "generation": int(generation),
        "sample_generations": loop_sources(regime, int(generation)),
        "lambda": loop["lambda"],
        "fresh_splits": loop["fresh_splits"],
        "seed": config["seed"],
    }


def loop_sources(regime: str, generation: int) -> list[int]:
    """The generations whose samples a loop manifest draws on."""
    return list(range(generation)) if regime == "accumulate" else [generation - 1]


# ---- the job -------------------------------------------------------------------


def sample_prompts(settings: dict, class_names: dict[int, str]) -> pd.DataFrame:
    """``samples_per_class`` rows per class; a row's seed depends on the unit's seed and the row only."""
    from contam.prompts import plain_prompts

    labels = range(settings["num_classes"])
    classes = pd.DataFrame({"label": labels, "names": [class_names.get(c, f"class {c}") for c in labels]})
    return plain_prompts(classes, SAMPLE_TEMPLATE, settings["samples_per_class"], settings["sample_seed"])


def class_names_of(manifest: pd.DataFrame) -> dict[int, str]:
    """Class names as the training data give them (read at job time: no data is read to plan)."""
    pairs = manifest[["label", "class_name"]].drop_duplicates("label")
    return {int(label): str(name) for label, name in zip(pairs["label"], pairs["class_name"])}


def fit_and_sample(
    manifest: pd.DataFrame,
    settings: dict,
    unit_name: str,
    model_dir: str | Path,
    samples_path: str | Path,
    counts_path: str | Path,
    fingerprint: str,
    init_from: str | Path | None,
    execution: dict,
    gpus: int,
    threads: int,
) -> tuple[pd.DataFrame, dict]:
    """Fit a unit's model on ``manifest`` (resuming a killed fit), then draw its samples.

    Returns the samples' index and counts as written to ``samples_path`` and
    ``counts_path``, so the job scores them without reading them back.
    """
    from contam import identity
    from contam.devices import describe, pick_device
    from contam.fit_generator import fit
    from contam.generate import EmbeddedSampler, generate_shard
    from contam.io import write_json, write_parquet

    device = pick_device(execution["device"], gpus=gpus, allow_cpu_fallback=execution["allow_cpu_fallback"])
    log.info("device: %s; unit %s: %d training images (%s)", describe(device), unit_name, len(manifest), manifest["origin"].value_counts().to_dict())
    rows = manifest.sort_values("path", ignore_index=True)
    summary = fit(
        rows,
        num_classes=settings["num_classes"],
        out_dir=model_dir,
        image_size=settings["image_size"],
        fit_config=settings["fit"],
        seed=settings["fit_seed"] % 2**63,
        device=device,
        checkpoint=layout.fit_checkpoint(str(model_dir)),
        fingerprint=fingerprint,
        checkpoint_every=execution["checkpoint_steps"],
        init_from=init_from,
        keep_final=True,
    )
    log.info("fitted: %s", summary)
    weights = identity.weights_fingerprint(model_dir)
    # Samples depend on the weights and the sampling settings (each file name carries its row's key).
    settings_id = identity.settings_id({"generator": {"image_size": settings["image_size"], "sample": settings["sample"]}}, weights)
    images_dir = Path(samples_path).parent / f"samples-{settings_id}"
    index, counts = generate_shard(
        sample_prompts(settings, class_names_of(manifest)),
        images_dir,
        EmbeddedSampler(model_dir, settings["sample"], device),
        batch_size=execution["generate_batch_size"],
        generator_name=unit_name,
        settings_id=settings_id,
        writer_threads=max(threads, 2),
    )
    log.info("samples: %s", {k: v for k, v in counts.items() if k != "flagged_rows"})
    counts = {**counts, "fit": summary, "init": settings["init"], "settings_id": settings_id}
    write_json(counts, counts_path)
    write_parquet(index, samples_path)
    return index, counts
