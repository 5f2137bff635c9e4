"""Shared fixtures of the kernel tests: the implementations to compare, a closeness check that reports mismatches.

Triton kernels run here under the interpreter (``TRITON_INTERPRET=1``, set below before udaseg.kernels is
imported, because Triton chooses compile-or-interpret when a kernel is decorated; TRITON_INTERPRET=0 compiles them,
for the GPU tests). Shapes for the interpreter stay
tiny (N <= 70, M <= 80, D <= 40, plus D = 256 at N <= 40) so the whole folder runs in a few minutes on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from udaseg.kernels import _dispatch  # noqa: E402

TRITON_ON_CPU = _dispatch.HAS_TRITON and _dispatch.INTERPRET
NO_TRITON_REASON = (
    "Triton kernels need CUDA or TRITON_INTERPRET=1 set before udaseg.kernels is first imported "
    f"(triton installed: {_dispatch.HAS_TRITON}, interpreting: {_dispatch.INTERPRET})"
)


def pytest_collection_modifyitems(config, items) -> None:
    """The GPU tests check the compiled kernels: under the interpreter they would test the interpreter instead
    (and it cannot run them on CUDA tensors), so they skip, saying how to run them."""
    if not _dispatch.INTERPRET:
        return
    skip = pytest.mark.skip(
        reason="GPU tests compile the kernels, but TRITON_INTERPRET=1 is set (this folder sets it when unset): "
        "run them with TRITON_INTERPRET=0, as make gpu-check does"
    )
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(
    params=[
        "torch",
        "chunked",
        pytest.param("triton", marks=pytest.mark.skipif(not TRITON_ON_CPU, reason=NO_TRITON_REASON)),
    ]
)
def impl(request) -> str:
    """Every implementation, compared against the float64 reference (the "torch" impl run on float64 inputs)."""
    return request.param


@pytest.fixture
def need_triton() -> None:
    """Skip (with the reason) where the Triton kernels cannot run."""
    if not TRITON_ON_CPU:
        pytest.skip(NO_TRITON_REASON)


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    """assert_close after checking that -inf/inf sit in the same places; the message counts mismatches."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    same_inf = (torch.isinf(actual) == torch.isinf(expected)) & (~torch.isinf(expected) | (actual == expected))
    assert same_inf.all(), f"{what}: {(~same_inf).sum().item()} infinities differ"
    finite = torch.isfinite(expected)
    bad = (actual[finite] - expected[finite]).abs() > atol + rtol * expected[finite].abs()
    assert not torch.isnan(actual[finite]).any(), f"{what}: NaN where the reference is finite"
    worst = (actual[finite] - expected[finite]).abs().max().item() if finite.any() else 0.0
    assert not bad.any(), f"{what}: {bad.sum().item()} of {finite.sum().item()} values differ (max abs err {worst:.3g})"


@pytest.fixture
def assert_close():
    """assert_close(actual, expected, atol=1e-5, rtol=1e-5, what="") with a mismatch count in the message."""

    def check(actual, expected, atol: float = 1e-5, rtol: float = 1e-5, what: str = "") -> None:
        _close(actual, expected, atol, rtol, what)

    return check


MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, torch
    from udaseg.kernels import {op}
    torch.set_num_threads(1)  # memory does not depend on it; one thread is steadier on a shared machine
    g = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(20000, 64, generator=g), dim=1)
    bank = torch.nn.functional.normalize(torch.randn(30000, 64, generator=g), dim=1)
    labels = torch.randint(-1, 19, (30000,), generator=g)
    run = {call}
    run(query[:1])  # first-call allocations (thread pools, allocator arenas) stay outside the measurement
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = run(query)
    rows = (out[0] if isinstance(out, tuple) else out).shape[0]
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, rows)
    """
)


@pytest.fixture
def peak_extra_mb():
    """peak_extra_mb(op, call) -> MB: the peak-RSS growth of one call at N = 20,000, M = 30,000, D = 64, measured
    in a fresh process (ru_maxrss is a high-water mark, so a shared test process would hide it)."""

    def measure(op: str, call: str) -> float:
        script = MEMORY_SCRIPT.format(op=op, call=call)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # auto = the chunked CPU path
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        extra_mb, rows = done.stdout.split()
        assert int(rows) == 20000
        return float(extra_mb)

    return measure
