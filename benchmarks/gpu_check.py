"""One command on a fresh GPU machine (H100/H200, no internet): install, test, benchmark, train, in <= 8 minutes.

    make gpu-check                                   # = python benchmarks/gpu_check.py
    WHEELS=/path/to/wheels make gpu-check            # install offline first: pip --no-index --find-links $WHEELS
    python benchmarks/gpu_check.py --dry-run         # print the steps and their commands, run nothing

Steps, in order, each with a time budget (the whole run stops at --budget seconds, default 480):
  1. install     pip install --no-index --find-links $WHEELS -e .[dev] (only when WHEELS is set), then check imports
  2. cuda        torch sees a CUDA device (the first step that needs one)
  3. pytest      pytest -m gpu: the kernels against their float64 references on the GPU, every dtype
  4. kernels     bench_kernels.py --device cuda: every op, eager / torch.compile / triton, beside the roofline model
  5. step        bench_step.py --size paper: a training step with the fused kernels against the torch reference
  6. train       python -m udaseg.train --method dida+cpsl --kernels triton, 300 iterations, AMP (bf16 on Hopper)
  7. profile     profile_model.py: DAFormer MiT-B5 and DeepLabV2-R101 forward+backward, encoder alone, top operators
Results: benchmarks/results/kernels-cuda.*, step-cuda-paper.*, profile-cuda.*, gpu-check-cuda.{json,md} (this run's
log).

Without a CUDA device it runs the steps before the first one that needs CUDA, then stops with exit code 3 and
prints what it would have run: a dry run of the machine-independent part (tested on CPU).
It imports nothing of udaseg (nor torch) itself before the install step has run: each step is a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXIT_NO_CUDA = 3
PY = sys.executable


@dataclass
class Step:
    """One step: a command, whether it needs CUDA, and its share of the time budget (seconds)."""

    name: str
    command: list[str]
    needs_cuda: bool
    budget_s: int
    what: str
    env: dict = field(default_factory=dict)


def steps(wheels: str | None, iters: int) -> list[Step]:
    install = (
        [PY, "-m", "pip", "install", "--no-index", "--find-links", wheels, "-e", ".[dev]"]
        if wheels
        else [
            PY,
            "-c",
            "import torch, triton, udaseg.kernels; print('torch', torch.__version__, 'triton', triton.__version__)",
        ]
    )
    cuda_probe = (
        "import sys, torch; ok = torch.cuda.is_available(); "
        "print(torch.cuda.get_device_name(0) if ok else 'no CUDA device'); sys.exit(0 if ok else 1)"
    )
    # Compiled kernels on the GPU, never the interpreter: "0", not unset, since tests/kernels sets it when unset.
    no_interp = {"TRITON_INTERPRET": "0"}
    return [
        Step("install", install, False, 30, "install the project offline (WHEELS) or check that it imports"),
        Step("cuda", [PY, "-c", cuda_probe], True, 10, "torch sees a CUDA device"),
        Step(
            "pytest",
            [PY, "-m", "pytest", "-q", "-m", "gpu", "tests"],
            True,
            90,
            "GPU tests: kernels vs float64 references, every dtype",
            no_interp,
        ),
        Step(
            "kernels",
            [PY, "benchmarks/bench_kernels.py", "--device", "cuda", "--reps", "15"],
            True,
            130,
            "kernel benchmark at paper sizes (bf16), with the roofline model",
            no_interp,
        ),
        Step(
            "step",
            [
                PY,
                "benchmarks/bench_step.py",
                "--size",
                "paper",
                "--methods",
                "self_training,dida",
                "--kernels",
                "triton,torch",
                "--iters",
                "32",
                "--amp",
            ],
            True,
            100,
            "training-step overhead of DIDA at paper size, fused kernels vs torch, AMP",
            no_interp,
        ),
        Step(
            "train",
            [
                PY,
                "-m",
                "udaseg.train",
                "--method",
                "dida+cpsl",
                "--kernels",
                "triton",
                "--iters",
                str(iters),
                "--warmup-iters",
                "0",
                "--set",
                "train.amp=true",
                "--set",
                "train.eval_every=0",
                "--out",
                "runs/gpu-check/train",
                "--overwrite",
            ],
            True,
            60,
            f"{iters}-iteration dida+cpsl training run with the Triton kernels and AMP",
            no_interp,
        ),
        Step(
            "profile",
            [PY, "benchmarks/profile_model.py", "--models", "daformer_mitb5,deeplabv2_r101", "--iters", "10"],
            True,
            60,
            "where a training step goes: whole model vs encoder alone, top CUDA operators (MiT-B5, DeepLabV2)",
        ),
    ]


def _env(step: Step) -> dict:
    env = dict(os.environ)
    for key, value in step.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _cuda_available() -> bool:
    probe = subprocess.run(
        [PY, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"], capture_output=True, cwd=ROOT
    )
    return probe.returncode == 0


def run_step(step: Step, timeout: float) -> dict:
    """Run one step with its output streamed to the console; its record for the log."""
    print(f"\n=== {step.name}: {step.what}\n$ {' '.join(step.command)}", flush=True)
    start = time.perf_counter()
    # Its own process group: on timeout the step's children (bench_step's training runs) go too, so nothing
    # keeps the GPU busy under the next step.
    proc = subprocess.Popen(step.command, cwd=ROOT, env=_env(step), start_new_session=True)
    try:
        rc = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        rc = "timeout"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
    return {
        "step": step.name,
        "command": " ".join(step.command),
        "rc": rc,
        "seconds": round(time.perf_counter() - start, 1),
        "budget_s": step.budget_s,
    }


def _versions() -> dict:
    """GPU name, torch, Triton and the commit, read in a subprocess (this script imports neither torch nor udaseg)."""
    probe = (
        "import json, torch\n"
        "try:\n    import triton; t = triton.__version__\nexcept ImportError:\n    t = None\n"
        "gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None\n"
        "print(json.dumps({'gpu': gpu, 'torch': torch.__version__, 'cuda': torch.version.cuda, 'triton': t}))"
    )
    info: dict = {}
    done = subprocess.run([PY, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    if done.returncode == 0 and done.stdout.strip():
        info.update(json.loads(done.stdout.strip().splitlines()[-1]))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    info["commit"] = commit.stdout.strip() or None
    return info


def _write_log(records: list[dict], status: str, out: Path) -> None:
    from udaseg.fileio import write_json, write_text

    meta = {
        "status": status,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "host": platform.node(),
        **_versions(),
    }
    write_json(out / "gpu-check-cuda.json", {"meta": meta, "steps": records})
    lines = [
        f"# gpu-check: {status}",
        "",
        f"{meta['date']}; {meta.get('gpu')}; torch {meta.get('torch')} (CUDA {meta.get('cuda')}), "
        f"triton {meta.get('triton')}; commit {meta.get('commit')}",
        "",
        "| step | rc | seconds | budget | command |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {r['step']} | {r['rc']} | {r['seconds']} | {r['budget_s']} | `{r['command']}` |" for r in records]
    write_text(out / "gpu-check-cuda.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheels", default=os.environ.get("WHEELS") or None, help="folder of wheels (default: $WHEELS)")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run (default 480 = 8 min)")
    p.add_argument("--iters", type=int, default=300, help="training iterations of the last step")
    p.add_argument("--dry-run", action="store_true", help="print the steps and commands, run nothing")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.wheels and not Path(args.wheels).is_dir():
        print(
            f"error: WHEELS={args.wheels!r} is not a folder (it should hold the wheels to install offline)",
            file=sys.stderr,
        )
        return 2
    plan = steps(args.wheels, args.iters)
    if args.dry_run:
        for step in plan:
            print(
                f"{step.name:8s} {'CUDA' if step.needs_cuda else 'any ':4s} <= {step.budget_s:3d} s  "
                f"{' '.join(step.command)}"
            )
        return 0
    deadline = time.perf_counter() + args.budget
    records: list[dict] = []
    cuda = None
    for i, step in enumerate(plan):
        if step.needs_cuda and cuda is None:
            cuda = _cuda_available()
        if step.needs_cuda and not cuda:
            print(
                f"\nstop: step '{step.name}' ({step.what}) needs a CUDA device and torch sees none.\n"
                "On a GPU machine this would run:",
                file=sys.stderr,
            )
            for later in plan[i:]:
                print(f"  {later.name:8s} {' '.join(later.command)}", file=sys.stderr)
            return EXIT_NO_CUDA
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            records.append(
                {
                    "step": step.name,
                    "command": " ".join(step.command),
                    "rc": "not run: out of time",
                    "seconds": 0.0,
                    "budget_s": step.budget_s,
                }
            )
            continue
        records.append(run_step(step, min(remaining, step.budget_s * 1.5)))
        if step.name in ("install", "cuda") and records[-1]["rc"] != 0:
            print(f"error: step '{step.name}' failed (rc {records[-1]['rc']}); later steps need it", file=sys.stderr)
            break
    failed = [r["step"] for r in records if r["rc"] != 0]
    status = "all steps passed" if not failed and len(records) == len(plan) else f"failed or not run: {failed}"
    _write_log(records, status, args.out)
    print(f"\ngpu-check: {status}; log in {args.out / 'gpu-check-cuda.md'}")
    return 0 if status == "all steps passed" else 1


if __name__ == "__main__":
    sys.exit(main())
