"""Benchmark the udaseg.kernels ops: every implementation on one device, in one run, beside a roofline model.

    python benchmarks/bench_kernels.py                     # --device cpu when there is no CUDA: the CPU-sized set
    python benchmarks/bench_kernels.py --device cuda       # paper sizes (docs/kernels.md), bf16 bank ops
    python benchmarks/bench_kernels.py --ops sinkhorn,fuse_pseudo_labels --impls torch,auto --reps 10
    python benchmarks/bench_kernels.py --roofline          # the roofline model at paper sizes only (no timing)

Implementations: "torch" (the eager baseline: the reference, or for bank_topk torch.topk on the matrix product),
"compile" (torch.compile of that baseline), "chunked" (the torch CPU path), "triton" (CUDA only: interpreter
timings mean nothing). On CPU "auto" is the chunked path. For each (op, mode, impl): wall-clock quantiles, achieved
FLOP/s or bytes/s, the fraction of the roofline floor, and the peak extra memory of one call. The roofline model
(``roofline``) gives, per case, the FLOPs, minimal bytes, exponentials and the expected time on an H100 SXM and an
H200 SXM from their data-sheet peaks (PEAKS); on a GPU run it is printed beside the measured time.
Writes benchmarks/results/kernels-<device>.{json,md}; --roofline writes kernels-static-roofline.{json,md}.

One case function per op (``case_<op>``, registered in CASES): adding an op adds one function here.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # udaseg from the checkout when not installed

from udaseg.cli import run_cli  # noqa: E402
from udaseg.fileio import UserError, write_json, write_text  # noqa: E402
from udaseg.kernels import (  # noqa: E402
    bank_class_logsumexp,
    bank_topk,
    class_feature_sums,
    fuse_pseudo_labels,
    instance_consistency_loss,
    sinkhorn,
)
from udaseg.kernels.bank_class_logsumexp import bank_class_logsumexp_reference  # noqa: E402
from udaseg.kernels.class_feature_sums import class_feature_sums_reference  # noqa: E402
from udaseg.kernels.fuse_pseudo_labels import fuse_pseudo_labels_reference  # noqa: E402
from udaseg.kernels.instance_consistency_loss import instance_consistency_loss_reference  # noqa: E402
from udaseg.kernels.sinkhorn import sinkhorn_reference  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

# Data-sheet peaks (dense, no 2:4 sparsity; NVIDIA's H100/H200 data sheets print the sparse figure, twice these).
# The H200 is the H100's GH100 die with HBM3e: the same compute, more bandwidth. exp: 16 MUFU ops/clk/SM x 132 SMs
# x 1.83 GHz (our arithmetic, not a data-sheet figure).
PEAKS = {
    "H100 SXM": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12, "bytes": 3.35e12, "exp": 3.87e12},
    "H200 SXM": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12, "bytes": 4.8e12, "exp": 3.87e12},
}
PEAK_SOURCE = (
    "NVIDIA H100/H200 SXM data sheets: bf16/fp16 tensor 989.4 TFLOP/s dense (1,979 with sparsity), "
    "TF32 494.7, fp32 66.9; HBM3 3.35 TB/s (H100), HBM3e 4.8 TB/s (H200)"
)

# Sizes: paper = the loop at paper scale (65,536 query pixels, a 19 x 2,000 bank, D = 256); loop = one training
# step's query count (a few thousand pixels, where the bank split matters); cpu = scaled to ~0.1-1 s per call on
# two cores; static = shapes with the paper sizes' divisibility, small enough to build on CPU (the static check).
SIZES = {
    "paper": {
        "N": 65536,
        "M": 38000,
        "D": 256,
        "C": 19,
        "k": 16,
        "fuse": (2, 19, 512, 1024),
        "pixels": 1 << 20,
        "sink_N": 65536,
        "sink_K": (19, 190),
    },
    "loop": {
        "N": 4096,
        "M": 38000,
        "D": 256,
        "C": 19,
        "k": 16,
        "fuse": (2, 19, 512, 512),
        "pixels": 1 << 18,
        "sink_N": 4096,
        "sink_K": (19,),
    },
    "cpu": {
        "N": 2048,
        "M": 7999,
        "D": 64,
        "C": 19,
        "k": 16,
        "fuse": (2, 19, 256, 512),
        "pixels": 1 << 18,
        "sink_N": 16384,
        "sink_K": (190,),
    },
    "static": {
        "N": 4096,
        "M": 38000,
        "D": 256,
        "C": 19,
        "k": 16,
        "fuse": (2, 19, 64, 128),
        "pixels": 1 << 14,
        "sink_N": 4096,
        "sink_K": (19, 190, 4096),
    },
}


@dataclass
class Case:
    """One benchmarked call: an op in a mode, how to run each impl, and its minimal work."""

    op: str
    mode: str  # "forward" or "forward+backward"
    size: str
    dtype: torch.dtype  # the dtype of the float inputs
    run: Callable[[str], Callable[[], object]]  # impl -> a zero-argument call (inputs built on first use)
    flops: float  # useful GEMM FLOPs (0 for memory-bound ops)
    bytes: float  # minimal bytes moved (inputs read once, outputs written once)
    exps: float = 0.0  # exponentials (MUFU work of the online softmaxes)


CASES: dict[str, Callable[..., list[Case]]] = {}


def case(fn):
    """Register ``case_<op>(s, device, dtype, compiled) -> list[Case]`` under the op's name."""
    CASES[fn.__name__.removeprefix("case_")] = fn
    return fn


def _impl_fn(op, baseline, impl: str, compiled: dict):
    """The callable for one impl: the op with impl=..., the eager baseline, or torch.compile of it."""
    if impl == "compile":
        if op not in compiled:
            compiled[op] = torch.compile(baseline)
        return compiled[op]
    if impl == "torch":
        return baseline
    return lambda *args: op(*args, impl=impl)


def _lazy(build: Callable[[], tuple]) -> Callable[[], tuple]:
    """Build the inputs on first use only (the roofline needs the sizes, not the tensors)."""
    cache: list = []
    return lambda: cache[0] if cache else (cache.append(build()) or cache[0])


def _bank_inputs(s: dict, device: str, dtype: torch.dtype) -> Callable[[], tuple]:
    def build():
        g = torch.Generator(device="cpu").manual_seed(0)
        q = torch.nn.functional.normalize(torch.randn(s["N"], s["D"], generator=g), dim=1)
        b = torch.nn.functional.normalize(torch.randn(s["M"], s["D"], generator=g), dim=1)
        labels = torch.arange(s["M"]) % s["C"]  # 19 classes of M / 19 slots, as in DIDA's bank
        weights = torch.rand(s["N"], s["C"], generator=g).softmax(1)
        strong = q + 0.1 * torch.randn(q.shape, generator=g)
        return (
            q.to(device, dtype),
            b.to(device, dtype),
            labels.to(device),
            weights.to(device),
            strong.to(device, dtype),
        )

    return _lazy(build)


def _bank_size(s: dict, dtype: torch.dtype) -> str:
    return f"N={s['N']} M={s['M']} D={s['D']} {str(dtype)[6:]}"


def _topk_baseline(query, bank, k):
    """The GPU/CPU baseline of bank_topk: torch.topk on the matrix product (no tie rule, N x M materialised)."""
    return torch.topk(query.float() @ bank.float().T, k, dim=1)


@case
def case_bank_topk(s, device, dtype, compiled) -> list[Case]:
    n, m, d, k = s["N"], s["M"], s["D"], s["k"]
    inputs = _bank_inputs(s, device, dtype)

    def run(impl):
        fn = _impl_fn(bank_topk, _topk_baseline, impl, compiled)
        return lambda: fn(inputs()[0], inputs()[1], k)

    e = dtype.itemsize
    return [
        Case(
            "bank_topk",
            "forward",
            f"{_bank_size(s, dtype)} k={k}",
            dtype,
            run,
            2 * n * m * d,
            (n + m) * d * e + n * k * 12,
        )
    ]


@case
def case_bank_class_logsumexp(s, device, dtype, compiled) -> list[Case]:
    n, m, d, c = s["N"], s["M"], s["D"], s["C"]
    inputs = _bank_inputs(s, device, dtype)

    def make(backward: bool):
        def run(impl):
            fn = _impl_fn(bank_class_logsumexp, bank_class_logsumexp_reference, impl, compiled)
            q, b, labels = inputs()[:3]
            if not backward:
                return lambda: fn(q, b, labels, c, 0.1)
            qg = q.clone().requires_grad_()
            grad = torch.ones(n, c, device=device)
            return lambda: fn(qg, b, labels, c, 0.1).backward(grad)

        return run

    one = (n + m) * d * dtype.itemsize + n * c * 4
    return [
        Case("bank_class_logsumexp", "forward", _bank_size(s, dtype), dtype, make(False), 2 * n * m * d, one, n * m),
        Case(
            "bank_class_logsumexp",
            "forward+backward",
            _bank_size(s, dtype),
            dtype,
            make(True),
            6 * n * m * d,
            2 * one + n * d * 4,
            2 * n * m,
        ),
    ]


@case
def case_instance_consistency_loss(s, device, dtype, compiled) -> list[Case]:
    n, m, d, c = s["N"], s["M"], s["D"], s["C"]
    inputs = _bank_inputs(s, device, dtype)

    def make(backward: bool):
        def run(impl):
            fn = _impl_fn(instance_consistency_loss, instance_consistency_loss_reference, impl, compiled)
            q, b, labels, weights, strong = inputs()
            if not backward:
                return lambda: fn(q, strong, b, labels, weights, 0.1)
            sg = strong.clone().requires_grad_()
            return lambda: fn(q, sg, b, labels, weights, 0.1).sum().backward()

        return run

    one = (2 * n + m) * d * dtype.itemsize + n * c * 4 + n * 4
    return [
        Case(
            "instance_consistency_loss",
            "forward",
            _bank_size(s, dtype),
            dtype,
            make(False),
            4 * n * m * d,
            one,
            2 * n * m,
        ),
        Case(
            "instance_consistency_loss",
            "forward+backward",
            _bank_size(s, dtype),
            dtype,
            make(True),
            10 * n * m * d,
            2 * one + n * d * 4,
            4 * n * m,
        ),
    ]


@case
def case_fuse_pseudo_labels(s, device, dtype, compiled) -> list[Case]:
    bb, cc, h, w = s["fuse"]

    def build():
        g = torch.Generator().manual_seed(1)
        probs = torch.randn(bb, cc, h, w, generator=g).softmax(1).to(device, dtype)
        inst = torch.randn(bb, cc, h, w, generator=g).softmax(1).to(device, dtype)
        return probs, inst, torch.full((cc,), 0.5, device=device)

    inputs = _lazy(build)

    def run(impl):
        fn = _impl_fn(fuse_pseudo_labels, fuse_pseudo_labels_reference, impl, compiled)
        return lambda: fn(inputs()[0], inputs()[1], 0.5, inputs()[2])

    return [
        Case(
            "fuse_pseudo_labels",
            "forward",
            f"{bb}x{cc}x{h}x{w} {str(dtype)[6:]}",
            dtype,
            run,
            0,
            2 * bb * cc * h * w * dtype.itemsize + bb * h * w * 12,
        )
    ]


@case
def case_class_feature_sums(s, device, dtype, compiled) -> list[Case]:
    px, d, c = s["pixels"], s["D"], s["C"]

    def build():
        g = torch.Generator().manual_seed(2)
        feats = torch.randn(px, d, generator=g).to(device, dtype)
        labels = torch.randint(0, c + 1, (px,), generator=g).masked_fill_(torch.rand(px, generator=g) < 0.1, 255)
        return feats, labels.to(device)

    inputs = _lazy(build)

    def run(impl):
        fn = _impl_fn(class_feature_sums, class_feature_sums_reference, impl, compiled)
        return lambda: fn(inputs()[0], inputs()[1], c)

    return [
        Case(
            "class_feature_sums",
            "forward",
            f"N={px} D={d} {str(dtype)[6:]}",
            dtype,
            run,
            0,
            px * (d * dtype.itemsize + 8) + c * d * 4,
        )
    ]


@case
def case_sinkhorn(s, device, dtype, compiled) -> list[Case]:
    sn = s["sink_N"]
    cases = []
    for sk in s["sink_K"]:

        def build(sk=sk):
            g = torch.Generator().manual_seed(3)
            scores = torch.nn.functional.normalize(torch.randn(sn, 64, generator=g), dim=1)
            protos = torch.nn.functional.normalize(torch.randn(sk, 64, generator=g), dim=1)
            return (scores @ protos.T).to(device, dtype), torch.full((sk,), 1.0 / sk, device=device)

        inputs = _lazy(build)

        def run(impl, inputs=inputs):
            fn = _impl_fn(sinkhorn, sinkhorn_reference, impl, compiled)
            return lambda: fn(inputs()[0], inputs()[1], 0.05, 3)

        cases.append(
            Case(
                "sinkhorn",
                "forward",
                f"N={sn} K={sk} 3 iterations {str(dtype)[6:]}",
                dtype,
                run,
                0,
                sn * sk * (dtype.itemsize + 4),
                4 * sn * sk,
            )
        )
    return cases


# --- roofline model ---


def roofline(c: Case, gpu: str) -> dict:
    """Expected time on ``gpu`` (a PEAKS key): max(GEMM FLOPs / peak of the dtype's dot path, minimal bytes /
    bandwidth, exponentials / MUFU rate), i.e. perfect overlap; bf16/fp16 dots on tensor cores, float32 on the FMA
    units (the kernels' exact "ieee" float32 products)."""
    peak = PEAKS[gpu]
    flop_peak = peak["fp32"] if c.dtype == torch.float32 else peak["bf16"]
    parts = {
        "gemm_ms": c.flops / flop_peak * 1e3,
        "memory_ms": c.bytes / peak["bytes"] * 1e3,
        "exp_ms": c.exps / peak["exp"] * 1e3,
    }
    bound = max(parts, key=parts.get)
    return {**parts, "expected_ms": parts[bound], "bound": bound.removesuffix("_ms")}


def roofline_rows(sizes: str = "paper") -> list[dict]:
    """The roofline table: every op at ``sizes``, bank ops in bf16 (the loop under AMP) and float32."""
    rows = []
    for op, build in CASES.items():
        bank = op in ("bank_topk", "bank_class_logsumexp", "instance_consistency_loss")
        for dtype in (torch.bfloat16, torch.float32) if bank else (torch.float32, torch.bfloat16):
            for c in build(SIZES[sizes], "cpu", dtype, {}):
                row = {
                    "op": c.op,
                    "mode": c.mode,
                    "size": c.size,
                    "gflop": c.flops / 1e9,
                    "mb": c.bytes / 1e6,
                    "gexp": c.exps / 1e9,
                }
                for gpu in PEAKS:
                    row[gpu] = roofline(c, gpu)
                rows.append(row)
    return rows


def roofline_markdown(rows: list[dict], sizes: str) -> str:
    lines = [
        f"# Roofline model at {sizes} sizes (no measurement: data-sheet peaks)",
        "",
        f"Peaks: {PEAK_SOURCE}; exp rate {PEAKS['H100 SXM']['exp'] / 1e12:.2f} T/s (16/clk/SM, our arithmetic). "
        "Expected = max(GEMM, memory, exp) time: perfect overlap, so a lower bound. bf16 dots on tensor "
        'cores; float32 bank ops use exact FMA products ("ieee").',
        "",
        "| op | mode | size | GFLOP | MB | G exp | bound | H100 expected ms | H200 expected ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        h100, h200 = r["H100 SXM"], r["H200 SXM"]
        lines.append(
            f"| {r['op']} | {r['mode']} | {r['size']} | {r['gflop']:.4g} | {r['mb']:.4g} | {r['gexp']:.3g} "
            f"| {h100['bound']} | {h100['expected_ms']:.3g} | {h200['expected_ms']:.3g} |"
        )
    return "\n".join(lines) + "\n"


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
    """Roofline ceilings of this run: the data-sheet peaks on an H100/H200, otherwise a measured GEMM and copy."""
    name = torch.cuda.get_device_name() if device == "cuda" else ""
    for gpu, peak in PEAKS.items():
        if gpu.split()[0] in name:
            return {
                "flops": peak["bf16"],
                "fp32_flops": peak["fp32"],
                "bytes": peak["bytes"],
                "gpu": gpu,
                "source": PEAK_SOURCE,
            }
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    gemm = 2 * 2048**3 / min(time_call(lambda: a @ a, device, 5)[0])
    src = torch.empty(64 * 2**20, device=device)  # 256 MB
    dst = torch.empty_like(src)
    copy = min(time_call(lambda: dst.copy_(src), device, 5)[0])
    return {
        "flops": gemm,
        "fp32_flops": gemm,
        "bytes": 2 * src.numel() * 4 / copy,
        "gpu": None,
        "source": f"measured in this run: {str(dtype)[6:]} 2048^3 GEMM, 256 MB copy",
    }


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    """(20 %, 50 %, 80 %) quantiles in ms."""
    if len(values) < 3:
        return min(values) * 1e3, statistics.median(values) * 1e3, max(values) * 1e3
    q = statistics.quantiles(values, n=10, method="inclusive")
    return q[1] * 1e3, statistics.median(values) * 1e3, q[7] * 1e3


def measure_case(c: Case, impls: list[str], device: str, reps: int, ceiling: dict) -> list[dict]:
    """Rows for one case: warm every impl, then time them round-robin (so load changes hit all alike), then
    measure each one's peak memory. An impl that fails (OOM, compile error) gets an error row."""
    rows, calls = {}, {}
    for impl in impls:
        rows[impl] = {"op": c.op, "mode": c.mode, "size": c.size, "impl": impl}
        try:
            calls[impl] = c.run(impl)
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
            w, u = time_call(fn, device, 1)
            wall[impl] += w
            cpu[impl] += u
    flop_peak = ceiling["fp32_flops"] if c.dtype == torch.float32 else ceiling["flops"]
    floor = max(c.flops / flop_peak, c.bytes / ceiling["bytes"])
    model = {gpu: roofline(c, gpu)["expected_ms"] for gpu in PEAKS}
    for impl in calls:
        peak = peak_extra_bytes(calls[impl], device)
        q20, median, q80 = _quantiles(wall[impl])
        rows[impl].update(
            ms_p20=q20,
            ms_median=median,
            ms_p80=q80,
            cpu_ms_median=statistics.median(cpu[impl]) * 1e3,
            floor_ms=floor * 1e3,
            fraction_of_floor=floor * 1e3 / median,
            tflops=c.flops / median / 1e9,
            gbps=c.bytes / median / 1e6,
            peak_extra_mb=None if peak is None else peak / 2**20,
            roofline_ms=model,
        )
    return [rows[impl] for impl in impls]


# --- output ---


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
        return out.stdout.strip() or "uncommitted"
    except OSError:
        return "unknown"


def environment(device: str) -> dict:
    """Device, versions, commit and load: enough to tell whether two result files compare."""
    info = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "threads": torch.get_num_threads(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    else:
        cpu = (
            re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
            if os.path.exists("/proc/cpuinfo")
            else None
        )
        info["cpu"] = f"{cpu.group(1) if cpu else platform.processor()}, {os.cpu_count()} logical cores"
    return info


def markdown(results: dict) -> str:
    """The results as a table, one row per (op, mode, impl), speedups against the eager baseline."""
    env, ceil = results["environment"], results["ceilings"]
    lines = [
        f"# Kernel benchmark: {env['device']} ({env.get('gpu') or env.get('cpu')})",
        "",
        f"torch {env['torch']}, triton {env['triton']}, {env['threads']} threads, commit {env['commit']}, "
        f"{env['date']}; load average before/after: {results['load_before']} / {results['load_after']}.",
        f"Roofline ceilings: {ceil['flops'] / 1e12:.3g} TFLOP/s, {ceil['bytes'] / 1e9:.3g} GB/s "
        f"({ceil['source']}). Floor = max(FLOPs / peak, minimal bytes / bandwidth). Model: the H100/H200 "
        "expected time of the roofline model (data-sheet peaks).",
        "",
        "| op | mode | size | impl | median ms (p20-p80) | CPU ms | achieved | % of floor | peak extra MB "
        "| vs eager | vs compile | model H100 / H200 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    eager = {(r["op"], r["mode"], r["size"]): r.get("ms_median") for r in results["rows"] if r["impl"] == "torch"}
    compiled = {(r["op"], r["mode"], r["size"]): r.get("ms_median") for r in results["rows"] if r["impl"] == "compile"}
    for r in results["rows"]:
        head = f"| {r['op']} | {r['mode']} | {r['size']} | {r['impl']} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} | | | | | | | |")
            continue
        key = (r["op"], r["mode"], r["size"])
        achieved = f"{r['tflops'] * 1e3:.3g} GFLOP/s" if r["tflops"] else f"{r['gbps']:.3g} GB/s"
        mem = "n/a" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.0f}"
        speed = " | ".join(f"{ref[key] / r['ms_median']:.2f}x" if ref.get(key) else "" for ref in (eager, compiled))
        model = " / ".join(f"{v:.3g}" for v in r["roofline_ms"].values())
        lines.append(
            f"{head} {r['ms_median']:.2f} ({r['ms_p20']:.2f}-{r['ms_p80']:.2f}) | {r['cpu_ms_median']:.1f} | "
            f"{achieved} | {100 * r['fraction_of_floor']:.1f}% | {mem} | {speed} | {model} |"
        )
    lines += ["", "first-call seconds (includes torch.compile / Triton compilation):", ""]
    lines += [
        f"- {r['op']} {r['mode']} {r['impl']}: {r['first_call_s']:.1f} s"
        for r in results["rows"]
        if "first_call_s" in r and r["impl"] in ("compile", "triton")
    ]
    if results.get("notes"):
        lines += ["", *[f"- {note}" for note in results["notes"]]]
    return "\n".join(lines) + "\n"


def _notes(device: str) -> list[str]:
    notes = [
        "CPU ms: process CPU time of one call, all threads together; peak extra MB: resident-memory (CPU) or "
        "allocator (CUDA) high-water mark of one call above what was allocated before it.",
        "first-call seconds depend on torch.compile's on-disk cache (inductor FX graph cache).",
        "bank_topk's eager baseline is torch.topk on the full matrix product (no tie rule); its reference, used by "
        "the tests, sorts whole rows.",
    ]
    if device != "cuda":
        notes += [
            "triton is not timed on CPU: it only runs under TRITON_INTERPRET=1 there, whose timings mean nothing.",
            "auto = chunked on CPU. The GPU targets (>= 2x eager, >= 1.2x torch.compile, >= 50% of the memory "
            "floor, >= 35% of bf16 tensor-core peak) need `--device cuda` on an H100/H200: not measured here.",
        ]
    return notes


def run_roofline(out: Path, sizes: str) -> None:
    rows = roofline_rows(sizes)
    results = {
        "sizes": sizes,
        "peaks": PEAKS,
        "source": PEAK_SOURCE,
        "date": time.strftime("%Y-%m-%d"),
        "commit": _git_commit(),
        "rows": rows,
    }
    write_json(out / "kernels-static-roofline.json", results)
    write_text(out / "kernels-static-roofline.md", roofline_markdown(rows, sizes))
    print(roofline_markdown(rows, sizes))


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", choices=sorted(SIZES), help="size set (default: paper on cuda, cpu on cpu)")
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        help="bank/feature dtype (default: bfloat16 on cuda, float32 on cpu); probabilities too",
    )
    parser.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    parser.add_argument("--impls", default="", help="comma-separated impls (default: all for the device)")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per (op, impl) after one warm-up")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--roofline", action="store_true", help="write the roofline model table only (no timing)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.roofline:
        run_roofline(args.out, args.size or "paper")
        return 0
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = SIZES[args.size or ("paper" if device == "cuda" else "cpu")]
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    impls = (
        args.impls.split(",")
        if args.impls
        else (["torch", "compile", "chunked", "triton"] if device == "cuda" else ["torch", "compile", "auto"])
    )
    unknown = set(args.ops.split(",")) - set(CASES) - {""}
    if unknown:
        raise UserError(f"--ops: unknown op(s) {sorted(unknown)}; choose from {sorted(CASES)}")
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    ceiling = ceilings(device)
    compiled: dict = {}
    rows = []

    def write(complete: bool) -> None:
        """Written after every case, so a run stopped at its time limit keeps what it measured."""
        results = {
            "environment": environment(device),
            "ceilings": ceiling,
            "load_before": load_before,
            "load_after": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "complete": complete,
            "rows": rows,
            "notes": _notes(device) + ([] if complete else ["partial: the run stopped before its last case"]),
        }
        write_json(args.out / f"kernels-{device}.json", results)
        write_text(args.out / f"kernels-{device}.md", markdown(results))

    for op, build in CASES.items():
        if args.ops and op not in args.ops.split(","):
            continue
        for c in build(sizes, device, dtype, compiled):
            for r in measure_case(c, impls, device, args.reps, ceiling):
                rows.append(r)
                model = " / ".join(f"{v:.3g}" for v in r.get("roofline_ms", {}).values())
                print(
                    f"{r['op']:26s} {r['mode']:17s} {r['impl']:8s} "
                    + (
                        r.get("error")
                        or f"{r['ms_median']:9.2f} ms (cpu {r['cpu_ms_median']:9.2f})  "
                        f"{100 * r['fraction_of_floor']:5.1f}% of floor  model H100/H200 {model} ms"
                    ),
                    flush=True,
                )
            write(complete=False)
    write(complete=True)
    print(f"wrote {args.out / f'kernels-{device}.json'} and .md")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
