"""What does a method add to a training step, with the fused kernels and with the torch reference?

    python benchmarks/bench_step.py                       # small (CPU) size: 128x256 crops, batch 4, compact model
    python benchmarks/bench_step.py --size paper          # 512x512 crops, batch 2, DeepLabV2-R101, 19 x 2000 bank (GPU)
    python benchmarks/bench_step.py --size daformer       # the same with DAFormer (MiT-B5) (GPU)
    python benchmarks/bench_step.py --size paper --kernels triton,torch --no-amp   # float32 embeddings instead

Each (method, kernels) pair is a fresh `python -m udaseg.train` process that adapts for `--iters` iterations on a
small synthetic set; the time per iteration is measured between the first and last logged rows (so start-up and
the first iterations are left out), peak memory is the process's own. `self_training` is the common loop alone:
a method's overhead is its step time minus that row's. Results: benchmarks/results/step-<cpu|cuda>-<size>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIZES = {
    "small": ["data.crop=[128, 256]", "data.batch_size=4", "model.name=compact"],
    "paper": [
        "data.crop=[512, 512]",
        "data.batch_size=2",
        "model.name=deeplabv2_r101",
        "data.synthetic={size: [512, 1024], count: 16}",
        "methods.dida.bank_per_class=2000",
    ],
    # The state of the art's network (MiT-B5 encoder, DAFormer decoder) at the same paper setting.
    "daformer": [
        "data.crop=[512, 512]",
        "data.batch_size=2",
        "model.name=daformer_mitb5",
        "data.synthetic={size: [512, 1024], count: 16}",
        "methods.dida.bank_per_class=2000",
    ],
}


def step_seconds(metrics: Path) -> float:
    """Seconds per iteration between the first and the last logged row (rows hold cumulative it/s)."""
    rows = [json.loads(r) for r in metrics.read_text().splitlines() if '"it_per_s"' in r]
    (a, b) = rows[0], rows[-1]
    return (b["iter"] / b["it_per_s"] - a["iter"] / a["it_per_s"]) / (b["iter"] - a["iter"])


def measure(method: str, impl: str, size: str, iters: int, out: Path, amp: bool = True) -> dict:
    sets = [
        *SIZES[size],
        "data.workers=1",
        "train.eval_every=0",
        "train.samples=0",
        "train.ckpt_every=0",
        f"train.log_every={max(iters // 4, 1)}",
        "data.val=synthetic_target",
        f"train.amp={str(amp).lower()}",
    ]
    if size == "small":
        sets.append("data.synthetic={count: 32}")
    args = [
        sys.executable,
        "-m",
        "udaseg.train",
        "--out",
        str(out),
        "--method",
        method,
        "--kernels",
        impl,
        "--warmup-iters",
        "0",
        "--iters",
        str(iters),
    ] + [x for s in sets for x in ("--set", s)]
    done = subprocess.run(args, cwd=ROOT, stdout=subprocess.DEVNULL)
    if done.returncode != 0:  # a failed run is a row of the table (its error is on stderr above), not the end
        return {"method": method, "kernels": impl, "amp": amp, "error": f"train exited with {done.returncode}"}
    final = json.loads((out / "final.json").read_text())
    return {
        "method": method,
        "kernels": impl,
        "amp": amp,
        "step_ms": 1000 * step_seconds(out / "metrics.jsonl"),
        "peak_memory_mb": final["peak_memory_mb"],
    }


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return done.stdout.strip() or "unknown"


def markdown(rows: list[dict], meta: dict) -> str:
    base = {r["kernels"]: r["step_ms"] for r in rows if r["method"] == "self_training" and "error" not in r}
    lines = [
        f"Training step, {meta['device']}, {meta['size']}: {meta['setting']}",
        "",
        f"torch {meta['torch']}, triton {meta.get('triton', 'n/a')}, commit {meta.get('commit', 'n/a')}, "
        f"{meta['date']}, AMP {meta['amp']}; ms / iteration between the logged rows of the last "
        f"{meta['iters'] - max(meta['iters'] // 4, 1)} of {meta['iters']} iterations (one run each: differences "
        "of a few percent, negative overheads included, are run-to-run noise).",
        "",
        "| method | kernels | ms / iteration | method overhead (ms) | overhead share | peak MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['kernels']} | {r['error']} | | | |")
            continue
        over = r["step_ms"] - base.get(r["kernels"], float("nan"))
        share = over / r["step_ms"] if r["method"] != "self_training" else 0.0
        lines.append(
            f"| {r['method']} | {r['kernels']} | {r['step_ms']:.1f} | {over:.1f} | {100 * share:.0f} % "
            f"| {r['peak_memory_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="self_training,dida,cpsl,dida+cpsl")
    p.add_argument("--kernels", default="auto,torch", help="implementations to compare")
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--out", default="runs/bench_step")
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="autocast on CUDA (bf16 where supported): the kernels get half embeddings (default: on)",
    )
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    if args.size != "small" and not cuda:
        raise SystemExit(f"--size {args.size} is meant for a GPU (512x512 crops, paper models); none is available here")
    rows = []
    for method in args.methods.split(","):
        for impl in args.kernels.split(","):
            out = ROOT / args.out / args.size / f"{method.replace('+', '-')}-{impl}"
            rows.append(measure(method, impl, args.size, args.iters, out, args.amp))
            print(rows[-1], flush=True)
            write(args, rows, cuda)  # after every row: a run stopped at its time limit keeps what it measured


def write(args: argparse.Namespace, rows: list[dict], cuda: bool) -> None:
    device = torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or 'x86_64'}, "
    device += "" if cuda else f"{torch.get_num_threads()} threads)"
    meta = {
        "device": device,
        "size": args.size,
        "setting": " ".join(SIZES[args.size]),
        "iters": args.iters,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d"),
        "amp": args.amp,
    }
    tag = f"step-{'cuda' if cuda else 'cpu'}-{args.size}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / f"{tag}.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
