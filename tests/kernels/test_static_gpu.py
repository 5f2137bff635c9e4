"""The static GPU check (benchmarks/kernels_static.py): a representative subset compiled ahead of time for sm_90
with Triton's own ptxas, no GPU; and the verdict rules on crafted rows (a spill, too much shared memory, a half
bank GEMM without tensor cores must each fail)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from udaseg.kernels import _dispatch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "kernels_static.py"


def _ptxas() -> Path | None:
    if not _dispatch.HAS_TRITON:
        return None
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return path if path.exists() else None


needs_ptxas = pytest.mark.skipif(_ptxas() is None, reason="Triton's bundled ptxas (backends/nvidia/bin) is not found")


def _row(**change) -> dict:
    row = {
        "op": "bank_class_logsumexp",
        "kernel": "_lse_fwd_kernel",
        "dtype": "bfloat16",
        "tensor_cores": True,
        "spill_stores": 0,
        "spill_loads": 0,
        "local_bytes": 0,
        "shared_bytes": 64 * 1024,
        "tc_kind": "wgmma",
    }
    return {**row, **change}


@pytest.fixture(scope="module")
def static():
    sys.path.insert(0, str(SCRIPT.parent))
    env_before = os.environ.get("TRITON_INTERPRET")
    try:
        import kernels_static  # pops TRITON_INTERPRET at import: put it back for the other tests

        return kernels_static
    finally:
        if env_before is not None:
            os.environ["TRITON_INTERPRET"] = env_before
        sys.path.remove(str(SCRIPT.parent))


@pytest.mark.parametrize(
    "change, expected",
    [
        ({}, []),
        ({"spill_stores": 16, "spill_loads": 16}, ["spills"]),
        ({"local_bytes": 8}, ["spills"]),
        ({"shared_bytes": 240 * 1024}, ["shared memory"]),
        ({"tc_kind": "none"}, ["tensor-core"]),
        ({"tc_kind": "none", "dtype": "float32"}, []),  # float32 bank GEMMs use exact FMA products by design
        ({"tc_kind": "none", "tensor_cores": False}, []),  # not a bank GEMM
        ({"error": "CompilationError: ValueError: j is already defined"}, ["compile error"]),
    ],
)
def test_verdict_rules(static, change, expected):
    found = static.problems(_row(**change), 90)
    assert len(found) == len(expected) and all(e in f for e, f in zip(expected, found)), found


def test_shared_memory_limit_depends_on_the_arch(static):
    row = _row(shared_bytes=200 * 1024)  # fits an H100 (227 KB per block), not an A100 (163 KB)
    assert static.problems(row, 90) == []
    assert "shared memory" in static.problems(row, 80)[0]


@needs_ptxas
def test_subset_compiles_for_sm90_without_spills_and_on_tensor_cores(tmp_path):
    # The class log-sum-exp forward and backward, bf16 (tensor cores) and float32 (FMA path), one kept config
    # each, compiled for sm_90 in a process without TRITON_INTERPRET (the script drops it itself).
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--subset", "--ops", "bank_class_logsumexp", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    kernels = {(r["kernel"], r["dtype"]) for r in rows}
    assert kernels == {(k, d) for k in ("_lse_fwd_kernel", "_lse_bwd_kernel") for d in ("bfloat16", "float32")}
    for r in rows:
        assert r["arch"] == "sm_90" and not r["problems"], r
        assert r["spill_stores"] == 0 and r["registers"] <= 255
        if r["dtype"] == "bfloat16":
            assert r["tc_kind"] == "wgmma" and "HGMMA" in r["sass_tc"], r
        else:
            assert r["tc_kind"] == "none"  # exact float32 ("ieee") products on the FMA units, by design
