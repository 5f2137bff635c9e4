"""class_feature_sums: per-class sum and count of feature rows (prototype updates).

sums[c] = sum_{n: labels[n] = c} features[n], counts[c] = #{n: labels[n] = c}. Labels outside [0, C) and
ignore_index are skipped. Differentiable w.r.t. features (d sums[c] / d features[n] = 1 when labels[n] = c).
The Triton kernel reduces a block of rows with a one-hot GEMM per program and writes one partial per program
(no per-pixel atomics, deterministic); a tiny torch sum adds the partials.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_count, check_float, check_index
from ._dispatch import INTERPRET, acc_dtype, chunk_rows, next_pow2, resolve_impl
from ._tiles import Launcher, by_precision, configs, dot_precision, num_programs, tl, triton

_OP = "class_feature_sums"
_MAX_CLASSES = 128  # the (C, BLOCK_D) accumulator lives in registers; more classes: the chunked torch path

# --- torch reference ---


def _valid(labels: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    return (labels >= 0) & (labels < num_classes) & (labels != ignore_index)  # (N,) bool


def class_feature_sums_reference(
    features: Tensor, labels: Tensor, num_classes: int, ignore_index: int = 255
) -> tuple[Tensor, Tensor]:
    """Plain torch: index_add_ and bincount over the kept rows (autograd gives the backward).

    Args:
        features: (N, D) float.  labels: (N,) int.  num_classes: C.  ignore_index: skipped label.
    Returns:
        sums (C, D) float32 (float64 for float64 inputs), counts (C,) int64.
    """
    keep = _valid(labels, num_classes, ignore_index)
    kept = labels[keep].long()
    dt = acc_dtype(features)
    sums = features.new_zeros(num_classes, features.shape[1], dtype=dt).index_add(0, kept, features[keep].to(dt))
    return sums, torch.bincount(kept, minlength=num_classes)


# --- CPU path: chunked torch ---


class _ChunkedClassSums(torch.autograd.Function):
    """one_hot(labels)^T @ features per row chunk: a GEMM (C + 1 rows, the last one for skipped labels) instead of
    index_add_ and bincount, which scale badly on two threads. Counts are the one-hot's row sums (exact: a chunk
    has far fewer than 2^24 rows). The backward is a gather."""

    @staticmethod
    def forward(ctx, features: Tensor, labels: Tensor, num_classes: int, ignore_index: int):
        dt = acc_dtype(features)
        keep = _valid(labels, num_classes, ignore_index)  # (N,)
        target = torch.where(keep, labels.long(), num_classes)  # (N,); skipped rows go to a spare row
        sums = features.new_zeros(num_classes + 1, features.shape[1], dtype=dt)  # (C + 1, D)
        counts = torch.zeros(num_classes + 1, dtype=torch.int64, device=features.device)  # (C + 1,)
        step = chunk_rows(num_classes + 1)
        for s in range(0, features.shape[0], step):
            chunk = target[s : s + step]  # (R,)
            onehot = features.new_zeros(num_classes + 1, chunk.shape[0], dtype=dt).scatter_(0, chunk[None], 1.0)
            sums.addmm_(onehot, features[s : s + step].to(dt))  # (C + 1, R) @ (R, D)
            counts += onehot.sum(1).long()
        ctx.save_for_backward(target)
        ctx.input_dtype = features.dtype
        return sums[:num_classes], counts[:num_classes]

    @staticmethod
    def backward(ctx, grad_sums: Tensor, grad_counts: Tensor | None):
        (target,) = ctx.saved_tensors
        padded = torch.cat([grad_sums, grad_sums.new_zeros(1, grad_sums.shape[1])])  # (C + 1, D)
        return padded[target].to(ctx.input_dtype), None, None, None


# --- Triton kernel ---


@triton.jit
def _sums_kernel(
    f_ptr,  # (N, D) features
    lab_ptr,  # (N,) int labels
    part_ptr,  # (G, C, D) float32 per-program partial sums
    cnt_ptr,  # (G, C_PAD) int32 per-program counts
    N,
    D,
    C,
    ignore_index,
    G,  # programs along axis 0 (persistent: each takes every G-th row block)
    C_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """Program (g, d-block): one_hot(labels)^T @ features over its row blocks, one partial written, no atomics."""
    g = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    cls = tl.arange(0, C_PAD)  # (C_PAD,)
    acc = tl.zeros((C_PAD, BLOCK_D), tl.float32)
    count = tl.zeros((C_PAD,), tl.int32)
    for start in range(g * BLOCK_N, N, G * BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        row_mask = rows < N
        lab = tl.load(lab_ptr + rows, mask=row_mask, other=-1)  # (BLOCK_N,)
        keep = row_mask & (lab >= 0) & (lab < C) & (lab != ignore_index)
        onehot = (lab[:, None] == cls[None, :]) & keep[:, None]  # (BLOCK_N, C_PAD)
        f = tl.load(
            f_ptr + rows.to(tl.int64)[:, None] * D + d[None, :], mask=row_mask[:, None] & (d[None, :] < D), other=0.0
        )  # (BLOCK_N, BLOCK_D)
        if UPCAST:  # the interpreter has no bf16 arithmetic
            acc = tl.dot(tl.trans(onehot.to(tl.float32)), f.to(tl.float32), acc, input_precision=PREC)
        else:  # 0/1 is exact in every float type: tensor cores for half features, exact fp32 products ("ieee")
            acc = tl.dot(tl.trans(onehot.to(f.dtype)), f, acc, input_precision=PREC)
        count += tl.sum(onehot.to(tl.int32), 0)
    out = part_ptr + g.to(tl.int64) * C * D + cls[:, None] * D + d[None, :]
    tl.store(out, acc, mask=(cls[:, None] < C) & (d[None, :] < D))
    if tl.program_id(1) == 0:
        tl.store(cnt_ptr + g * C_PAD + cls, count)


# Half features: the one-hot GEMM on tensor cores. float32 ("ieee", exact sums) runs on the FMA units, which hold
# the dot's operands in registers: row blocks of 32-64 (128-row blocks spilled on sm_80, benchmarks/kernels_static.py).
_HALF = configs(
    ({"BLOCK_N": 128, "BLOCK_D": 64}, 4, 3),
    ({"BLOCK_N": 256, "BLOCK_D": 64}, 8, 3),
    ({"BLOCK_N": 128, "BLOCK_D": 128}, 8, 3),
)
_FP32 = configs(
    ({"BLOCK_N": 32, "BLOCK_D": 64}, 4, 2),
    ({"BLOCK_N": 32, "BLOCK_D": 128}, 8, 2),
    ({"BLOCK_N": 64, "BLOCK_D": 64}, 8, 2),
)
_SUMS = Launcher(
    _sums_kernel,
    _HALF + _FP32,
    key=["D", "C_PAD", "PREC"],
    prune=by_precision(_HALF, _FP32),
    interpret=lambda kw: {"BLOCK_N": 32, "BLOCK_D": 32},
)


# --- autograd Function ---


class _TritonClassSums(torch.autograd.Function):
    """Deterministic partial sums (one per program) added by torch; the backward is a gather."""

    @staticmethod
    def forward(ctx, features: Tensor, labels: Tensor, num_classes: int, ignore_index: int):
        f = features.detach().contiguous()  # (N, D)
        lab = labels.contiguous()  # (N,)
        n, d = f.shape
        # Persistent grid: enough programs to fill the GPU, few enough that the partials stay small.
        g = max(1, min(num_programs(f.device), triton.cdiv(n, 128)))
        c_pad = next_pow2(num_classes)
        part = torch.empty(g, num_classes, d, dtype=torch.float32, device=f.device)  # (G, C, D)
        cnt = torch.empty(g, c_pad, dtype=torch.int32, device=f.device)  # (G, C_PAD)
        grid = lambda meta: (g, triton.cdiv(d, meta["BLOCK_D"]))  # noqa: E731
        _SUMS[grid](
            f,
            lab,
            part,
            cnt,
            n,
            d,
            num_classes,
            ignore_index,
            g,
            C_PAD=c_pad,
            UPCAST=INTERPRET,
            PREC=dot_precision(f.dtype),
        )
        ctx.save_for_backward(lab)
        ctx.num_classes, ctx.ignore_index, ctx.input_dtype = num_classes, ignore_index, features.dtype
        return part.sum(0), cnt.sum(0)[:num_classes].long()

    @staticmethod
    def backward(ctx, grad_sums: Tensor, grad_counts: Tensor | None):
        (lab,) = ctx.saved_tensors
        keep = _valid(lab, ctx.num_classes, ctx.ignore_index)
        target = torch.where(keep, lab.long(), ctx.num_classes)  # (N,)
        padded = torch.cat([grad_sums, grad_sums.new_zeros(1, grad_sums.shape[1])])  # (C + 1, D)
        return padded[target].to(ctx.input_dtype), None, None, None


# --- public op ---


def _check_args(features, labels, num_classes, ignore_index) -> None:
    """ValueError naming the argument on misuse."""
    check_float(_OP, "features", features, 2)
    check_index(_OP, "labels", labels, (features.shape[0],), features.device)
    check_count(_OP, "num_classes", num_classes, 1)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"{_OP}: ignore_index must be an int, got {ignore_index!r}")


def class_feature_sums(
    features: Tensor, labels: Tensor, num_classes: int, ignore_index: int = 255, impl: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Per-class sums and counts of feature rows.

    Args:
        features: (N, D) float16/bfloat16/float32 (differentiable).
        labels: (N,) int64 class per row; ignore_index and values outside [0, C) are skipped.
        num_classes: C >= 1.
        ignore_index: label to skip.
        impl: "auto", "triton", "torch" (reference) or "chunked".
    Returns:
        sums (C, D) float32, counts (C,) int64.
    """
    _check_args(features, labels, num_classes, ignore_index)
    impl = resolve_impl(impl, features.device, _OP)
    if impl == "torch":
        return class_feature_sums_reference(features, labels, num_classes, ignore_index)
    if impl == "triton" and num_classes <= _MAX_CLASSES and features.shape[0] > 0:
        return _TritonClassSums.apply(features, labels, num_classes, ignore_index)
    return _ChunkedClassSums.apply(features, labels, num_classes, ignore_index)
