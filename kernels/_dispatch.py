"""Implementation selection shared by the ops, and the small helpers of their torch paths.

Every op takes ``impl="auto" | "triton" | "torch"``:

- ``"torch"``: the plain reference (readable, materialises what it likes; the tests' ground truth).
- ``"triton"``: the fused Triton kernel; needs CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
- ``"auto"``: Triton on CUDA tensors, otherwise the chunked torch path (the fastest CPU option, bounded memory).
- ``"chunked"`` (also accepted): force the chunked torch path on any device (benchmarks, tests).

``use_impl(name)`` sets what ``"auto"`` means inside a ``with`` block (the training loop's ``--kernels`` flag and the
tests use it); an explicit ``impl=`` argument other than ``"auto"`` still wins.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

import torch
from torch import Tensor

try:  # Triton is a Linux-only dependency: without it the torch paths still work.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None
    HAS_TRITON = False

# Read once: Triton decides between compiling and interpreting when a kernel is decorated (at import).
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
IMPLS = ("auto", "triton", "torch", "chunked")
# Chunked torch path: rows per chunk such that one (chunk, M) float32 temporary stays under this many bytes.
# Big enough that per-op costs vanish (each torch op on 2 threads waits for both; on a loaded 2-core machine
# that wait is a scheduler slice, ~10 ms), small enough that the peak stays O(chunk x M): ~130 MB at
# N = 20,000, M = 30,000 where the N x M matrix is 2.4 GB. Single-threaded, 4 MB and 32 MB chunks time alike.
CHUNK_BYTES = 32 * 2**20
# exp() of anything below this is subnormal in float32 (or 0): on x86 that path is ~10x slower, and such terms
# are far below the float32 resolution of a sum that contains its maximum (exp(0) = 1).
EXP_FLOOR = -87.0

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("udaseg_kernels_impl", default=None)
# Set by _tiles.record_launches: Triton launches are recorded, not run, so the Triton path may run on any device.
recording_flag: contextvars.ContextVar[bool] = contextvars.ContextVar("udaseg_kernels_recording", default=False)


@contextlib.contextmanager
def use_impl(name: str) -> Iterator[None]:
    """Make ``impl="auto"`` resolve to ``name`` inside the block.

    Args:
        name: "auto", "triton", "torch" or "chunked".
    """
    if name not in IMPLS:
        raise ValueError(f"use_impl: name must be one of {IMPLS}, got {name!r}")
    token = _forced.set(None if name == "auto" else name)
    try:
        yield
    finally:
        _forced.reset(token)


def triton_runs_on(device: torch.device) -> bool:
    """True when Triton kernels can run on tensors of ``device`` (CUDA, or any device when interpreting)."""
    return HAS_TRITON and (device.type == "cuda" or INTERPRET or recording_flag.get())


def resolve_impl(impl: str, device: torch.device, op: str) -> str:
    """Turn the ``impl`` argument into "triton", "torch" or "chunked" for tensors on ``device``.

    Args:
        impl: the op's ``impl`` argument.
        device: where the inputs live.
        op: the op's name, for error messages.
    Returns:
        The implementation to run.
    """
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = _forced.get() or ("triton" if HAS_TRITON and device.type == "cuda" else "chunked")
    if impl == "triton" and not triton_runs_on(device):
        why = "triton is not installed" if not HAS_TRITON else f"tensors are on {device} and TRITON_INTERPRET != 1"
        raise ValueError(f"{op}: impl='triton' cannot run here: {why}")
    return impl


# --- helpers of the torch paths ---


def acc_dtype(*tensors: Tensor) -> torch.dtype:
    """Accumulation dtype: float64 when any input is float64 (reference checks), float32 otherwise."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def exp_(x: Tensor) -> Tensor:
    """In-place exp of a scratch chunk, arguments floored at EXP_FLOOR (-inf becomes exp(-87), not 0)."""
    return x.clamp_min_(EXP_FLOOR).exp_()


def logsumexp_(x: Tensor) -> Tensor:
    """Row logsumexp of a (R, W) scratch chunk of finite values, which it overwrites. Returns (R, 1)."""
    peak = x.amax(1, keepdim=True)
    return exp_(x.sub_(peak)).sum(1, keepdim=True).log_().add_(peak)


def chunk_rows(width: int, budget: int = CHUNK_BYTES) -> int:
    """Rows per chunk so that a (rows, width) float32 temporary stays under ``budget`` bytes."""
    return max(1, budget // (4 * max(width, 1)))


def next_pow2(n: int, low: int = 16) -> int:
    """Smallest power of two >= max(n, low) (Triton block sizes; tl.dot needs >= 16)."""
    return max(low, 1 << (max(n, 1) - 1).bit_length())
