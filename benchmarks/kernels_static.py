"""Static GPU check of the Triton kernels, no GPU needed: compile each kernel ahead of time for sm_80 / sm_90 /
sm_100 with Triton's own ptxas, and read registers, spills, shared memory and tensor-core instructions.

    python benchmarks/kernels_static.py              # every kept config x dtype x arch (make kernels-static)
    python benchmarks/kernels_static.py --subset     # one config per kernel, bf16 + fp32, sm_90 (the CI test)
    python benchmarks/kernels_static.py --ops bank_class_logsumexp --archs 90 --dtypes bfloat16 --no-write

What is compiled is what the ops would launch: each op's benchmark case (benchmarks/bench_kernels.py, the "static"
sizes: the paper sizes' divisibility, small tensors) runs on CPU with impl="triton" while
``udaseg.kernels._tiles.record_launches`` records every launch instead of running it; each recorded launch is
specialised for the target exactly as Triton's launcher would (argument types, divisibility, constexprs) and
compiled for every autotune config the launcher keeps for that call (after its pruning).

Per kernel x config x dtype x arch: registers, stack and local bytes (`cuobjdump -res-usage`), spill stores and
loads (`ptxas -v` on the same PTX with Triton's flags: the spill verdict; a stack frame alone is not a spill),
shared memory (Triton's request, checked against the arch's per-block limit), and the tensor-core instruction
kind (wgmma = HGMMA on sm_90, mma = HMMA, tcgen05 on sm_100, none) from PTX and SASS. Exit code 1 on a compile
error, a spill, too much shared memory, or a bank GEMM (``Launcher(tensor_cores=True)``) without tensor-core
instructions in bf16/fp16. float32 bank GEMMs use exact "ieee" products on the FMA units by design (no tensor
cores). Writes benchmarks/results/kernels-static.{json,md} (not with --subset or --no-write).
"""

from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)  # compile, don't interpret: must happen before triton is imported
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated (it warns when unset)

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import CASES, ROOT, SIZES, _git_commit  # noqa: E402

from udaseg.cli import run_cli  # noqa: E402
from udaseg.fileio import UserError, write_json, write_text  # noqa: E402
from udaseg.kernels._tiles import record_launches  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ARCHS = (80, 90, 100)
# Shared memory one block may use (opt-in maximum): A100 (sm_80) 163 KB, H100/H200 (sm_90) and B200 (sm_100) 227 KB.
SMEM_LIMIT = {80: 166912, 90: 232448, 100: 232448}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TC_PTX = (("tcgen05", "tcgen05.mma"), ("wgmma", "wgmma.mma_async"), ("mma", "mma.sync"))
TC_SASS = re.compile(r"\b(HGMMA|HMMA|UTCHMMA|UTCQMMA|UTCMMA)\b")

_JOBS: list[dict] = []  # filled before the worker pool forks; workers read it by index


def triton_tools() -> dict[str, Path]:
    """Triton's bundled ptxas / cuobjdump (backends/nvidia/bin); UserError naming the folder when missing."""
    import triton

    folder = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    tools = {name: folder / name for name in ("ptxas", "cuobjdump")}
    missing = [str(p) for p in tools.values() if not p.exists()]
    if missing:
        raise UserError(f"Triton's CUDA tools are missing: {', '.join(missing)} (install the triton wheel for Linux)")
    return tools


def collect(ops: list[str], dtypes: list[str], subset: bool) -> list[dict]:
    """Record what every op case launches (per dtype) and expand each launch into its kept configs."""
    jobs, seen = [], set()
    for op in ops:
        for dtype_name in dtypes:
            for case in CASES[op](SIZES["static"], "cpu", DTYPES[dtype_name], {}):
                with record_launches() as launches:
                    case.run("triton")()
                for launch in launches:
                    fn = launch.launcher.fn
                    kept = launch.configs()
                    for config in kept[:1] if subset else kept:
                        meta = {**launch.kwargs, **config.all_kwargs()}
                        shown = {k: v for k, v in meta.items() if k not in ("UPCAST",)}
                        key = (
                            fn.__name__,
                            dtype_name,
                            str(sorted(shown.items())),
                            tuple(str(getattr(a, "dtype", type(a).__name__)) for a in launch.args),
                        )
                        if key in seen:
                            continue
                        seen.add(key)
                        jobs.append(
                            {
                                "op": op,
                                "kernel": fn.__name__,
                                "dtype": dtype_name,
                                "fn": fn,
                                "args": launch.args,
                                "meta": meta,
                                "shown": shown,
                                "tensor_cores": launch.launcher.tensor_cores,
                            }
                        )
    return jobs


def _compile(fn, args: tuple, meta: dict, arch: int):
    """Specialise like Triton's launcher would on a device of ``arch``, then compile (no driver involved)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = {**meta, "debug": False}
    # Launch-time knobs the binder expects; which exist depends on the Triton version (3.6 lacks the fpsan one).
    for knob in ("instrumentation_mode", "fpsan_homomorphic_casts"):
        if hasattr(knobs.compilation, knob):
            kwargs[knob] = getattr(knobs.compilation, knob)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    src = ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(src, target=target, options=options.__dict__)


def _resources(cubin: bytes, tools: dict[str, Path]) -> dict:
    """Registers, stack, local, static shared bytes and tensor-core SASS instructions of a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([str(tools["cuobjdump"]), "-res-usage", f.name], capture_output=True, text=True)
        sass = subprocess.run([str(tools["cuobjdump"]), "-sass", f.name], capture_output=True, text=True)
    found = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage.stdout)}
    if "REG" not in found:
        raise RuntimeError(f"cuobjdump -res-usage gave no register count: {usage.stdout[-300:]} {usage.stderr[-300:]}")
    return {
        "registers": found["REG"],
        "stack_bytes": found.get("STACK", 0),
        "local_bytes": found.get("LOCAL", 0),
        "static_shared": found.get("SHARED", 0),
        "sass_tc": sorted(set(TC_SASS.findall(sass.stdout))),
        "sass_local_ops": len(re.findall(r"\b(LDL|STL)\b", sass.stdout)),
    }


def _error_text(error: BaseException) -> str:
    """One line: the innermost cause of a (chained) compile error, which names what went wrong."""
    root = error
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    return f"{type(error).__name__}: {type(root).__name__}: {' '.join(str(root).split())[-300:]}"


def _ptxas_spills(ptx: str, arch: int, fp_fusion: bool) -> dict:
    """Stack frame and spill bytes as ptxas -v reports them, assembling the PTX with Triton's own ptxas and flags."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        fmad = [] if fp_fusion else ["--fmad=false"]
        cmd = [
            get_ptxas(arch).path,
            "-lineinfo",
            "-v",
            "--regAllocOptLevel=2",
            *fmad,
            f"--gpu-name={sm_arch_from_capability(arch)}",
            str(src),
            "-o",
            str(Path(tmp) / "k.o"),
        ]
        log = subprocess.run(cmd, capture_output=True, text=True).stderr
    found = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not found:
        raise RuntimeError(f"ptxas -v printed no spill line: {log[-300:]}")
    frame, stores, loads = (int(x) for x in found.groups())
    return {"stack_frame": frame, "spill_stores": stores, "spill_loads": loads}


def run_job(index_arch: tuple[int, int]) -> dict:
    """Compile one (job, arch) and judge it; never raises (a failure is a row)."""
    index, arch = index_arch
    job = _JOBS[index]
    row = {k: job[k] for k in ("op", "kernel", "dtype", "tensor_cores")}
    row.update(arch=f"sm_{arch}", config=job["shown"])
    start = time.perf_counter()
    try:
        compiled = _compile(job["fn"], job["args"], job["meta"], arch)
        ptx = compiled.asm["ptx"]
        row.update(_resources(compiled.asm["cubin"], triton_tools()))
        row.update(_ptxas_spills(ptx, arch, bool(compiled.metadata.enable_fp_fusion)))
        row["shared_bytes"] = int(compiled.metadata.shared) + row["static_shared"]
        row["tc_kind"] = next((kind for kind, text in TC_PTX if text in ptx), "none")
    except Exception as error:  # noqa: BLE001 - a compile error is a result
        row["error"] = _error_text(error)
    row["compile_s"] = round(time.perf_counter() - start, 2)
    row["problems"] = problems(row, arch)
    return row


def problems(row: dict, arch: int) -> list[str]:
    """Why a row fails the check (empty: it passes)."""
    if "error" in row:
        return [f"compile error: {row['error']}"]
    out = []
    if row["spill_stores"] or row["spill_loads"] or row["local_bytes"]:
        out.append(
            f"spills: {row['spill_stores']} B stored, {row['spill_loads']} B loaded, {row['local_bytes']} B local"
        )
    if row["shared_bytes"] > SMEM_LIMIT[arch]:
        out.append(f"shared memory {row['shared_bytes']} B > {SMEM_LIMIT[arch]} B on sm_{arch}")
    if row["tensor_cores"] and row["dtype"] != "float32" and row["tc_kind"] == "none":
        out.append("bank GEMM without tensor-core instructions in half precision")
    return out


def supported_archs(archs: list[int]) -> tuple[list[int], dict[int, str]]:
    """The archs the installed Triton compiles for (a one-line kernel each), and why others are skipped."""
    import triton
    import triton.language as tl

    @triton.jit
    def _probe(x_ptr):
        tl.store(x_ptr, tl.load(x_ptr) + 1.0)

    ok, skipped = [], {}
    for arch in archs:
        try:
            _compile(_probe, (torch.zeros(4),), {"num_warps": 1}, arch)
            ok.append(arch)
        except Exception as error:  # noqa: BLE001 - an arch this Triton cannot target is skipped, with the reason
            skipped[arch] = f"{type(error).__name__}: {str(error).strip()[:200]}"
    return ok, skipped


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        "# Static GPU check of the Triton kernels (compiled ahead of time, no GPU)",
        "",
        f"triton {env['triton']} ({env['ptxas']}), torch {env['torch']}, commit {env['commit']}, {env['date']}. "
        f"Archs: {', '.join(env['archs'])}" + (f"; skipped: {env['skipped']}" if env["skipped"] else "") + ".",
        "Every autotune config the launcher keeps for the call, for every dtype the op accepts. "
        "Spill = ptxas -v spill stores + loads (cuobjdump -res-usage's stack frame shown beside it); "
        "shared = Triton's dynamic request + static; "
        "tensor cores from the PTX (wgmma / mma.sync / tcgen05) and SASS. float32 bank GEMMs use exact "
        '"ieee" FMA products by design (no tensor cores).',
        "",
        f"**{results['failures']} failing rows of {len(results['rows'])}.**",
        "",
        "| op | kernel | dtype | arch | config | regs | spill B | stack B | shared KB | tensor cores | SASS "
        "| verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["rows"]:
        cfg = " ".join(f"{k}={v}" for k, v in r["config"].items() if k not in ("PREC",))
        if "error" in r:
            lines.append(
                f"| {r['op']} | {r['kernel']} | {r['dtype']} | {r['arch']} | {cfg} | | | | | | | "
                f"FAIL: {r['error'][:120]} |"
            )
            continue
        verdict = "ok" if not r["problems"] else "FAIL: " + "; ".join(r["problems"])
        lines.append(
            f"| {r['op']} | {r['kernel']} | {r['dtype']} | {r['arch']} | {cfg} | {r['registers']} | "
            f"{r['spill_stores'] + r['spill_loads']} | {r['stack_bytes']} | {r['shared_bytes'] / 1024:.1f} | "
            f"{r['tc_kind']} | "
            f"{','.join(r['sass_tc']) or '-'} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def _ptxas_version(tools: dict[str, Path]) -> str:
    out = subprocess.run([str(tools["ptxas"]), "--version"], capture_output=True, text=True).stdout
    found = re.search(r"release ([\d.]+)", out)
    return f"ptxas {found.group(1)}" if found else "ptxas (version unknown)"


def _main(argv: list[str]) -> int:
    global _JOBS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", default="", help=f"comma-separated ops (default: all of {sorted(CASES)})")
    p.add_argument("--dtypes", default="", help="comma-separated dtypes (default: float32,bfloat16,float16)")
    p.add_argument("--archs", default="", help="comma-separated compute capabilities (default: 80,90,100)")
    p.add_argument("--subset", action="store_true", help="first kept config per kernel, bf16 + fp32, sm_90 only")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel compiles")
    p.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/results")
    p.add_argument("--json", type=Path, help="also write the rows to this file (any mode, e.g. --subset)")
    p.add_argument(
        "--update",
        action="store_true",
        help="replace only the rows of --ops in the committed kernels-static.json (after fixing one op)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    tools = triton_tools()
    ops = args.ops.split(",") if args.ops else list(CASES)
    if set(ops) - set(CASES):
        raise UserError(f"--ops: unknown op(s) {sorted(set(ops) - set(CASES))}; choose from {sorted(CASES)}")
    dtypes = args.dtypes.split(",") if args.dtypes else (["bfloat16", "float32"] if args.subset else list(DTYPES))
    if set(dtypes) - set(DTYPES):
        raise UserError(f"--dtypes: choose from {sorted(DTYPES)}, got {args.dtypes!r}")
    try:
        archs = [int(a) for a in args.archs.split(",")] if args.archs else ([90] if args.subset else list(ARCHS))
    except ValueError as error:
        raise UserError(f"--archs: comma-separated integers like 80,90, got {args.archs!r}") from error
    if set(archs) - set(SMEM_LIMIT):
        raise UserError(f"--archs: choose from {sorted(SMEM_LIMIT)}, got {args.archs!r}")
    archs, skipped = supported_archs(archs)
    _JOBS = collect(ops, dtypes, args.subset)
    work = [(i, arch) for i in range(len(_JOBS)) for arch in archs]
    print(f"{len(_JOBS)} kernel configs x {len(archs)} archs = {len(work)} compiles", flush=True)
    with multiprocessing.get_context("fork").Pool(max(1, args.jobs)) as pool:
        rows = []
        for row in pool.imap(run_job, work):
            rows.append(row)
            status = "ok" if not row["problems"] else "FAIL " + "; ".join(row["problems"])
            print(
                f"{row['kernel']:18s} {row['dtype']:9s} {row['arch']:6s} regs {row.get('registers', '-'):>3} "
                f"stack {row.get('stack_bytes', '-'):>4} tc {row.get('tc_kind', '-'):7s} {row['compile_s']:5.1f}s "
                f"{status}",
                flush=True,
            )
    import triton

    env = {
        "triton": triton.__version__,
        "torch": torch.__version__,
        "ptxas": _ptxas_version(tools),
        "commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "archs": [f"sm_{a}" for a in archs],
        "skipped": {f"sm_{a}": why for a, why in skipped.items()},
        "subset": args.subset,
    }
    if args.update:
        previous = json.loads((args.out / "kernels-static.json").read_text())
        kept = [r for r in previous["rows"] if r["op"] not in ops]
        rows = sorted(kept + rows, key=lambda r: list(CASES).index(r["op"]))
        env["updated_ops"] = ops
    failures = sum(bool(r["problems"]) for r in rows)
    results = {"environment": env, "failures": failures, "rows": rows}
    if args.json:
        write_json(args.json, results)
    if not args.no_write and not args.subset:
        write_json(args.out / "kernels-static.json", results)
        write_text(args.out / "kernels-static.md", markdown(results))
        print(f"wrote {args.out / 'kernels-static.json'} and .md")
    for row in rows:
        if row["problems"]:
            print(f"FAIL {row['kernel']} {row['dtype']} {row['arch']} {row['config']}: {'; '.join(row['problems'])}")
    print(f"{failures} failing of {len(rows)}")
    return 1 if failures or not rows else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
