"""Benchmark: build the five ratio manifests of an ImageNet-size study.

Synthetic indexes: 1,281,167 real rows over 1,000 classes (ImageNet-1k's size)
and 1,300 generated rows per class (1.3M; the imagenet config's
images_per_class, enough for r = 1.0). Each variant runs in its own process so
that its peak memory (ru_maxrss) is its own.

Baseline, measured in the same run: a straightforward pandas implementation
(per-class ``groupby().sample()``), which is what a researcher would write
first. Prints seconds and peak MB for both and the speed ratio.

    python bench/mix.py [--classes 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

RATIOS = [0.0, 0.2, 0.4, 0.8, 1.0]


def make_indexes(classes: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    real_per_class = np.full(classes, 1281167 // 1000)
    real_per_class[: (1281167 * classes // 1000) - real_per_class.sum()] += 1
    labels = np.repeat(np.arange(classes), real_per_class)
    real = pd.DataFrame({"path": [f"train/n{l:08d}/{i:07d}.JPEG" for i, l in enumerate(labels)], "label": labels})
    real["class_name"] = "c" + real["label"].astype(str)
    gen_labels = np.repeat(np.arange(classes), 1300)
    generated = pd.DataFrame({"path": [f"gen/{i // 10000:04d}/{i:08d}.png" for i in range(len(gen_labels))], "label": gen_labels})
    generated["class_name"] = "c" + generated["label"].astype(str)
    generated["prompt"] = "photo of " + generated["class_name"]
    generated["seed"] = rng.integers(0, 2**62, len(generated))
    generated["generator"] = "sd"
    return real, generated


def run_contam(real, generated):
    from contam.mix import mix

    return [len(mix(real, generated, r, seed=0, source="sd", origin="generated")) for r in RATIOS]


def run_baseline(real, generated):
    import numpy as np
    import pandas as pd

    sizes = []
    for r in RATIOS:
        parts = []
        for label, group in real.groupby("label"):
            k = int(np.floor(r * len(group) + 0.5))
            shuffled = group.sample(frac=1.0, random_state=0)
            pool = generated[generated["label"] == label].sample(n=k, random_state=0) if k else generated.iloc[:0]
            parts += [shuffled.iloc[k:].assign(origin="real"), pool.assign(origin="generated")]
        sizes.append(len(pd.concat(parts, ignore_index=True)))
    return sizes


def child(variant: str, classes: int) -> None:
    real, generated = make_indexes(classes)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    sizes = (run_contam if variant == "contam" else run_baseline)(real, generated)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"variant": variant, "seconds": seconds, "peak_mb": peak / 1024, "peak_mb_over_inputs": (peak - before) / 1024, "sizes": sizes}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.classes)
        return
    results = {}
    for variant in ("baseline", "contam"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--classes", str(args.classes)], capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    base, ours = results["baseline"], results["contam"]
    assert base["sizes"] == ours["sizes"], (base["sizes"], ours["sizes"])
    print(f"five manifests from {ours['sizes'][0]:,} real rows and {1300 * args.classes:,} generated rows")
    print(f"{'variant':<10} {'seconds':>8} {'peak MB':>8} {'MB over inputs':>15}")
    for name, r in results.items():
        print(f"{name:<10} {r['seconds']:>8.2f} {r['peak_mb']:>8.0f} {r['peak_mb_over_inputs']:>15.0f}")
    print(f"speed-up over the baseline: {base['seconds'] / ours['seconds']:.1f}x (contam: {ours['seconds']:.2f} s, {ours['peak_mb']:.0f} MB peak)")


if __name__ == "__main__":
    main()
