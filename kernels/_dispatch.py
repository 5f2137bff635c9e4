"""Implementation selection and argument checks shared by the six ops.

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
import math
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
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int64, torch.int32)
# Chunked torch path: rows per chunk such that one (chunk, M) float32 temporary stays under this many bytes.
# Big enough that per-op costs vanish (each torch op on 2 threads waits for both; on a loaded 2-core machine
# that wait is a scheduler slice, ~10 ms), small enough that the peak stays O(chunk x M): ~130 MB at
# N = 20,000, M = 30,000 where the N x M matrix is 2.4 GB. Single-threaded, 4 MB and 32 MB chunks time alike.
CHUNK_BYTES = 32 * 2**20
# exp() of anything below this is subnormal in float32 (or 0): on x86 that path is ~10x slower, and such terms
# are far below the float32 resolution of a sum that contains its maximum (exp(0) = 1).
EXP_FLOOR = -87.0

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("udaseg_kernels_impl", default=None)


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
    return HAS_TRITON and (device.type == "cuda" or INTERPRET)


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


# --- argument checks: every failure is a ValueError that names the argument ---


def check_float(op: str, name: str, t: object, ndim: int) -> Tensor:
    """Check that ``t`` is a floating tensor with ``ndim`` dimensions; return it."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def check_index(op: str, name: str, t: object, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Check that ``t`` is an int64/int32 tensor of ``shape`` on ``device``; return it."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in INDEX_DTYPES:
        raise ValueError(f"{op}: {name} must be int64 (or int32), got {t.dtype}")
    check_shape(op, name, t, shape)
    check_device(op, name, t, device)
    return t


def check_shape(op: str, name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    """Raise if ``t.shape != shape``."""
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_device(op: str, name: str, t: Tensor, device: torch.device) -> None:
    """Raise if ``t`` is not on ``device``."""
    if t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device} but the other inputs are on {device}")


def check_positive(op: str, name: str, value: object) -> float:
    """Check that ``value`` is a finite number > 0; return it as a float."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{op}: {name} must be a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{op}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_count(op: str, name: str, value: object, low: int, high: int | None = None) -> int:
    """Check that ``value`` is an int in [low, high]; return it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{op}: {name} must be an int {bound}, got {value!r}")
    return value


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
