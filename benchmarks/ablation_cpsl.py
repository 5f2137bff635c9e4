"""Where CPSL's gain and cost come from: its parts switched off one at a time on the synthetic benchmark.

    python benchmarks/ablation_cpsl.py            # runs what is missing in runs/abl, writes the table

Each variant adapts for 600 iterations, on seed 0 (one variant also on seed 1): the `plain` variants from the
shared source-only warm-up of `bench_synthetic.py` (runs/bench/warmup-s<seed>, run that first), the `diga`
variants as `diga+dida+cpsl` with DiGA's own 600-iteration warm-up. Finished runs are reused. Results:
benchmarks/results/cpsl-ablation-cpu.{json,md}, with each run's CPSL options and thread count as it ran.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_synthetic import RESULTS, ROOT, train_run  # noqa: E402

OUT = ROOT / "runs" / "abl"
COMMON = ["--set", "train.eval_every=0", "--set", "train.threads=1", "--iters", "600"]
# name: (what it measures, seeds, warm-up, method, CPSL overrides)
VARIANTS = {
    "noanchor": (
        "all parts, no source anchor, swapped self-labeling (the earlier default)",
        [0],
        "plain",
        "cpsl",
        ["source_weight=0", "self_label_view=strong"],
    ),
    "rectonly": (
        "rectification only, no CPSL loss",
        [0],
        "plain",
        "cpsl",
        ["self_label_weight=0", "consistency_weight=0", "source_weight=0"],
    ),
    "norect": (
        "losses without rectification, no anchor, swapped self-labeling",
        [0],
        "plain",
        "cpsl",
        ["rectify=false", "source_weight=0", "self_label_view=strong"],
    ),
    "anchor": ("+ source anchor, swapped self-labeling", [0], "plain", "cpsl", ["self_label_view=strong"]),
    "anchor-nocons": (
        "+ source anchor, swapped self-labeling, no consistency",
        [0],
        "plain",
        "cpsl",
        ["self_label_view=strong", "consistency_weight=0"],
    ),
    "anchor-slweak": ("defaults: source anchor, weak-view self-labeling", [0, 1], "plain", "cpsl", []),
    "diga3-rectonly": (
        "diga+dida+cpsl, CPSL rectification only",
        [0],
        "diga",
        "diga+dida+cpsl",
        ["self_label_weight=0", "consistency_weight=0", "source_weight=0"],
    ),
    "diga3-norect": ("diga+dida+cpsl, no rectification", [0], "diga", "diga+dida+cpsl", ["rectify=false"]),
    "diga3-nocons": ("diga+dida+cpsl, no consistency", [0], "diga", "diga+dida+cpsl", ["consistency_weight=0"]),
    "diga3-nosrc": ("diga+dida+cpsl, no source anchor", [0], "diga", "diga+dida+cpsl", ["source_weight=0"]),
}


def run(name: str, seed: int) -> dict:
    _, _, warmup, method, sets = VARIANTS[name]
    args = ["--seed", str(seed), "--method", method, *COMMON]
    args += [x for s in sets for x in ("--set", f"methods.cpsl.{s}")]
    if warmup == "diga":
        args += ["--warmup", "diga", "--warmup-iters", "600"]
    else:
        args += ["--warmup-iters", "0", "--set", f"train.init=runs/bench/warmup-s{seed}/final.pt"]
    out = OUT / f"{name}-s{seed}"
    result = train_run(out, args)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    return {
        "variant": name,
        "seed": seed,
        "miou": result["miou"],
        "method": method,
        "warmup": warmup,
        "overrides": sets,
        "threads": cfg["train"]["threads"],
        "cpsl_options": cfg["methods"]["cpsl"],
    }


def main() -> None:
    rows = [run(name, seed) for name, (_, seeds, *_) in VARIANTS.items() for seed in seeds]
    ref = json.loads((RESULTS / "synthetic-cpu.json").read_text())["rows"]  # the same runs' table
    st, dd, d3 = (ref[k]["per_seed"] for k in ("self_training", "diga+dida", "diga+dida+cpsl"))
    lines = [
        f"CPSL ablation, synthetic benchmark, cpu: 600 adaptation iterations; plain = from the shared "
        f"source-only warm-up (self_training there: {st[0]:.2f} seed 0, {st[1]:.2f} seed 1), diga = "
        f"diga+dida+cpsl after DiGA's warm-up (seed 0 there: diga+dida {dd[0]:.2f}, diga+dida+cpsl with "
        f"defaults {d3[0]:.2f}); references from synthetic-cpu.json",
        "",
        "| variant | what | seed | warm-up | target mIoU | CPSL overrides | threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {VARIANTS[r['variant']][0]} | {r['seed']} | {r['warmup']} | "
            f"{r['miou']:.2f} | {', '.join(r['overrides']) or 'defaults'} | {r['threads']} |"
        )
    lines += [
        "",
        "Runs with threads 0 ran two 2-thread processes side by side; runs made before `source_weight` and "
        "`self_label_view` existed ran the code those overrides now select.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"device": "cpu", "date": time.strftime("%Y-%m-%d")}
    (RESULTS / "cpsl-ablation-cpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / "cpsl-ablation-cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
