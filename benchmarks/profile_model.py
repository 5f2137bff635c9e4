"""Where does a model's training step go? Forward + backward of the whole model against the encoder alone, and the
operators that take the most time.

    python benchmarks/profile_model.py                                   # GPU: DAFormer MiT-B5 and DeepLabV2-R101
    python benchmarks/profile_model.py --models compact --crop 128 256 --batch 4 --iters 3   # a quick CPU run

Per model, after --warmup untimed steps: the median of --iters steps of (a) the whole model's forward, cross-entropy
and backward, (b) the encoder's forward (``model.encode``) and a backward from its mean, so (a) - (b) is what the
decoder and the loss add; then one profiled step, its operators ranked by self time (CUDA time on a GPU, CPU time
otherwise). bf16 autocast and channels_last on CUDA, as the training loop runs them (--no-amp for float32). No
optimizer step: the parameters' update is the same for every decoder and small beside these.
Results: benchmarks/results/profile-<cpu|cuda>.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_kernels import _git_commit  # noqa: E402

from udaseg.cli import run_cli  # noqa: E402
from udaseg.fileio import UserError, write_json, write_text  # noqa: E402
from udaseg.models import build_model, list_models  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _whole(model, x, y, device, amp) -> None:
    with _autocast(device, amp):
        logits = model(x)["logits"]
        logits = F.interpolate(logits.float(), size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y, ignore_index=255)
    loss.backward()


def _encoder(model, x, y, device, amp) -> None:
    with _autocast(device, amp):
        loss = model.encode(x).float().mean()
    loss.backward()


def _median_ms(fn, args, warmup: int, iters: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(iters):
        _sync(device)
        start = time.perf_counter()
        fn(*args)
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def top_operators(fn, args, device: torch.device, top: int) -> list[dict]:
    """One profiled step; the ``top`` operators by self time (device time on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn(*args)
        _sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    # Grouped by input shapes too: which convolution (a dilated depthwise one, a 1x1 fusion) is the cost.
    events = [e for e in prof.key_averages(group_by_input_shape=True) if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [
        {
            "op": e.key,
            "shapes": str(e.input_shapes)[:160],
            "self_ms": getattr(e, key) / 1e3,
            "share": getattr(e, key) / total,
            "calls": e.count,
        }
        for e in events[:top]
    ]


def profile_one(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    model = build_model(name, num_classes=19).to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, *args.crop, generator=g).to(device)
    y = torch.randint(0, 19, (args.batch, *args.crop), generator=g).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats(device)
    whole = _median_ms(_whole, (model, x, y, device, args.amp), args.warmup, args.iters, device)
    encoder = _median_ms(_encoder, (model, x, y, device, args.amp), args.warmup, args.iters, device)
    row = {
        "model": name,
        "whole_ms": whole,
        "encoder_ms": encoder,
        "decoder_and_loss_ms": whole - encoder,
        "decoder_share": (whole - encoder) / whole if whole else None,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "top": top_operators(_whole, (model, x, y, device, args.amp), device, args.top),
    }
    if device.type == "cuda":
        row["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(
        f"{name}: forward+backward {whole:.1f} ms, encoder alone {encoder:.1f} ms, "
        f"decoder + loss {row['decoder_share']:.0%}",
        flush=True,
    )
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"# Where a training step goes, {meta['device']}",
        "",
        f"{meta['setting']}; torch {meta['torch']}, commit {meta['commit']}, {meta['date']}. Median of "
        f"{meta['iters']} steps after {meta['warmup']} untimed ones; no optimizer step. "
        "Encoder alone = `model.encode` forward and a backward from its mean.",
        "",
        "| model | params (M) | forward+backward ms | encoder alone ms | decoder + loss ms | decoder + loss share |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params_m']:.1f} | {r['whole_ms']:.1f} | {r['encoder_ms']:.1f} | "
            f"{r['decoder_and_loss_ms']:.1f} | {r['decoder_share']:.0%} |"
        )
    for r in rows:
        lines += ["", f"Top operators of one {r['model']} step, by {meta['time']} self time:", ""]
        lines += ["| operator | input shapes | self ms | share | calls |", "|---|---|---|---|---|"]
        lines += [
            f"| `{t['op']}` | {t['shapes']} | {t['self_ms']:.2f} | {t['share']:.0%} | {t['calls']} |" for t in r["top"]
        ]
    return "\n".join(lines) + "\n"


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="daformer_mitb5,deeplabv2_r101", help="comma-separated registered models")
    p.add_argument("--crop", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning, allocator)")
    p.add_argument("--top", type=int, default=15, help="operators listed per model")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-amp", dest="amp", action="store_false", help="float32 on CUDA instead of bf16 autocast")
    p.add_argument("--results", default=str(RESULTS), help="folder of the result files")
    args = p.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in list_models()]
    if unknown or not names:
        raise UserError(f"--models: unknown {unknown or 'none given'}; registered: {', '.join(list_models())}")
    if min(args.crop) < 32 or args.batch < 1 or args.iters < 1 or args.warmup < 0 or args.top < 1:
        raise UserError("--crop must be >= 32 pixels a side, --batch, --iters and --top >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = [profile_one(name, args, device) for name in names]
    cuda = device.type == "cuda"
    meta = {
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or 'x86_64'})",
        "torch": torch.__version__,
        "commit": _git_commit(),  # bench_kernels' helper: marks a dirty tree
        "date": time.strftime("%Y-%m-%d"),
        "setting": f"crop {args.crop[0]}x{args.crop[1]}, batch {args.batch}, "
        + ("bf16 autocast, channels_last" if cuda and args.amp else "float32")
        + ("" if cuda else f", {torch.get_num_threads()} threads"),
        "iters": args.iters,
        "warmup": args.warmup,
        "time": "CUDA" if cuda else "CPU",
    }
    out = Path(args.results) / f"profile-{'cuda' if cuda else 'cpu'}"
    write_json(out.with_suffix(".json"), {"meta": meta, "rows": rows})
    write_text(out.with_suffix(".md"), markdown(rows, meta))
    print(f"wrote {out}.json and .md")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
