"""bank_class_logsumexp: per-class log-sum-exp of query-bank similarities.

out[n, c] = log sum_{m: bank_labels[m] = c} exp(query[n] . bank[m] / T); -inf for a class with no entry.
Labels outside [0, C) (-1 marks an empty slot) take part in nothing. Differentiable w.r.t. query; the bank is a
constant (a memory bank), it gets no gradient. The N x M similarity matrix is never stored.

Triton design: the bank is first grouped by class (a sort of M labels and one gather of the bank, no host sync),
so each program runs, per class, a flash-attention style online log-sum-exp (running row max and sum, exp2) over
that class's rows only. Compared with one running row max and a one-hot value matrix, this is exact for every
class however far its scores lie below the row maximum (no exp underflow to a false -inf), and it needs no
P @ one-hot GEMM; the price is <= C partly filled tiles per row block and the O(M D) grouping copy.
The query tile (BLOCK_N, D) stays in registers across all bank tiles (D <= MAX_D; wider: the chunked path). When
the row blocks are too few to fill the GPU, each row block's bank is split over several programs (each takes
every SPLITS-th tile of every class) and a small torch step merges their (max, sum) states. The backward keeps a
(BLOCK_N, D) gradient accumulator, so each score tile is computed once, not once per output column block.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_count, check_device, check_float, check_index, check_positive
from ._dispatch import INTERPRET, acc_dtype, chunk_rows, exp_, logsumexp_, resolve_impl
from ._tiles import (
    MAX_D,
    Launcher,
    bank_splits,
    by_precision,
    chunked_scores,
    class_tiles,
    combine_lse2,
    common_dtype,
    configs,
    d_blocks,
    dot_precision,
    group_bank,
    load_cols,
    load_rows,
    tl,
    triton,
)

_OP = "bank_class_logsumexp"
_LOG2E = 1.4426950408889634

# --- torch reference ---


def bank_class_logsumexp_reference(
    query: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, temperature: float
) -> Tensor:
    """Plain torch: the full (N, M) logits, one masked logsumexp per class (autograd gives the backward).

    Args:
        query: (N, D) float.  bank: (M, D) float.  bank_labels: (M,) int, -1 = empty slot.
        num_classes: C.  temperature: T > 0.
    Returns:
        (N, C) float32 (float64 for float64 inputs).
    """
    dt = acc_dtype(query, bank)
    logits = query.to(dt) @ bank.to(dt).detach().T / temperature  # (N, M)
    cols = [torch.logsumexp(logits[:, bank_labels == c], dim=1) for c in range(num_classes)]
    return torch.stack(cols, dim=1) if cols else logits.new_zeros(query.shape[0], 0)


# --- CPU path: chunked torch ---


def _sort_bank(bank: Tensor, bank_labels: Tensor, num_classes: int, scale: float, dt: torch.dtype):
    """Keep the valid slots, grouped by class (a host sync: the chunked path only).

    Returns:
        bank (Mv, D) in dt, multiplied by scale; labels (Mv,) int64 ascending; offsets, a list of C + 1 ints
        (class c is rows offsets[c]:offsets[c + 1]).
    """
    valid = (bank_labels >= 0) & (bank_labels < num_classes)
    labels = bank_labels[valid].long()
    labels, order = torch.sort(labels, stable=True)
    rows = bank[valid][order].to(dt) * scale  # (Mv, D)
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    return rows, labels, offsets


def _class_slices(rows: Tensor, offsets: list[int]) -> list[tuple[int, Tensor, Tensor]]:
    """(class, rows (Mc, D), rows.T contiguous (D, Mc)) for each class with a slot."""
    parts = []
    for c in range(len(offsets) - 1):
        if offsets[c + 1] > offsets[c]:
            part = rows[offsets[c] : offsets[c + 1]]
            parts.append((c, part, part.T.contiguous()))
    return parts


class _ChunkedClassLSE(torch.autograd.Function):
    """Per class, row chunks of query @ bank_c.T (contiguous, so logsumexp runs at full speed; a slice of a wider
    score matrix would not). Saves only the (N, C) output and the grouped bank."""

    @staticmethod
    def forward(ctx, query: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, temperature: float):
        dt = acc_dtype(query, bank)
        rows, labels, offsets = _sort_bank(bank.detach(), bank_labels, num_classes, 1.0 / temperature, dt)
        q = query.detach().to(dt)  # (N, D)
        out = q.new_full((q.shape[0], num_classes), float("-inf"))  # (N, C)
        for c, _, part_t in _class_slices(rows, offsets):
            step = chunk_rows(part_t.shape[1])
            for s in range(0, q.shape[0], step):
                out[s : s + step, c : c + 1] = logsumexp_(q[s : s + step] @ part_t)
        ctx.save_for_backward(query, rows, out)
        ctx.offsets = offsets
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        query, rows, out = ctx.saved_tensors
        q = query.detach().to(rows.dtype)  # (N, D)
        grad = torch.zeros_like(q)  # (N, D)
        for c, part, part_t in _class_slices(rows, ctx.offsets):
            step = chunk_rows(part_t.shape[1])
            for s in range(0, q.shape[0], step):
                sl = slice(s, s + step)
                # d out[n, c] / d logit[n, m] = softmax within class c = exp(logit - out[n, c]).
                weight = exp_((q[sl] @ part_t).sub_(out[sl, c : c + 1])).mul_(grad_out[sl, c : c + 1])  # (R, Mc)
                grad[sl] += weight @ part
        return grad.to(query.dtype), None, None, None, None


# --- Triton kernels ---


@triton.jit
def _lse_fwd_kernel(
    q_ptr,  # (N, D)
    b_ptr,  # (M, D) grouped by class
    off_ptr,  # (C + 1,) int32 class c = bank rows off[c]:off[c + 1]
    pm_ptr,  # (SPLITS, N, C) float32 per-split running max (log2 units)
    pl_ptr,  # (SPLITS, N, C) float32 per-split sum of 2^(s - max)
    N,
    D,
    C,
    SPLITS,
    scale,  # log2(e) / T: the scores in log2 units
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """Program (row block, split): per class an online log-sum-exp over the split's share of the class's tiles."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_mask = rows < N
    split = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    if BLOCK_K == BLOCK_D:  # half inputs: the query tile stays in registers, one tensor-core dot per bank tile
        q = load_rows(q_ptr, rows, row_mask, d, D, UPCAST)  # (BLOCK_N, BLOCK_D)
    out = (split * N + rows).to(tl.int64) * C  # (BLOCK_N,)
    for c in range(0, C):
        first, end, stride = class_tiles(off_ptr, c, split, SPLITS, BLOCK_M)
        m_i = tl.full((BLOCK_N,), float("-inf"), tl.float32)  # running max (log2 units)
        l_i = tl.zeros((BLOCK_N,), tl.float32)  # running sum of 2^(s - m_i)
        for m0 in range(first, end, stride):
            cols = m0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
            col_mask = cols < end
            if BLOCK_K == BLOCK_D:
                s = tl.dot(q, load_cols(b_ptr, cols, col_mask, d, D, UPCAST), input_precision=PREC)
            else:
                s = chunked_scores(
                    q_ptr, rows, row_mask, b_ptr, cols, col_mask, D, BLOCK_N, BLOCK_M, BLOCK_K, UPCAST, PREC
                )
            s = tl.where(col_mask[None, :], s * scale, float("-inf"))  # (BLOCK_N, BLOCK_M)
            m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile holds a slot of the class
            l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), 1)
            m_i = m_new
        tl.store(pm_ptr + out + c, m_i, mask=row_mask)  # a split without a tile of c: -inf and 0
        tl.store(pl_ptr + out + c, l_i, mask=row_mask)


@triton.jit
def _lse_bwd_kernel(
    q_ptr,  # (N, D)
    b_ptr,  # (M, D) grouped by class
    off_ptr,  # (C + 1,) int32
    out_ptr,  # (N, C) float32, the forward output
    gout_ptr,  # (N, C) float32, d loss / d out
    gq_ptr,  # (SPLITS, N, D) float32, per-split d loss / d query
    N,
    D,
    C,
    SPLITS,
    scale,  # log2(e) / T
    inv_t,  # 1 / T
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """grad_q[n, cols] = sum_c gout[n, c] sum_{m in c} exp(s[n, m] - out[n, c]) bank[m, cols] / T.

    Program (row block, split, column block of BLOCK_DO); half inputs: one column block holding all of D.
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_mask = rows < N
    split = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    d_out = tl.program_id(2) * BLOCK_DO + tl.arange(0, BLOCK_DO)  # (BLOCK_DO,)
    if BLOCK_K == BLOCK_D:
        q = load_rows(q_ptr, rows, row_mask, d, D, UPCAST)  # (BLOCK_N, BLOCK_D), resident
    acc = tl.zeros((BLOCK_N, BLOCK_DO), tl.float32)
    for c in range(0, C):
        first, end, stride = class_tiles(off_ptr, c, split, SPLITS, BLOCK_M)
        lse = tl.load(out_ptr + rows.to(tl.int64) * C + c, mask=row_mask, other=0.0) * 1.4426950408889634
        g = tl.load(gout_ptr + rows.to(tl.int64) * C + c, mask=row_mask, other=0.0)  # (BLOCK_N,)
        for m0 in range(first, end, stride):
            cols = m0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
            col_mask = cols < end
            if BLOCK_K == BLOCK_D:
                bt = load_cols(b_ptr, cols, col_mask, d, D, UPCAST)  # (BLOCK_D, BLOCK_M), read once
                s = tl.dot(q, bt, input_precision=PREC)
            else:
                s = chunked_scores(
                    q_ptr, rows, row_mask, b_ptr, cols, col_mask, D, BLOCK_N, BLOCK_M, BLOCK_K, UPCAST, PREC
                )
            s = tl.where(col_mask[None, :], s * scale, float("-inf"))  # (BLOCK_N, BLOCK_M)
            w = tl.exp2(s - lse[:, None]) * g[:, None]  # softmax within the class x grad
            if BLOCK_DO != BLOCK_D or BLOCK_K != BLOCK_D:
                bt = load_cols(b_ptr, cols, col_mask, d_out, D, UPCAST)  # (BLOCK_DO, BLOCK_M)
            acc = tl.dot(w.to(bt.dtype), tl.trans(bt), acc, input_precision=PREC)  # (BLOCK_N, BLOCK_DO)
    out = (split * N + rows).to(tl.int64)[:, None] * D + d_out[None, :]
    tl.store(gq_ptr + out, acc * inv_t, mask=row_mask[:, None] & (d_out[None, :] < D))


# Kept configs: half inputs on tensor cores, float32 ("ieee", FMA units) with smaller tiles; the static check
# (benchmarks/kernels_static.py) shows none of them spills on sm_80 / sm_90 / sm_100 at D = 256.
_FWD_HALF = configs(
    ({"BLOCK_N": 64, "BLOCK_M": 64}, 4, 3),
    ({"BLOCK_N": 128, "BLOCK_M": 64}, 8, 3),
    ({"BLOCK_N": 64, "BLOCK_M": 128}, 8, 3),
)
_FWD_FP32 = configs(({"BLOCK_N": 32, "BLOCK_M": 32}, 4, 2), ({"BLOCK_N": 64, "BLOCK_M": 32}, 8, 2))  # (32, 64) spills

_BWD_HALF = configs(({"BLOCK_N": 64, "BLOCK_M": 64}, 8, 2), ({"BLOCK_N": 64, "BLOCK_M": 32}, 4, 2))
_BWD_FP32 = configs(({"BLOCK_N": 16, "BLOCK_M": 64}, 4, 2))  # (16, 32, 4 warps) and (32, 32, 8) spill on sm_80
_FWD = Launcher(
    _lse_fwd_kernel,
    _FWD_HALF + _FWD_FP32,
    key=["D", "C", "PREC"],
    prune=by_precision(_FWD_HALF, _FWD_FP32),
    interpret=lambda kw: {"BLOCK_N": 16, "BLOCK_M": 16},
    tensor_cores=True,
)
_BWD = Launcher(
    _lse_bwd_kernel,
    _BWD_HALF + _BWD_FP32,
    key=["D", "C", "PREC"],
    prune=by_precision(_BWD_HALF, _BWD_FP32),
    interpret=lambda kw: {"BLOCK_N": 16, "BLOCK_M": 16},
    tensor_cores=True,
)

# --- autograd Function ---


class _TritonClassLSE(torch.autograd.Function):
    """Fused forward and backward; saves the (N, C) output and the grouped bank, nothing of size N x M."""

    @staticmethod
    def forward(ctx, query: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, temperature: float):
        dt = common_dtype(query, bank)
        q = query.detach().to(dt).contiguous()  # (N, D)
        rows, offsets = group_bank(bank, bank_labels, num_classes, dt)  # (M, D), (C + 1,)
        n, d = q.shape
        splits = bank_splits(n, triton.cdiv(rows.shape[0], 64), q.device)
        f32 = dict(dtype=torch.float32, device=q.device)
        pm, pl = torch.empty(splits, n, num_classes, **f32), torch.empty(splits, n, num_classes, **f32)
        if n:
            grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), splits)  # noqa: E731
            blocks = d_blocks(dt, d)
            _FWD[grid](
                q,
                rows,
                offsets,
                pm,
                pl,
                n,
                d,
                num_classes,
                splits,
                _LOG2E / temperature,
                BLOCK_D=blocks["BLOCK_D"],
                BLOCK_K=blocks["BLOCK_K"],
                UPCAST=INTERPRET,
                PREC=dot_precision(dt),
            )
        top, total = combine_lse2(pm, pl)  # (N, C) each
        out = (top + torch.log2(total)) / _LOG2E  # an empty class: -inf + -inf = -inf
        ctx.save_for_backward(q, rows, offsets, out)
        ctx.temperature, ctx.input_dtype, ctx.splits = temperature, query.dtype, splits
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, rows, offsets, out = ctx.saved_tensors
        n, d = q.shape
        grad = torch.zeros(ctx.splits, n, d, dtype=torch.float32, device=q.device)  # (S, N, D)
        if n:
            blocks = d_blocks(q.dtype, d)
            grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), ctx.splits, triton.cdiv(d, blocks["BLOCK_DO"]))  # noqa: E731
            _BWD[grid](
                q,
                rows,
                offsets,
                out,
                grad_out.float().contiguous(),
                grad,
                n,
                d,
                out.shape[1],
                ctx.splits,
                _LOG2E / ctx.temperature,
                1.0 / ctx.temperature,
                **blocks,
                UPCAST=INTERPRET,
                PREC=dot_precision(q.dtype),
            )
        grad = grad[0] if ctx.splits == 1 else grad.sum(0)  # (N, D)
        return grad.to(ctx.input_dtype), None, None, None, None


# --- public op ---


def _check_args(query, bank, bank_labels, num_classes, temperature) -> float:
    """ValueError naming the argument on misuse; returns the temperature as a float."""
    check_float(_OP, "query", query, 2)
    check_float(_OP, "bank", bank, 2)
    check_device(_OP, "bank", bank, query.device)
    if bank.shape[1] != query.shape[1]:
        raise ValueError(f"{_OP}: bank must have D = {query.shape[1]} columns like query, got {tuple(bank.shape)}")
    check_index(_OP, "bank_labels", bank_labels, (bank.shape[0],), query.device)
    check_count(_OP, "num_classes", num_classes, 1)
    return check_positive(_OP, "temperature", temperature)


def bank_class_logsumexp(
    query: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    temperature: float,
    impl: str = "auto",
) -> Tensor:
    """Per-class log-sum-exp of the scaled similarities of each query with the bank.

    Args:
        query: (N, D) float16/bfloat16/float32 (differentiable).
        bank: (M, D) float (constant: no gradient).
        bank_labels: (M,) int64 class of each slot in [0, C); -1 (any value outside [0, C)) = empty slot.
        num_classes: C >= 1.
        temperature: T > 0.
        impl: "auto", "triton", "torch" (reference) or "chunked" (Triton needs D <= 256; wider: chunked).
    Returns:
        (N, C) float32: out[n, c] = log sum_{m in class c} exp(query[n] . bank[m] / T), -inf for an empty class.
    """
    temperature = _check_args(query, bank, bank_labels, num_classes, temperature)
    impl = resolve_impl(impl, query.device, _OP)
    if impl == "torch":
        return bank_class_logsumexp_reference(query, bank, bank_labels, num_classes, temperature)
    if impl == "triton" and query.shape[1] <= MAX_D:
        return _TritonClassLSE.apply(query, bank, bank_labels, num_classes, temperature)
    return _ChunkedClassLSE.apply(query, bank, bank_labels, num_classes, temperature)
