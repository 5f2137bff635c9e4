"""Benchmark the six udaseg.kernels ops: every implementation on one device, in one run.

    python benchmarks/bench_kernels.py                     # --device cpu when there is no CUDA: the CPU-sized set
    python benchmarks/bench_kernels.py --device cuda       # the sizes of shared/kernels.md (H100 roofline)
    python benchmarks/bench_kernels.py --ops sinkhorn,fuse --impls torch,auto --reps 10

Implementations: "torch" (the eager reference), "compile" (torch.compile of that reference), "chunked" (the
torch CPU path), "triton" (CUDA only: interpreter timings mean nothing). On CPU "auto" is the chunked path.
For each (op, mode, impl): wall-clock quantiles (20/50/80 %), achieved FLOP/s or bytes/s, the fraction of the
roofline floor, and the peak extra memory of one call. Roofline ceilings: the H100 SXM numbers of
shared/kernels.md on an H100, otherwise measured in the same run (a large fp32 GEMM and a large copy).
Writes benchmarks/results/kernels-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from udaseg.kernels import (
    bank_class_logsumexp,
    bank_topk,
    class_feature_sums,
    fuse_pseudo_labels,
    instance_consistency_loss,
    sinkhorn,
)
from udaseg.kernels.bank_logsumexp import bank_class_logsumexp_reference
from udaseg.kernels.bank_topk import bank_topk_reference
from udaseg.kernels.class_sums import class_feature_sums_reference
from udaseg.kernels.fuse import fuse_pseudo_labels_reference
from udaseg.kernels.instance_loss import instance_consistency_loss_reference
from udaseg.kernels.sinkhorn import sinkhorn_reference

RESULTS = Path(__file__).parent / "results"
H100 = {"flops": 989e12, "bytes": 3.35e12, "source": "H100 SXM spec (shared/kernels.md): bf16 dense, HBM3"}

# Sizes: cuda = shared/kernels.md; cpu = the same shapes scaled to take ~0.1-1 s per call on two cores.
SIZES = {
    "cuda": {"N": 65536, "M": 38000, "D": 256, "C": 19, "k": 16, "dtype": torch.bfloat16, "fuse": (2, 19, 512, 1024),
             "pixels": 1 << 20, "sums_D": 256, "sink_N": 65536, "sink_K": 190},
    "cpu": {"N": 2048, "M": 7999, "D": 64, "C": 19, "k": 16, "dtype": torch.float32, "fuse": (2, 19, 256, 512),
            "pixels": 1 << 18, "sums_D": 64, "sink_N": 16384, "sink_K": 190},
}


@dataclass
class Case:
    """One benchmarked call: an op in a mode, its inputs, how to run each impl, and its minimal work."""

    op: str
    mode: str  # "forward" or "forward+backward"
    size: str
    run: Callable[[str], Callable[[], object]]  # impl -> a zero-argument call
    flops: float  # useful FLOPs (GEMM work; 0 for memory-bound ops)
    bytes: float  # minimal bytes moved (inputs read once, outputs written once)


def _impl_fn(op, reference, impl: str, compiled: dict):
    """The callable for one impl: the op with impl=..., or torch.compile of the reference."""
    if impl == "compile":
        if op not in compiled:
            compiled[op] = torch.compile(reference)
        return compiled[op]
    return lambda *args: op(*args, impl=impl)


def _bank_inputs(s, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(s["N"], s["D"], generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(s["M"], s["D"], generator=g), dim=1)
    labels = torch.arange(s["M"]) % s["C"]  # 19 classes of M / 19 slots, as in DIDA's bank
    weights = torch.rand(s["N"], s["C"], generator=g).softmax(1)
    return q.to(device, s["dtype"]), b.to(device, s["dtype"]), labels.to(device), weights.to(device)


def build_cases(device: str, compiled: dict) -> list[Case]:
    """The benchmark set for ``device`` (sizes from SIZES)."""
    s = SIZES["cuda" if device == "cuda" else "cpu"]
    n, m, d, c, k = s["N"], s["M"], s["D"], s["C"], s["k"]
    e = torch.finfo(s["dtype"]).bits // 8
    q, b, labels, weights = _bank_inputs(s, device)
    strong = (q + 0.1 * torch.randn_like(q)).requires_grad_()
    qg = q.clone().requires_grad_()
    bank = f"N={n} M={m} D={d} {str(s['dtype'])[6:]}"
    cases = []

    def topk(impl):
        fn = _impl_fn(bank_topk, bank_topk_reference, impl, compiled)
        return lambda: fn(q, b, k)

    cases.append(Case("bank_topk", "forward", f"{bank} k={k}", topk, 2 * n * m * d, (n + m) * d * e + n * k * 12))

    def lse(backward):
        def make(impl):
            fn = _impl_fn(bank_class_logsumexp, bank_class_logsumexp_reference, impl, compiled)
            grad = torch.ones(n, c, device=device)
            if not backward:
                return lambda: fn(q, b, labels, c, 0.1)
            return lambda: fn(qg, b, labels, c, 0.1).backward(grad)

        return make

    lse_bytes = (n + m) * d * e + n * c * 4
    cases.append(Case("bank_class_logsumexp", "forward", bank, lse(False), 2 * n * m * d, lse_bytes))
    cases.append(Case("bank_class_logsumexp", "forward+backward", bank, lse(True), 6 * n * m * d,
                      2 * lse_bytes + n * d * 4))

    def instance(backward):
        def make(impl):
            fn = _impl_fn(instance_consistency_loss, instance_consistency_loss_reference, impl, compiled)
            if not backward:
                return lambda: fn(q, strong, b, labels, weights, 0.1)
            return lambda: fn(q, strong, b, labels, weights, 0.1).sum().backward()

        return make

    inst_bytes = (2 * n + m) * d * e + n * c * 4 + n * 4
    cases.append(Case("instance_consistency_loss", "forward", bank, instance(False), 4 * n * m * d, inst_bytes))
    cases.append(Case("instance_consistency_loss", "forward+backward", bank, instance(True), 10 * n * m * d,
                      2 * inst_bytes + n * d * 4))

    bb, cc, h, w = s["fuse"]
    g = torch.Generator().manual_seed(1)
    probs = torch.randn(bb, cc, h, w, generator=g).softmax(1).to(device)
    inst = torch.randn(bb, cc, h, w, generator=g).softmax(1).to(device)
    thr = torch.full((cc,), 0.5, device=device)

    def fuse(impl):
        fn = _impl_fn(fuse_pseudo_labels, fuse_pseudo_labels_reference, impl, compiled)
        return lambda: fn(probs, inst, 0.5, thr)

    cases.append(Case("fuse_pseudo_labels", "forward", f"{bb}x{cc}x{h}x{w} float32", fuse, 0,
                      2 * probs.numel() * 4 + bb * h * w * 12))

    px, sd = s["pixels"], s["sums_D"]
    feats = torch.randn(px, sd, generator=g).to(device, s["dtype"])
    plabels = torch.randint(0, c + 1, (px,), generator=g).masked_fill_(torch.rand(px, generator=g) < 0.1, 255)
    plabels = plabels.to(device)

    def sums(impl):
        fn = _impl_fn(class_feature_sums, class_feature_sums_reference, impl, compiled)
        return lambda: fn(feats, plabels, c)

    cases.append(Case("class_feature_sums", "forward", f"N={px} D={sd} {str(s['dtype'])[6:]}", sums, 0,
                      px * (sd * e + 8) + c * sd * 4))

    sn, sk = s["sink_N"], s["sink_K"]
    scores = torch.nn.functional.normalize(torch.randn(sn, 64, generator=g), dim=1)
    scores = (scores @ torch.nn.functional.normalize(torch.randn(sk, 64, generator=g), dim=1).T).to(device)
    marginal = torch.full((sk,), 1.0 / sk, device=device)

    def sink(impl):
        fn = _impl_fn(sinkhorn, sinkhorn_reference, impl, compiled)
        return lambda: fn(scores, marginal, 0.05, 3)

    cases.append(Case("sinkhorn", "forward", f"N={sn} K={sk} 3 iterations", sink, 0, sn * sk * 8))
    return cases


# --- measurement ---


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str, reps: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process-CPU seconds of ``reps`` calls."""
    wall, cpu = [], []
    for _ in range(reps):
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def _vm_kb(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def peak_extra_bytes(fn: Callable[[], object], device: str) -> float | None:
    """Peak memory one call adds: the CUDA allocator's peak, or on CPU the growth of the resident high-water mark
    (freed heap handed back with malloc_trim, the mark reset through /proc/self/clear_refs; Linux/glibc only).
    None where it cannot be measured."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        base = _vm_kb("VmRSS")
        fn()
        return float(_vm_kb("VmHWM") - base) * 1024
    except (OSError, AttributeError):
        return None


def ceilings(device: str) -> dict:
    """Roofline ceilings: the H100 spec on an H100, otherwise a measured fp32 GEMM rate and copy bandwidth."""
    if device == "cuda" and "H100" in torch.cuda.get_device_name():
        return dict(H100)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    gemm = min(time_call(lambda: a @ a, device, 5)[0])
    src = torch.empty(64 * 2**20, device=device)  # 256 MB
    dst = torch.empty_like(src)
    copy = min(time_call(lambda: dst.copy_(src), device, 5)[0])
    return {"flops": 2 * 2048**3 / gemm, "bytes": 2 * src.numel() * 4 / copy,
            "source": f"measured in this run: {str(dtype)[6:]} 2048^3 GEMM, 256 MB copy"}


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    """(20 %, 50 %, 80 %) quantiles in ms."""
    if len(values) < 3:
        return min(values) * 1e3, statistics.median(values) * 1e3, max(values) * 1e3
    q = statistics.quantiles(values, n=10, method="inclusive")
    return q[1] * 1e3, statistics.median(values) * 1e3, q[7] * 1e3


def measure_case(case: Case, impls: list[str], device: str, reps: int, ceiling: dict) -> list[dict]:
    """Rows for one case: warm every impl, then time them round-robin (so load changes hit all alike), then
    measure each one's peak memory. An impl that fails (OOM, compile error) gets an error row."""
    rows, calls = {}, {}
    for impl in impls:
        rows[impl] = {"op": case.op, "mode": case.mode, "size": case.size, "impl": impl}
        try:
            calls[impl] = case.run(impl)
            start = time.perf_counter()
            calls[impl]()  # warm-up; compiles for "compile" and Triton
            _sync(device)
            rows[impl]["first_call_s"] = time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - a failed impl is a result, not a crash
            rows[impl]["error"] = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
            calls.pop(impl, None)
    wall = {impl: [] for impl in calls}
    cpu = {impl: [] for impl in calls}
    for _ in range(reps):
        for impl, fn in calls.items():
            w, c = time_call(fn, device, 1)
            wall[impl] += w
            cpu[impl] += c
    floor = max(case.flops / ceiling["flops"], case.bytes / ceiling["bytes"])
    for impl, fn in calls.items():
        peak = peak_extra_bytes(fn, device)
        q20, median, q80 = _quantiles(wall[impl])
        rows[impl].update(
            ms_p20=q20, ms_median=median, ms_p80=q80, cpu_ms_median=statistics.median(cpu[impl]) * 1e3,
            floor_ms=floor * 1e3, fraction_of_floor=floor * 1e3 / median, tflops=case.flops / median / 1e9,
            gbps=case.bytes / median / 1e6, peak_extra_mb=None if peak is None else peak / 2**20)
    return [rows[impl] for impl in impls]


# --- output ---


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=Path(__file__).parent)  # "-dirty": the tree differs from the commit
        return out.stdout.strip() or "uncommitted"
    except OSError:
        return "unknown"


def environment(device: str) -> dict:
    """Device, versions, commit and load: enough to tell whether two result files compare."""
    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "commit": _git_commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "threads": torch.get_num_threads()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    else:
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()) if os.path.exists(
            "/proc/cpuinfo") else None
        info["cpu"] = f"{cpu.group(1) if cpu else platform.processor()}, {os.cpu_count()} logical cores"
    return info


def markdown(results: dict) -> str:
    """The results as a table, one row per (op, mode, impl), speedups against the eager reference."""
    env, ceil = results["environment"], results["ceilings"]
    lines = [f"# Kernel benchmark: {env['device']} ({env.get('gpu') or env.get('cpu')})", "",
             f"torch {env['torch']}, triton {env['triton']}, {env['threads']} threads, commit {env['commit']}, "
             f"{env['date']}; load average before/after: {results['load_before']} / {results['load_after']}.",
             f"Roofline ceilings: {ceil['flops'] / 1e12:.3g} TFLOP/s, {ceil['bytes'] / 1e9:.3g} GB/s "
             f"({ceil['source']}). Floor = max(FLOPs / peak, minimal bytes / bandwidth).", "",
             "| op | mode | size | impl | median ms (p20-p80) | CPU ms | achieved | % of floor | peak extra MB "
             "| vs eager | vs compile |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    eager = {(r["op"], r["mode"]): r.get("ms_median") for r in results["rows"] if r["impl"] == "torch"}
    compiled = {(r["op"], r["mode"]): r.get("ms_median") for r in results["rows"] if r["impl"] == "compile"}
    for r in results["rows"]:
        head = f"| {r['op']} | {r['mode']} | {r['size']} | {r['impl']} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} | | | | | | |")
            continue
        achieved = f"{r['tflops'] * 1e3:.3g} GFLOP/s" if r["tflops"] else f"{r['gbps']:.3g} GB/s"
        mem = "n/a" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.0f}"
        speed = " | ".join(f"{ref[(r['op'], r['mode'])] / r['ms_median']:.2f}x" if ref.get((r["op"], r["mode"]))
                           else "" for ref in (eager, compiled))
        lines.append(f"{head} {r['ms_median']:.2f} ({r['ms_p20']:.2f}-{r['ms_p80']:.2f}) | {r['cpu_ms_median']:.1f} | "
                     f"{achieved} | "
                     f"{100 * r['fraction_of_floor']:.1f}% | {mem} | {speed} |")
    lines += ["", "first-call seconds (includes torch.compile / Triton compilation):", ""]
    lines += [f"- {r['op']} {r['mode']} {r['impl']}: {r['first_call_s']:.1f} s" for r in results["rows"]
              if "first_call_s" in r and r["impl"] in ("compile", "triton")]
    if results.get("notes"):
        lines += ["", *[f"- {note}" for note in results["notes"]]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    parser.add_argument("--impls", default="", help="comma-separated impls (default: all for the device)")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per (op, impl) after one warm-up")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    impls = args.impls.split(",") if args.impls else (
        ["torch", "compile", "chunked", "triton"] if device == "cuda" else ["torch", "compile", "auto"])
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    ceiling = ceilings(device)
    compiled: dict = {}
    rows = []
    for case in build_cases(device, compiled):
        if args.ops and case.op not in args.ops.split(","):
            continue
        for r in measure_case(case, impls, device, args.reps, ceiling):
            rows.append(r)
            print(f"{r['op']:26s} {r['mode']:17s} {r['impl']:8s} " + (
                r.get("error") or f"{r['ms_median']:9.2f} ms (cpu {r['cpu_ms_median']:9.2f})  "
                                  f"{100 * r['fraction_of_floor']:5.1f}% of floor"), flush=True)
    notes = [
        "CPU ms: process CPU time of one call, all threads together; peak extra MB: resident-memory (CPU) or "
        "allocator (CUDA) high-water mark of one call above what was allocated before it.",
        "first-call seconds depend on torch.compile's on-disk cache (inductor FX graph cache): cold, a compile "
        "took ~60 s per op on the shared CPU machine.",
        "bank_topk's reference sorts whole rows (a stable sort gives the tie rule), so it is slower than a bare "
        "torch.topk; the chunked path runs torch.topk on (rows, M) chunks and repairs ties.",
    ]
    if device != "cuda":
        notes += [
            "triton is not timed on CPU: it only runs under TRITON_INTERPRET=1 there, whose timings mean nothing.",
            "auto = chunked on CPU. The GPU targets (>= 2x eager, >= 1.2x torch.compile, >= 50% of the memory "
            "floor, >= 35% of bf16 tensor-core peak) need `--device cuda` on an H100: not measured here."]
    results = {"environment": environment(device), "ceilings": ceiling, "load_before": load_before,
               "load_after": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None, "rows": rows,
               "notes": notes}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"kernels-{device}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"kernels-{device}.md").write_text(markdown(results))
    print(f"wrote {args.out / f'kernels-{device}.json'} and .md")


if __name__ == "__main__":
    main()
