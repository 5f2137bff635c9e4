"""benchmarks/gpu_check.py (make gpu-check) on a machine without CUDA: it runs the machine-independent steps, then
stops at the first step that needs CUDA with exit code 3 and says what it would have run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    env.pop("WHEELS", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU dry run; this machine has CUDA")
def test_stops_at_the_first_cuda_step_and_says_what_it_would_run(tmp_path):
    done = _run("--out", str(tmp_path))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "=== install" in done.stdout, "the install/import check runs on any machine"
    assert "stop: step 'cuda'" in done.stderr and "needs a CUDA device" in done.stderr
    for later in (
        "pytest -q -m gpu",
        "bench_kernels.py --device cuda",
        "bench_step.py --size paper",
        "udaseg.train --method dida+cpsl --kernels triton --iters 300 --warmup-iters 0 --set train.amp=true",
        "profile_model.py --models daformer_mitb5,deeplabv2_r101",
    ):
        assert later in done.stderr, f"the stop message should list {later!r}"
    assert not list(tmp_path.iterdir()), "a stopped dry run writes no results"


def test_dry_run_lists_every_step_with_its_budget():
    done = _run("--dry-run")
    assert done.returncode == 0, done.stderr
    names = [line.split()[0] for line in done.stdout.splitlines()]
    assert names == ["install", "cuda", "pytest", "kernels", "step", "train", "profile"]
    budgets = [int(line.split("<=")[1].split()[0]) for line in done.stdout.splitlines()]
    assert sum(budgets) <= 480, "the steps' budgets must fit the 8 minutes"


def test_missing_wheels_folder_is_a_clear_error(tmp_path):
    done = _run("--wheels", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "not a folder" in done.stderr
