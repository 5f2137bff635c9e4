"""Pieces shared by the Triton kernels: the launcher (autotune on a GPU, a fixed config under the interpreter),
the score tile (a row block of queries against a tile of bank rows) and the class-grouped bank layout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from ._dispatch import HAS_TRITON, INTERPRET, tl, triton

if not HAS_TRITON:  # pragma: no cover - lets the @triton.jit below decorate on machines without triton

    class _Stub:
        @staticmethod
        def jit(fn):
            return fn

        constexpr_function = jit

    triton = _Stub()  # noqa: F811


class Launcher:
    """A @triton.jit kernel, autotuned over ``configs`` on a GPU and run with one fixed config when interpreting.

    ``kernel_launcher[grid](*args, **constexprs)``: the grid is a callable of the meta-parameters in both modes.
    ``interpret`` maps the call's keyword arguments to the fixed meta-parameters (autotune needs a GPU driver).
    """

    def __init__(self, kernel, configs: list, key: list[str], interpret: Callable[[dict], dict], prune=None):
        self.fixed = interpret
        self.kernel = kernel
        if HAS_TRITON and not INTERPRET:
            prune_by = {"early_config_prune": prune} if prune is not None else None
            self.kernel = triton.autotune(configs=configs, key=key, prune_configs_by=prune_by)(kernel)

    def __getitem__(self, grid):
        if not INTERPRET:
            return self.kernel[grid]

        def run(*args, **kwargs):
            return self.kernel[grid](*args, **kwargs, **self.fixed(kwargs))

        return run


def configs(*rows: tuple) -> list:
    """GPU autotune configs from (meta-parameter dict, num_warps, num_stages) rows."""
    if not HAS_TRITON or INTERPRET:
        return []
    return [triton.Config(meta, num_warps=w, num_stages=s) for meta, w, s in rows]


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs: exact fp32 products ("ieee"; TF32 would change rankings); half inputs use tensor cores anyway."""
    return "ieee" if dtype == torch.float32 else "tf32"


def common_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype the kernels read: the inputs' own when they agree (fp16/bf16/fp32), float32 otherwise."""
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) == 1 and dtypes <= {torch.float16, torch.bfloat16, torch.float32}:
        return dtypes.pop()
    return torch.float32


@functools.lru_cache(maxsize=8)
def num_programs(device_index: int | None) -> int:
    """Persistent-grid size: 4 programs per SM on a GPU, a handful under the interpreter."""
    if INTERPRET or device_index is None:
        return 3
    return 4 * torch.cuda.get_device_properties(device_index).multi_processor_count


def group_bank(bank: Tensor, bank_labels: Tensor, num_classes: int, dtype: torch.dtype):
    """Sort the bank rows by class (stable), empty slots last; no host sync.

    Returns:
        rows (M, D) contiguous in ``dtype`` (class c occupies rows offsets[c]:offsets[c + 1]),
        offsets (C + 1,) int32 on the bank's device.
    """
    labels = bank_labels.long()
    labels = torch.where((labels >= 0) & (labels < num_classes), labels, num_classes)  # (M,) empty -> C
    labels, order = torch.sort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes + 1)[:num_classes]  # (C,)
    offsets = torch.zeros(num_classes + 1, dtype=torch.int32, device=bank.device)  # (C + 1,)
    offsets[1:] = torch.cumsum(counts, 0)
    return bank.detach()[order].to(dtype).contiguous(), offsets


@triton.jit
def dot_tile(
    a_ptr,  # (*, D) row-major
    a_rows,  # (BLOCK_A,) row indices into a
    a_mask,  # (BLOCK_A,)
    b_ptr,  # (*, D) row-major
    b_rows,  # (BLOCK_B,) row indices into b
    b_mask,  # (BLOCK_B,)
    D,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """(BLOCK_A, BLOCK_B) float32 = a[a_rows] @ b[b_rows].T, D in chunks of BLOCK_D; masked rows give 0."""
    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    a_off = a_rows.to(tl.int64) * D  # (BLOCK_A,)
    b_off = b_rows.to(tl.int64) * D  # (BLOCK_B,)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        a = tl.load(a_ptr + a_off[:, None] + d[None, :], mask=a_mask[:, None] & (d[None, :] < D), other=0.0)
        b = tl.load(b_ptr + b_off[None, :] + d[:, None], mask=b_mask[None, :] & (d[:, None] < D), other=0.0)
        if UPCAST:  # the interpreter has no bf16 arithmetic
            a = a.to(tl.float32)  # (BLOCK_A, BLOCK_D)
            b = b.to(tl.float32)  # (BLOCK_D, BLOCK_B)
        acc = tl.dot(a, b, acc, input_precision=PREC)
    return acc


@triton.jit
def rows_times_tile(
    w,  # (BLOCK_A, BLOCK_B) float32 weights
    b_ptr,  # (*, D) row-major
    b_rows,  # (BLOCK_B,)
    b_mask,  # (BLOCK_B,)
    d,  # (BLOCK_D,) the output columns
    D,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """(BLOCK_A, BLOCK_D) float32 = w @ b[b_rows][:, d] (the backward's weighted sum of bank rows)."""
    b = tl.load(b_ptr + b_rows.to(tl.int64)[:, None] * D + d[None, :], mask=b_mask[:, None] & (d[None, :] < D),
                other=0.0)  # (BLOCK_B, BLOCK_D)
    if UPCAST:
        return tl.dot(w, b.to(tl.float32), input_precision=PREC)
    return tl.dot(w.to(b.dtype), b, input_precision=PREC)
