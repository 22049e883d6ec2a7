"""One command calibrates the cost plan: every heavy stage timed, each result a ledger row.

    python bench/all.py --device cuda           # paper sizes on one GPU, within --budget-s (600)
    python bench/all.py --device cpu --small    # tiny sizes, about a minute on 2 cores (the test)
    make bench-gpu                              # --device auto: cuda if torch sees one, else cpu --small

Four parts, each against a baseline measured in the same run:

1. generation (rule generate_shard): the SD-1.5-shaped random-weight pipeline
   through ``contam.generate.DiffusersSampler`` (bench/generate.py's
   ``measure``), 512x512, 50 DDIM steps, guidance 7.5; fp16 and bf16 with SDPA
   at batch 1, 8 and 32, against fp32 with classic attention at batch 1; then,
   with the time left, ``torch.compile`` at batch 32 (and 1), each also against
   its eager row;
2. training (rule train): ResNet-50 at 224 px, bf16, channels-last, batch 256,
   ``contam.train`` against a plain PyTorch loop, on in-memory tensors and
   through JPEG files (bench/train.py's ``measure_all``);
3. evaluation (rule evaluate): ``contam.evaluate.predict`` through the JPEGs
   (fp32, as the workflow evaluates) against a plain forward loop over
   in-memory tensors;
4. feature extraction (rule extract_features): ``contam.analysis.classifier_features``,
   the "classifier" extractor, with a randomly initialised ResNet-50 (clean-fid's
   Inception needs its weights file, which an offline machine lacks), against
   the same plain loop over ``forward_features``.

Only steady-state work is timed: pipeline and model construction, warm-up
batches and compilation are printed but not counted. Each timed measurement
becomes one ledger row (``contam.ledger``) standing in for its rule, with its
work in that rule's unit (``contam.work``) and the settings the rate depends on,
in ``ledger/<device kind>.parquet``; ``python -m contam.plan --gpu-kind
"cuda:NVIDIA H200"`` then prices a study with them.

The budget: generation's eager configurations run first, keeping a reserve for
training, evaluation and features; the compiled configurations come last and
get what is left. Before each configuration its cost is guessed from the ones
already measured (conservatively: s/image of a smaller batch); one that would
overrun the budget is skipped and listed at the end.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read at import: nothing here downloads

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from contam import analysis, evaluate, ledger, work  # noqa: E402
from contam.models import create_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as bench_train  # noqa: E402  (bench/train.py)
from synthetic_images import make_jpegs  # noqa: E402

IMPORTED = time.perf_counter()
REPO = Path(__file__).resolve().parent.parent
PARTS = ("generation", "training", "evaluation", "features")
GUIDANCE = 7.5
CROP_RATIO = 0.875


@dataclass
class Plan:
    """The sizes of one run: the paper's on a GPU, tiny ones on a CPU (``--small``)."""

    shape: str  # random_pipelines shape
    height: int
    steps: int
    gen_repeats: int  # timed batches per configuration, after one warm-up batch
    gen_configs: list[str]  # eager; the first is the baseline
    compile_configs: list[str]  # run last, with the time left
    compile_guess_s: float  # what one compilation is assumed to take, for the budget
    reserve_s: float  # kept for training, evaluation and features while generation runs
    arch: str
    image_size: int
    precision: str
    channels_last: bool
    batch_size: int
    train_steps: int  # per epoch; the JPEG set (and the evaluation set) is steps x batch images
    workers: int


PAPER = Plan(
    shape="sd15", height=512, steps=50, gen_repeats=2,
    gen_configs=["fp32:classic:1", "fp16:sdpa:1", "fp16:sdpa:8", "fp16:sdpa:32", "bf16:sdpa:1", "bf16:sdpa:8", "bf16:sdpa:32"],
    compile_configs=["fp16:sdpa:32:compile", "bf16:sdpa:32:compile", "fp16:sdpa:1:compile", "bf16:sdpa:1:compile"],
    compile_guess_s=150.0, reserve_s=150.0,
    arch="resnet50", image_size=224, precision="bf16", channels_last=True, batch_size=256, train_steps=30,
    workers=min(8, max(1, (os.cpu_count() or 2) - 2)),
)
# Every code path at toy sizes, for the test and a 2-core machine: both half
# precisions, batching, bf16 + channels-last training. Left out: compilation
# (inductor's C++ build of even the tiny UNet outlasts the rest of the run)
# and the batch sizes 8 and 32 (on a CPU each half-precision configuration's
# warm-up costs seconds, and the figures would say nothing about a GPU).
SMALL = Plan(
    shape="tiny", height=32, steps=2, gen_repeats=1,
    gen_configs=["fp32:classic:1", "fp16:sdpa:2", "bf16:sdpa:2"], compile_configs=[], compile_guess_s=60.0, reserve_s=0.0,
    arch="resnet10t", image_size=32, precision="bf16", channels_last=True, batch_size=8, train_steps=3, workers=1,
)


class Budget:
    """Wall seconds left in the run; refuses (and records) what would overrun it."""

    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def fits(self, name: str, guess_s: float, reserve_s: float = 0.0) -> bool:
        if guess_s + reserve_s <= self.left():
            return True
        reserved = f" + {reserve_s:.0f} s kept for later parts" if reserve_s else ""
        note = f"{name}: needs about {guess_s:.0f} s{reserved}, {max(self.left(), 0):.0f} s left"
        self.skipped.append(note)
        print(f"# skipped {note}", flush=True)
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{ledger.this_cpu()}, {torch.get_num_threads()} threads"


def ledger_row(device_kind: str, part: str, rule: str, job: str, work_done: float, unit: str, wall_s: float, settings: dict, gpus: int) -> dict:
    return {
        "device_kind": device_kind, "rule": rule, "job": job, "work": work_done, "work_unit": unit, "wall_s": wall_s,
        "threads": torch.get_num_threads(), "gpus": gpus, "settings": ledger.settings_json(settings),
        "origin": f"bench:all.py/{part}", "experiment": "bench", "measured_at": ledger.now(), "host": platform.node(),
    }


def table(header: list[str], lines: list[list[str]]) -> str:
    rule = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *lines])


# ---- 1. generation --------------------------------------------------------------


def generation_guess(config: dict, done: list[dict], plan: Plan) -> float:
    """Seconds a configuration should take: set-up, warm-up and timed batches (and compilation).

    Per-image time is taken from the same configuration run eagerly, else from
    the largest measured batch of the same dtype not above this one, else from
    the last eager row (the baseline first): per-image time falls with the
    batch, so this over-estimates rather than under.
    """
    eager = [r for r in done if not r["compile"]]
    same = [r for r in eager if r["dtype"] == config["dtype"] and r["attention"] == config["attention"] and r["batch"] <= config["batch"]]
    reference = max(same, key=lambda r: r["batch"]) if same else eager[-1]
    per_image = reference["s_per_image"]
    guess = reference["setup_s"] + (1 + plan.gen_repeats) * config["batch"] * per_image
    return guess + (plan.compile_guess_s if config["compile"] else 0.0)


class Generation:
    """Builds the random pipeline once; measures eager configurations, then compiled ones."""

    def __init__(self, plan: Plan, device: torch.device):
        import diffusers

        import generate as bench_generate  # bench/generate.py (imports diffusers)
        from contam import random_pipelines

        diffusers.utils.logging.set_verbosity_error()
        self.bench, self.plan, self.device = bench_generate, plan, device
        self.args = argparse.Namespace(steps=plan.steps, height=plan.height, repeats=plan.gen_repeats, unet_flops=False)
        start = time.perf_counter()
        self.master = random_pipelines.build_pipeline(plan.shape)
        self.build_s = time.perf_counter() - start
        self.rows: list[dict] = []

    def run(self, names: list[str], budget: Budget, reserve_s: float) -> None:
        for name in names:
            config = self.bench.parse(name)
            # The baseline always runs: every other row is a ratio to it.
            if self.rows and not budget.fits(f"generation {name}", generation_guess(config, self.rows, self.plan), reserve_s):
                continue
            row = self.bench.measure(self.master, config, self.args, self.device, {})
            row["vs_baseline"] = self.rows[0]["s_per_image"] / row["s_per_image"] if self.rows else 1.0
            eager = self.eager_twin(row)
            row["vs_eager"] = eager["s_per_image"] / row["s_per_image"] if eager else None
            self.rows.append(row)
            print(f"# generation {name}: {row['s_per_image']:.4f} s/image ({row['vs_baseline']:.2f}x baseline)", flush=True)

    def eager_twin(self, row: dict) -> dict | None:
        if not row["compile"]:
            return None
        return next((r for r in self.rows if not r["compile"] and (r["dtype"], r["attention"], r["batch"]) == (row["dtype"], row["attention"], row["batch"])), None)

    def print_table(self, compiled: bool) -> None:
        rows = [r for r in self.rows if r["compile"] == compiled]
        if not rows:
            return
        p = self.plan
        title = "compiled UNet (torch.compile), warm-up includes compilation" if compiled else "eager"
        print(f"\n## generation, {title}: {p.shape} pipeline, {p.height}x{p.height}, {p.steps} DDIM steps, guidance {GUIDANCE}; pipeline built in {self.build_s:.1f} s\n")
        header = ["configuration", "images", "timed s", "s/image", "images/s", "vs baseline"] + (["vs eager"] if compiled else []) + ["set-up s", "warm-up s"]
        lines = []
        for r in rows:
            cells = [r["name"] + (" (baseline)" if r is self.rows[0] else ""), f"{r['images']}", f"{r['seconds']:.2f}", f"{r['s_per_image']:.4f}", f"{r['images_per_s']:.2f}", f"{r['vs_baseline']:.2f}x"]
            if compiled:
                cells.append(f"{r['vs_eager']:.2f}x" if r["vs_eager"] else "n/a")
            lines.append(cells + [f"{r['setup_s']:.1f}", f"{r['warmup_s']:.1f}"])
        print(table(header, lines), flush=True)

    def ledger_rows(self, device_kind: str, gpus: int) -> list[dict]:
        p = self.plan
        return [
            ledger_row(
                device_kind, "generation", "generate_shard", r["name"], work.generation(r["images"], p.steps, p.height, p.height, work.guides("diffusers", GUIDANCE)),
                "image_step_mpx", r["seconds"], {"dtype": r["dtype"], "batch_size": r["batch"], "attention": r["attention"], "compile": r["compile"], "shape": p.shape}, gpus,
            )
            for r in self.rows
        ]


# ---- 2. training ------------------------------------------------------------------


def training(plan: Plan, device: torch.device, tmp: Path, budget: Budget) -> tuple[list[dict], pd.DataFrame]:
    args = argparse.Namespace(
        arch=plan.arch, image_size=plan.image_size, batch_size=plan.batch_size, steps=plan.train_steps,
        precision=plan.precision, channels_last=plan.channels_last, workers=plan.workers,
    )
    timed, manifest = bench_train.measure_all(args, device, tmp, budget=lambda name, guess: budget.fits(f"training {name}", guess))
    rows = []
    for name, (images, seconds) in timed.items():
        loop, data = name.split(", ")
        baseline = timed.get(f"baseline, {data}")
        rows.append({
            "name": name, "loop": "plain" if loop == "baseline" else "contam", "loader": "synthetic" if data == "synthetic" else "files",
            "images": images, "seconds": seconds, "images_per_s": images / seconds,
            "vs_baseline": (baseline[1] / baseline[0]) / (seconds / images) if baseline else None,
        })
    print(f"\n## training: {plan.arch} at {plan.image_size} px, {plan.precision}, channels-last {plan.channels_last}, batch {plan.batch_size}, "
          f"{plan.train_steps} steps/epoch, {plan.workers} loader workers; the second of two epochs is timed\n")
    print(table(["measurement", "images", "timed s", "images/s", "vs baseline (same data)"],
                [[r["name"], f"{r['images']}", f"{r['seconds']:.2f}", f"{r['images_per_s']:.1f}", f"{r['vs_baseline']:.3f}" if r["vs_baseline"] else "n/a"] for r in rows]), flush=True)
    return rows, manifest


def training_ledger_rows(rows: list[dict], plan: Plan, device_kind: str, gpus: int) -> list[dict]:
    gmacs = work.model_gmacs(plan.arch, plan.image_size, bench_train.CLASSES)
    settings = {"arch": plan.arch, "image_size": plan.image_size, "precision": plan.precision, "channels_last": plan.channels_last, "batch_size": plan.batch_size}
    return [
        ledger_row(device_kind, "training", "train", f"{r['loop']}:{r['loader']}", work.training(r["images"], epochs=1, gmacs=gmacs), "image_epoch_gmac",
                   r["seconds"], {**settings, "loader": r["loader"], "loop": r["loop"]}, gpus)
        for r in rows
    ]


# ---- 3. and 4. evaluation and feature extraction ----------------------------------


@torch.no_grad()
def plain_inference(forward, plan: Plan, images: int, device: torch.device) -> tuple[int, float]:
    """The baseline: batches cut from in-memory tensors, straight through ``forward``; one warm-up batch."""
    pool = bench_train.Synthetic(images, plan.image_size).images
    batches = [torch.arange(i, min(i + plan.batch_size, images)) % len(pool) for i in range(0, images, plan.batch_size)]
    forward(pool[batches[0]].to(device))
    sync(device)
    start = time.perf_counter()
    for index in batches:
        forward(pool[index].to(device))
    sync(device)
    return images, time.perf_counter() - start


def timed_call(call, manifest: pd.DataFrame, plan: Plan, device: torch.device) -> tuple[int, float]:
    """The project's code path over ``manifest``, after one warm-up call on one batch."""
    call(manifest.iloc[: plan.batch_size])
    sync(device)
    start = time.perf_counter()
    call(manifest)
    sync(device)
    return len(manifest), time.perf_counter() - start


def inference(part: str, plan: Plan, device: torch.device, manifest: pd.DataFrame, budget: Budget) -> list[dict]:
    """Evaluation or feature extraction: the plain loop, then contam's code path through the JPEGs."""
    torch.manual_seed(0)
    # A random classifier of the workflow's architecture: load_classifier without the weights file.
    model = create_model(plan.arch, bench_train.CLASSES).to(device).eval()
    if part == "evaluation":
        plain = lambda x: model(x).float().cpu()  # noqa: E731  (what evaluate.predict does per batch)
        ours = lambda m: evaluate.predict(model, m, plan.image_size, CROP_RATIO, device, plan.batch_size, plan.workers)  # noqa: E731
        what = "contam.evaluate.predict"
    else:
        plain = lambda x: model.forward_head(model.forward_features(x), pre_logits=True).float().cpu()  # noqa: E731
        ours = lambda m: analysis.classifier_features(model, m["path"].astype(str).tolist(), plan.image_size, CROP_RATIO, device, plan.batch_size, plan.workers)  # noqa: E731
        what = "contam.analysis.classifier_features"
    rows = []
    measured = {}
    for name, loader, run in (("plain loop, in memory", "synthetic", lambda: plain_inference(plain, plan, len(manifest), device)),
                              (f"{what}, files", "files", lambda: timed_call(ours, manifest, plan, device))):
        guess = 3 * max(measured.values(), default=0.0)  # the first is skipped only once the time is out
        if not budget.fits(f"{part} {name}", guess):
            continue
        images, seconds = run()
        measured[name] = seconds
        rows.append({"name": name, "loop": "plain" if loader == "synthetic" else "contam", "loader": loader, "images": images, "seconds": seconds,
                     "images_per_s": images / seconds, "vs_baseline": (rows[0]["seconds"] / rows[0]["images"]) / (seconds / images) if rows else 1.0})
    if not rows:
        return rows
    extractor = "" if part == "evaluation" else ", the classifier extractor (pre-logits), random weights"
    print(f"\n## {part}: {plan.arch} at {plan.image_size} px{extractor}, fp32 as the workflow runs it, batch {plan.batch_size}, "
          f"{plan.workers} loader workers, {len(manifest)} JPEGs; one warm-up batch untimed\n")
    print(table(["measurement", "images", "timed s", "images/s", "vs baseline"],
                [[r["name"] + (" (baseline)" if r is rows[0] else ""), f"{r['images']}", f"{r['seconds']:.2f}", f"{r['images_per_s']:.1f}", f"{r['vs_baseline']:.3f}"] for r in rows]), flush=True)
    return rows


def inference_ledger_rows(part: str, rows: list[dict], plan: Plan, device_kind: str, gpus: int) -> list[dict]:
    gmacs = work.model_gmacs(plan.arch, plan.image_size, bench_train.CLASSES)
    rule = "evaluate" if part == "evaluation" else "extract_features"
    settings = {"arch": plan.arch, "image_size": plan.image_size, "precision": "fp32", "batch_size": plan.batch_size}
    if part == "features":
        settings["extractor"] = "classifier"
    return [
        ledger_row(device_kind, part, rule, f"{r['loop']}:{r['loader']}", work.inference(r["images"], gmacs), "image_gmac", r["seconds"],
                   {**settings, "loader": r["loader"], "loop": r["loop"]}, gpus)
        for r in rows
    ]


# ---- the run ----------------------------------------------------------------------


def pick(device: str, small: bool) -> tuple[torch.device, Plan]:
    """The device and sizes; refuses what cannot run, saying why."""
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        else:
            print("# no CUDA device visible: running the small CPU form (--device cpu --small)")
            device, small = "cpu", True
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: torch {torch.__version__} sees no CUDA device (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})")
    if device == "cpu" and not small:
        raise SystemExit("--device cpu runs the paper sizes (SD-1.5 at 512x512, ResNet-50 at 224 px): hours on a CPU; add --small for the tiny CPU form")
    return torch.device(device), (SMALL if small else PAPER)


def device_setting(value: str) -> str:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or auto, got {value!r}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--device", type=device_setting, default="auto", help="cpu, cuda, cuda:N, or auto (cuda if visible, else cpu --small)")
    parser.add_argument("--small", action="store_true", help="tiny sizes (the CPU form and the test)")
    parser.add_argument("--ledger", default=str(REPO / "ledger"), help="ledger folder (default: ledger/ at the repository root)")
    parser.add_argument("--no-ledger", action="store_true", help="print the tables, write no ledger rows")
    parser.add_argument("--json", help="also write every measurement to this file")
    parser.add_argument("--budget-s", type=float, default=600.0, help="wall seconds for the whole run (default 600)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run (default all)")
    args = parser.parse_args(argv)
    device, plan = pick(args.device, args.small)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    budget = Budget(args.budget_s - (time.perf_counter() - STARTED))
    kind = ledger.this_device_kind(str(device))
    gpus = 1 if device.type == "cuda" else 0
    print(f"# bench/all.py on {device_name(device)} ({kind}); torch {torch.__version__}; {'small' if plan is SMALL else 'paper'} sizes; "
          f"budget {args.budget_s:.0f} s; imports took {IMPORTED - STARTED:.1f} s", flush=True)

    results: dict[str, list[dict]] = {}
    rows: list[dict] = []
    generation = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "generation" in args.parts:
            try:
                generation = Generation(plan, device)
            except ImportError as error:  # an image without diffusers can still time the rest
                budget.skipped.append(f"generation: {error}")
                print(f"# skipped generation: {error}", flush=True)
            if generation:
                reserve = plan.reserve_s if set(args.parts) - {"generation"} else 0.0
                generation.run(plan.gen_configs, budget, reserve)
                generation.print_table(compiled=False)
        manifest = None
        if "training" in args.parts:
            results["training"], manifest = training(plan, device, tmp, budget)
            rows += training_ledger_rows(results["training"], plan, kind, gpus)
        if manifest is None and {"evaluation", "features"} & set(args.parts):
            manifest = make_jpegs(tmp / "images", plan.train_steps * plan.batch_size, bench_train.CLASSES, int(round(plan.image_size * 8 / 7)))
        for part in ("evaluation", "features"):
            if part in args.parts:
                results[part] = inference(part, plan, device, manifest, budget)
                rows += inference_ledger_rows(part, results[part], plan, kind, gpus)
        if generation:
            generation.run(plan.compile_configs, budget, 0.0)
            generation.print_table(compiled=True)
            results["generation"] = [{k: v for k, v in r.items() if k != "image_std"} for r in generation.rows]
            rows = generation.ledger_rows(kind, gpus) + rows

    if args.no_ledger:
        where = "no ledger rows written (--no-ledger)"
    else:
        added = ledger.append(rows, args.ledger)
        where = f"{sum(added.values())} rows added to {ledger.ledger_file(args.ledger, kind)}"
    if plan is SMALL:
        print("\n# not run in the small form: torch.compile, generation batches 8 and 32 (see SMALL in bench/all.py)")
    for note in budget.skipped:
        print(f"# skipped: {note}")
    total = time.perf_counter() - STARTED
    print(f"\n# {where}; whole run {total:.1f} s (imports {IMPORTED - STARTED:.1f} s)", flush=True)
    record = {"device": device_name(device), "device_kind": kind, "plan": asdict(plan), "parts": results, "skipped": budget.skipped, "ledger_rows": len(rows), "seconds": total}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, default=str))
    return record


if __name__ == "__main__":
    main()
