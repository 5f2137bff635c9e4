"""What does feeding the method kernels bf16 (the loop's AMP dtype on CUDA) change? Measured on CPU.

    python benchmarks/bf16_features.py                       # ~5 minutes on one thread
    python benchmarks/bf16_features.py --warmup-iters 20 --iters 20   # smoke

Two parts, written to benchmarks/results/bf16-features-cpu.{json,md}:

1. The kernel calls as DIDA and CPSL make them, at the contract's D = 256 with a 19 x 16 bank and 2,000 queue
   rows: the float64 reference on bf16-rounded inputs against the float64 reference on the float32 inputs. This is
   the rounding the AMP path adds; the kernels' own error on top of it (float32 accumulation) is checked by
   tests/methods/test_compute_dtype.py under the Triton interpreter.
2. Training: DIDA on the embedded benchmark from one shared source-only warm-up, once with float32 embeddings /
   bank / class weights (the CPU default) and once with `step.compute_dtype = bfloat16`, which rounds exactly the
   tensors the CUDA AMP path hands the kernels (the CPU kernels then accumulate in float32, as the GPU ones do).
   One seed, one thread: the difference is one run's noise plus the rounding, not a statistic.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def rounding_effect(seed: int = 0) -> dict[str, float]:
    """Max deviations of bank softmax / instance loss / Sinkhorn from bf16-rounding their inputs (float64 math)."""
    from udaseg.kernels import bank_class_logsumexp, instance_consistency_loss, sinkhorn, use_impl

    g = torch.Generator().manual_seed(seed)
    c, d, tau = 19, 256, 0.1
    bank = F.normalize(torch.randn(c * 16, d, generator=g), dim=1)  # (M, D)
    labels = torch.arange(c * 16) % c
    near = bank[torch.randint(0, c * 16, (2048,), generator=g)]  # queries near bank entries, as in training
    weak = F.normalize(near + 0.25 * torch.randn(2048, d, generator=g) / 16 * 4, dim=1)
    strong = F.normalize(weak + 0.15 * torch.randn(2048, d, generator=g) / 16 * 4, dim=1)
    weights = (2 * torch.randn(2048, c, generator=g)).softmax(1)
    protos = F.normalize(torch.randn(c, d, generator=g), dim=1)
    rows = F.normalize(
        protos[torch.randint(0, c, (2000,), generator=g)] + 0.1 * torch.randn(2000, d, generator=g), dim=1
    )
    r = lambda t: t.to(torch.bfloat16).double()  # noqa: E731  bf16-rounded, then exact math
    f = lambda t: t.double()  # noqa: E731
    with use_impl("torch"):  # the float64 reference of each op
        q = [bank_class_logsumexp(x(weak), x(bank), labels, c, tau).softmax(1) for x in (f, r)]
        loss = [instance_consistency_loss(x(weak), x(strong), x(bank), labels, x(weights), tau) for x in (f, r)]
        assign = [
            sinkhorn(x(rows) @ x(protos).T, torch.full((c,), 1.0 / c, dtype=torch.float64), 0.05, 3) for x in (f, r)
        ]
    return {
        "bank_class_probs_max_abs": float((q[1] - q[0]).abs().max()),
        "bank_class_argmax_agree": float((q[1].argmax(1) == q[0].argmax(1)).double().mean()),
        "instance_loss_max_rel": float(((loss[1] - loss[0]).abs() / loss[0].abs()).max()),
        "instance_loss_mean_rel": float(((loss[1].mean() - loss[0].mean()) / loss[0].mean()).abs()),
        "sinkhorn_max_abs": float((assign[1] - assign[0]).abs().max()),
        "sinkhorn_argmax_agree": float((assign[1].argmax(1) == assign[0].argmax(1)).double().mean()),
    }


def train_dida(out: Path, init: Path, iters: int, dtype: torch.dtype, threads: int) -> dict:
    """A DIDA run from `init` whose steps carry compute_dtype = dtype; returns final.json's content."""
    import udaseg.train as loop
    from udaseg.config import load_config

    make_step = loop.make_step

    def step_in(*args, **kwargs):
        step = make_step(*args, **kwargs)
        step.compute_dtype = dtype  # what the loop sets on CUDA with train.amp
        return step

    cfg = load_config(
        ROOT / "udaseg/configs/synthetic_dida.yaml",
        [
            f"train.iters={iters}",
            "train.warmup_iters=0",
            f"train.init={init}",
            "train.eval_every=0",
            f"train.threads={threads}",
            "train.ckpt_every=0",
        ],
    )
    loop.make_step = step_in
    try:
        return loop.train(cfg, out)
    finally:
        loop.make_step = make_step


def warmup(out: Path, iters: int, threads: int) -> Path:
    from udaseg.config import load_config
    from udaseg.train import train

    if not (out / "final.pt").exists():
        train(
            load_config(
                None,
                [
                    "train.method=source_only",
                    "train.warmup_iters=0",
                    f"train.iters={iters}",
                    "train.eval_every=0",
                    f"train.threads={threads}",
                ],
            ),
            out,
        )
    return out / "final.pt"


def markdown(result: dict) -> str:
    k, t, m = result["kernels"], result["training"], result["meta"]
    lines = [
        f"bf16 inputs to the method kernels, {m['device']}, torch {m['torch']}, commit {m['commit']}, {m['date']}",
        "",
        "Kernel calls at D = 256 (float64 math on bf16-rounded vs float32 inputs):",
        "",
        "| quantity | deviation |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value:.3g} |" for key, value in k.items()]
    lines += [
        "",
        f"DIDA on the embedded benchmark ({t['schedule']}):",
        "",
        "| features to the kernels | target mIoU |",
        "|---|---|",
    ]
    lines += [f"| {name} | {run['miou']:.2f} |" for name, run in t["runs"].items()]
    lines += ["", "(CPU wall times are in the .json; on CPU they time casts, not tensor cores: unmeasured on a GPU.)"]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--warmup-iters", type=int, default=100, help="shared source-only warm-up")
    p.add_argument("--iters", type=int, default=100, help="DIDA iterations of each run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bf16-features", help="run folders")
    args = p.parse_args()
    from udaseg.fileio import write_json, write_text

    out = ROOT / args.out
    t0 = time.perf_counter()
    kernels = rounding_effect()
    init = warmup(out / "warmup", args.warmup_iters, args.threads)
    runs = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        final = train_dida(out / name, init, args.iters, dtype, args.threads)
        runs[name] = {"miou": final["miou"], "wall_time_s": final["wall_time_s"]}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    result = {
        "meta": {
            "device": f"cpu ({platform.processor() or 'x86_64'})",
            "torch": torch.__version__,
            "commit": commit.stdout.strip(),
            "date": time.strftime("%Y-%m-%d"),
            "total_s": round(time.perf_counter() - t0),
        },
        "kernels": kernels,
        "training": {
            "schedule": f"{args.warmup_iters} source-only + {args.iters} DIDA iterations, seed 0, "
            f"{args.threads} thread(s)",
            "runs": runs,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "bf16-features-cpu.json", result)
    write_text(RESULTS / "bf16-features-cpu.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
