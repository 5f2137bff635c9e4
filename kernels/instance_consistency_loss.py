"""instance_consistency_loss: cross-entropy between a class-weighted weak-view target and the strong view.

With s_w = weak . bank / T and s_s = strong . bank / T over the valid slots m (label in [0, C)):
    t[n, m] = exp(s_w[n, m]) * class_weights[n, label[m]] / Z_n          (the target, no gradient)
    loss[n] = -sum_m t[n, m] log softmax_m(s_s[n, m]) = LSE_m(s_s[n]) - sum_m t[n, m] s_s[n, m]
A row whose target is empty (Z_n = 0: no valid slot, or zero weight on every present class) has loss 0.
Differentiable w.r.t. strong only: d loss[n] / d strong[n] = sum_m (softmax_m(s_s) - t[n, m]) bank[m] / T.
Neither pass stores an N x M matrix: the chunked backward recomputes the strong logits from a saved (N,) LSE and
an (N, D) target mean; the Triton backward recomputes both logits from two saved (N,) statistics.

Triton design: the bank is grouped by class (see bank_class_logsumexp), so class_weights[n, label m] is one per-row
value per class segment; one pass keeps three online sums per row (strong log-sum-exp; target normaliser;
target-weighted strong logit), flash-attention style in exp2. The weak and strong query tiles stay in registers
and each bank tile is read once for both dots; the bank is split over several programs when the row blocks are
too few for the GPU (a torch step merges the per-split states); the backward accumulates all D columns at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_device, check_float, check_index, check_positive
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

_OP = "instance_consistency_loss"
_LOG2E = 1.4426950408889634

# --- torch reference ---


def instance_consistency_loss_reference(
    weak: Tensor, strong: Tensor, bank: Tensor, bank_labels: Tensor, class_weights: Tensor, temperature: float
) -> Tensor:
    """Plain torch over the full (N, M) logits; autograd gives the backward.

    Args:
        weak, strong: (N, D) float.  bank: (M, D).  bank_labels: (M,) int, -1 = empty slot.
        class_weights: (N, C) >= 0.  temperature: T > 0.
    Returns:
        (N,) float32 (float64 for float64 inputs).
    """
    dt = acc_dtype(weak, strong, bank, class_weights)
    num_classes = class_weights.shape[1]
    valid = (bank_labels >= 0) & (bank_labels < num_classes)
    rows, labels = bank[valid].detach().to(dt), bank_labels[valid].long()  # (Mv, D), (Mv,)
    weights = class_weights.detach().to(dt)[:, labels]  # (N, Mv)
    with torch.no_grad():
        target = torch.softmax(weak.to(dt) @ rows.T / temperature + weights.log(), dim=1)  # (N, Mv)
        target = torch.nan_to_num(target, nan=0.0)  # empty target row: all -inf -> nan -> 0
    log_p = torch.log_softmax(strong.to(dt) @ rows.T / temperature, dim=1)  # (N, Mv)
    return -(target * log_p).sum(dim=1)


# --- CPU path: chunked torch ---


_LOG_ZERO = -1e4  # log of a zero class weight inside the GEMM (-inf would make 0 * -inf = NaN): exp() gives 0


def _prepare(weak, strong, bank, bank_labels, class_weights, temperature):
    """The valid slots, scaled by 1/T, with the class log-weights folded into the GEMM: [weak | log w] @
    [bank / T | one_hot(label)]^T = weak . bank / T + log w[label], no (R, M) gather.

    Returns:
        weak_ext (N, D + C), strong (N, D), rows (Mv, D), rows_ext_t (D + C, Mv), empty (N, 1) bool: rows whose
        target has no mass (no valid slot, or zero weight on every class present).
    """
    dt = acc_dtype(weak, strong, bank, class_weights)
    num_classes = class_weights.shape[1]
    valid = (bank_labels >= 0) & (bank_labels < num_classes)
    labels = bank_labels[valid].long()  # (Mv,)
    rows = bank.detach()[valid].to(dt) / temperature  # (Mv, D), carries the 1/T
    onehot = torch.nn.functional.one_hot(labels, num_classes).to(dt)  # (Mv, C)
    rows_ext_t = torch.cat([rows, onehot], 1).T.contiguous()  # (D + C, Mv)
    cw = class_weights.detach().to(dt)  # (N, C)
    weak_ext = torch.cat([weak.detach().to(dt), cw.log().clamp_min_(_LOG_ZERO)], 1)  # (N, D + C)
    present = onehot.sum(0) > 0  # (C,)
    empty = ~((cw > 0) & present).any(1, keepdim=True)  # (N, 1)
    return weak_ext, strong.detach().to(dt), rows, rows_ext_t, empty


class _ChunkedInstanceLoss(torch.autograd.Function):
    """Row chunks forward and backward; saves (N,) and (N, D) row statistics, nothing of size N x M.

    With t the target and p = softmax(strong logits), d loss / d strong = (p - t) @ bank / T. The t @ bank / T half
    depends on the weak view only: the forward stores it (tb, (N, D)), so the backward recomputes the strong
    logits alone. tb also gives the loss's cross term: sum_m t s = strong . tb.
    """

    @staticmethod
    def forward(ctx, weak, strong, bank, bank_labels, class_weights, temperature):
        weak_ext, s, rows, rows_ext_t, empty = _prepare(weak, strong, bank, bank_labels, class_weights, temperature)
        n = s.shape[0]
        tb = torch.zeros_like(s)  # (N, D) sum_m t[n, m] bank[m] / T
        lse_s = torch.zeros(n, 1, dtype=s.dtype, device=s.device)  # (N, 1)
        rows_t = rows_ext_t[: s.shape[1]]  # (D, Mv) view
        step = chunk_rows(2 * rows.shape[0])
        for st in range(0, n if rows.shape[0] else 0, step):  # no valid slot: every target is empty
            sl = slice(st, st + step)
            a = weak_ext[sl] @ rows_ext_t  # (R, Mv) target log-weights
            t = exp_(a.sub_(a.amax(1, keepdim=True)))  # (R, Mv) unnormalised target
            tb[sl] = (t @ rows).div_(t.sum(1, keepdim=True))
            lse_s[sl] = logsumexp_(s[sl] @ rows_t)
        tb.masked_fill_(empty, 0.0)
        loss = (lse_s - (s * tb).sum(1, keepdim=True)).masked_fill_(empty, 0.0).squeeze(1)  # (N,)
        ctx.save_for_backward(strong, rows, lse_s, tb, empty)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        strong, rows, lse_s, tb, empty = ctx.saved_tensors
        s = strong.detach().to(rows.dtype)  # (N, D)
        g = grad_loss.to(rows.dtype).unsqueeze(1).masked_fill(empty, 0.0)  # (N, 1): an empty target has grad 0
        grad = -tb * g  # (N, D): the target half
        rows_t = rows.T.contiguous()  # (D, Mv)
        step = chunk_rows(rows.shape[0])
        for st in range(0, s.shape[0] if rows.shape[0] else 0, step):
            sl = slice(st, st + step)
            p = exp_((s[sl] @ rows_t).sub_(lse_s[sl]))  # (R, Mv) softmax of the strong logits
            grad[sl] += (p @ rows).mul_(g[sl])
        return None, grad.to(strong.dtype), None, None, None, None


# --- Triton kernels ---


@triton.jit
def _log2_weight(ptr, mask):
    """log2 of a class-weight column; -inf for a zero weight (without a log of 0)."""
    w = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    return tl.where(w > 0, tl.log2(tl.where(w > 0, w, 1.0)), float("-inf"))


@triton.jit
def _two_scores(
    wq,
    sq,
    w_ptr,
    s_ptr,
    rows,
    row_mask,
    b_ptr,
    cols,
    col_mask,
    d,
    D,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """(weak, strong) scores (BLOCK_N, BLOCK_M) against one bank tile: half inputs read the tile once and dot it with
    both resident query tiles; float32 goes in D chunks (see d_blocks)."""
    if BLOCK_K == BLOCK_D:
        bt = load_cols(b_ptr, cols, col_mask, d, D, UPCAST)  # (BLOCK_D, BLOCK_M)
        sw = tl.dot(wq, bt, input_precision=PREC)
        ss = tl.dot(sq, bt, input_precision=PREC)
    else:
        sw = chunked_scores(w_ptr, rows, row_mask, b_ptr, cols, col_mask, D, BLOCK_N, BLOCK_M, BLOCK_K, UPCAST, PREC)
        ss = chunked_scores(s_ptr, rows, row_mask, b_ptr, cols, col_mask, D, BLOCK_N, BLOCK_M, BLOCK_K, UPCAST, PREC)
    return sw, ss


@triton.jit
def _inst_fwd_kernel(
    w_ptr,  # (N, D) weak
    s_ptr,  # (N, D) strong
    b_ptr,  # (M, D) bank grouped by class
    off_ptr,  # (C + 1,) int32 class c = bank rows off[c]:off[c + 1]
    cw_ptr,  # (N, C) class weights
    part_ptr,  # (5, SPLITS, N) float32 per-split states: strong max, sum; target max, sum; weighted strong logit
    N,
    D,
    C,
    SPLITS,
    scale,  # log2(e) / T
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """Program (row block, split): one pass over the split's bank tiles, all in log2 units."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_mask = rows < N
    split = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    if BLOCK_K == BLOCK_D:  # half inputs: both query tiles stay in registers
        wq = load_rows(w_ptr, rows, row_mask, d, D, UPCAST)  # (BLOCK_N, BLOCK_D)
        sq = load_rows(s_ptr, rows, row_mask, d, D, UPCAST)
    else:  # float32: chunks re-read from memory (see d_blocks)
        wq = 0.0
        sq = 0.0
    m_s = tl.full((BLOCK_N,), float("-inf"), tl.float32)  # strong: running max, sum
    l_s = tl.zeros((BLOCK_N,), tl.float32)
    m_a = tl.full((BLOCK_N,), float("-inf"), tl.float32)  # target a = weak logit + log2 weight: max, sum
    l_a = tl.zeros((BLOCK_N,), tl.float32)
    acc = tl.zeros((BLOCK_N,), tl.float32)  # sum 2^(a - m_a) * strong logit
    for c in range(0, C):
        first, end, stride = class_tiles(off_ptr, c, split, SPLITS, BLOCK_M)
        log_w = _log2_weight(cw_ptr + rows.to(tl.int64) * C + c, row_mask)  # (BLOCK_N,)
        for m0 in range(first, end, stride):
            cols = m0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
            col_mask = cols < end
            sw, ss = _two_scores(
                wq,
                sq,
                w_ptr,
                s_ptr,
                rows,
                row_mask,
                b_ptr,
                cols,
                col_mask,
                d,
                D,
                BLOCK_N,
                BLOCK_M,
                BLOCK_D,
                BLOCK_K,
                UPCAST,
                PREC,
            )
            ss = ss * scale
            a = tl.where(col_mask[None, :], sw * scale + log_w[:, None], float("-inf"))
            m_new = tl.maximum(m_s, tl.max(tl.where(col_mask[None, :], ss, float("-inf")), 1))
            p = tl.where(col_mask[None, :], tl.exp2(ss - m_new[:, None]), 0.0)
            l_s = l_s * tl.exp2(m_s - m_new) + tl.sum(p, 1)
            m_s = m_new
            m_new = tl.maximum(m_a, tl.max(a, 1))
            safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no target mass yet: keep zeros, not NaN
            t = tl.exp2(a - safe[:, None])  # (BLOCK_N, BLOCK_M), 0 off the class or at zero weight
            rescale = tl.exp2(m_a - safe)
            l_a = l_a * rescale + tl.sum(t, 1)
            acc = acc * rescale + tl.sum(t * tl.where(col_mask[None, :], ss, 0.0), 1)
            m_a = m_new
    out = split * N + rows  # (BLOCK_N,)
    stride_k = SPLITS * N
    tl.store(part_ptr + out, m_s, mask=row_mask)
    tl.store(part_ptr + stride_k + out, l_s, mask=row_mask)
    tl.store(part_ptr + 2 * stride_k + out, m_a, mask=row_mask)
    tl.store(part_ptr + 3 * stride_k + out, l_a, mask=row_mask)
    tl.store(part_ptr + 4 * stride_k + out, acc, mask=row_mask)


@triton.jit
def _inst_bwd_kernel(
    w_ptr,  # (N, D) weak
    s_ptr,  # (N, D) strong
    b_ptr,  # (M, D) bank grouped by class
    off_ptr,  # (C + 1,) int32
    cw_ptr,  # (N, C) class weights
    stats_ptr,  # (2, N) float32 from the forward: strong LSE, target LSE (log2 units; -inf: empty target)
    gl_ptr,  # (N,) float32 d loss_total / d loss
    gs_ptr,  # (SPLITS, N, D) float32 per-split d loss_total / d strong
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
    """grad_strong[n, cols] = g[n] sum_m (softmax_m(strong logits) - t[n, m]) bank[m, cols] / T.

    Program (row block, split, column block of BLOCK_DO); half inputs: one column block holding all of D.
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_mask = rows < N
    split = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    d_out = tl.program_id(2) * BLOCK_DO + tl.arange(0, BLOCK_DO)  # (BLOCK_DO,)
    if BLOCK_K == BLOCK_D:
        wq = load_rows(w_ptr, rows, row_mask, d, D, UPCAST)  # (BLOCK_N, BLOCK_D), resident
        sq = load_rows(s_ptr, rows, row_mask, d, D, UPCAST)
    lse_s = tl.load(stats_ptr + rows, mask=row_mask, other=0.0)  # (BLOCK_N,)
    lse_a = tl.load(stats_ptr + N + rows, mask=row_mask, other=float("-inf"))
    has_t = lse_a > float("-inf")
    g = tl.where(has_t, tl.load(gl_ptr + rows, mask=row_mask, other=0.0), 0.0)  # an empty target: loss 0, grad 0
    lse_a = tl.where(has_t, lse_a, 0.0)
    acc = tl.zeros((BLOCK_N, BLOCK_DO), tl.float32)
    for c in range(0, C):
        first, end, stride = class_tiles(off_ptr, c, split, SPLITS, BLOCK_M)
        log_w = _log2_weight(cw_ptr + rows.to(tl.int64) * C + c, row_mask)  # (BLOCK_N,)
        for m0 in range(first, end, stride):
            cols = m0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
            col_mask = cols < end
            if BLOCK_K == BLOCK_D:
                bt = load_cols(b_ptr, cols, col_mask, d, D, UPCAST)  # (BLOCK_D, BLOCK_M), read once for all dots
                sw = tl.dot(wq, bt, input_precision=PREC)  # (BLOCK_N, BLOCK_M)
                ss = tl.dot(sq, bt, input_precision=PREC)
            else:
                sw = chunked_scores(
                    w_ptr, rows, row_mask, b_ptr, cols, col_mask, D, BLOCK_N, BLOCK_M, BLOCK_K, UPCAST, PREC
                )
                ss = chunked_scores(
                    s_ptr, rows, row_mask, b_ptr, cols, col_mask, D, BLOCK_N, BLOCK_M, BLOCK_K, UPCAST, PREC
                )
            p = tl.exp2(tl.where(col_mask[None, :], ss * scale, float("-inf")) - lse_s[:, None])
            t = tl.exp2(tl.where(col_mask[None, :], sw * scale + log_w[:, None], float("-inf")) - lse_a[:, None])
            if BLOCK_DO != BLOCK_D or BLOCK_K != BLOCK_D:
                bt = load_cols(b_ptr, cols, col_mask, d_out, D, UPCAST)  # (BLOCK_DO, BLOCK_M)
            w = ((p - t) * g[:, None]).to(bt.dtype)  # (BLOCK_N, BLOCK_M)
            acc = tl.dot(w, tl.trans(bt), acc, input_precision=PREC)  # (BLOCK_N, BLOCK_DO)
    out = (split * N + rows).to(tl.int64)[:, None] * D + d_out[None, :]
    tl.store(gs_ptr + out, acc * inv_t, mask=row_mask[:, None] & (d_out[None, :] < D))


# Kept configs: half inputs on tensor cores (two resident query tiles), float32 ("ieee", FMA units) with smaller
# tiles; the static check (benchmarks/kernels_static.py) shows none of them spills on sm_80 / sm_90 / sm_100 at
# D = 256. (64, 64, 4 or 8 warps, 3 stages) spilled on sm_80 in the forward and were dropped.
_FWD_HALF = configs(
    ({"BLOCK_N": 64, "BLOCK_M": 32}, 4, 3),
    ({"BLOCK_N": 64, "BLOCK_M": 64}, 8, 2),
    ({"BLOCK_N": 64, "BLOCK_M": 64}, 4, 2),
    ({"BLOCK_N": 128, "BLOCK_M": 64}, 8, 2),
)
_FWD_FP32 = configs(({"BLOCK_N": 16, "BLOCK_M": 64}, 4, 2))  # (16 or 32, 32) spill on sm_80
_BWD_HALF = configs(({"BLOCK_N": 64, "BLOCK_M": 32}, 8, 2), ({"BLOCK_N": 32, "BLOCK_M": 64}, 4, 2))
_BWD_FP32 = configs(({"BLOCK_N": 16, "BLOCK_M": 32}, 4, 2))  # (16, 64) spills on sm_80
_FWD = Launcher(
    _inst_fwd_kernel,
    _FWD_HALF + _FWD_FP32,
    key=["D", "C", "PREC"],
    prune=by_precision(_FWD_HALF, _FWD_FP32),
    interpret=lambda kw: {"BLOCK_N": 16, "BLOCK_M": 16},
    tensor_cores=True,
)
_BWD = Launcher(
    _inst_bwd_kernel,
    _BWD_HALF + _BWD_FP32,
    key=["D", "C", "PREC"],
    prune=by_precision(_BWD_HALF, _BWD_FP32),
    interpret=lambda kw: {"BLOCK_N": 16, "BLOCK_M": 16},
    tensor_cores=True,
)


def _combine(part: Tensor) -> tuple[Tensor, Tensor]:
    """Merge the (5, S, N) per-split states: loss (N,) and the backward's (2, N) statistics (log2 units)."""
    m_s, l_s, m_a, l_a, acc = part.unbind(0)  # (S, N) each
    top_s, sum_s = combine_lse2(m_s, l_s)  # (N,)
    top_a, sum_a = combine_lse2(m_a, l_a)
    safe_a = torch.where(torch.isinf(top_a), torch.zeros_like(top_a), top_a)
    weighted = (acc * torch.exp2(m_a - safe_a)).sum(0)  # (N,) sum_m 2^(a - top_a) strong logit
    has_t = sum_a > 0
    lse_s = top_s + torch.log2(sum_s.clamp_min(1.0))  # >= 1 once a slot was seen (its maximum adds 2^0)
    lse_a = torch.where(has_t, top_a + torch.log2(torch.where(has_t, sum_a, 1.0)), float("-inf"))
    loss = torch.where(has_t, (lse_s - weighted / torch.where(has_t, sum_a, 1.0)) / _LOG2E, 0.0)
    return loss, torch.stack([lse_s, lse_a])


# --- autograd Function ---


class _TritonInstanceLoss(torch.autograd.Function):
    """Fused forward and backward; saves two (N,) row statistics and the grouped bank."""

    @staticmethod
    def forward(ctx, weak, strong, bank, bank_labels, class_weights, temperature):
        dt = common_dtype(weak, strong, bank)
        w = weak.detach().to(dt).contiguous()  # (N, D)
        s = strong.detach().to(dt).contiguous()  # (N, D)
        cw = class_weights.detach().contiguous()  # (N, C)
        rows, offsets = group_bank(bank, bank_labels, cw.shape[1], dt)  # (M, D), (C + 1,)
        n, d = s.shape
        splits = bank_splits(n, triton.cdiv(rows.shape[0], 64), s.device)
        part = torch.empty(5, splits, n, dtype=torch.float32, device=s.device)  # (5, S, N)
        if n:
            grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), splits)  # noqa: E731
            blocks = d_blocks(dt, d)
            _FWD[grid](
                w,
                s,
                rows,
                offsets,
                cw,
                part,
                n,
                d,
                cw.shape[1],
                splits,
                _LOG2E / temperature,
                BLOCK_D=blocks["BLOCK_D"],
                BLOCK_K=blocks["BLOCK_K"],
                UPCAST=INTERPRET,
                PREC=dot_precision(dt),
            )
        loss, stats = _combine(part)  # (N,), (2, N)
        ctx.save_for_backward(w, s, rows, offsets, cw, stats.contiguous())
        ctx.temperature, ctx.input_dtype, ctx.splits = temperature, strong.dtype, splits
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        w, s, rows, offsets, cw, stats = ctx.saved_tensors
        n, d = s.shape
        grad = torch.zeros(ctx.splits, n, d, dtype=torch.float32, device=s.device)  # (S, N, D)
        if n:
            blocks = d_blocks(s.dtype, d)
            grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), ctx.splits, triton.cdiv(d, blocks["BLOCK_DO"]))  # noqa: E731
            _BWD[grid](
                w,
                s,
                rows,
                offsets,
                cw,
                stats,
                grad_loss.float().contiguous(),
                grad,
                n,
                d,
                cw.shape[1],
                ctx.splits,
                _LOG2E / ctx.temperature,
                1.0 / ctx.temperature,
                **blocks,
                UPCAST=INTERPRET,
                PREC=dot_precision(s.dtype),
            )
        grad = grad[0] if ctx.splits == 1 else grad.sum(0)  # (N, D)
        return None, grad.to(ctx.input_dtype), None, None, None, None


# --- public op ---


def _check_args(weak, strong, bank, bank_labels, class_weights, temperature) -> float:
    """ValueError naming the argument on misuse; returns the temperature as a float."""
    check_float(_OP, "weak", weak, 2)
    check_float(_OP, "strong", strong, 2)
    check_float(_OP, "bank", bank, 2)
    check_float(_OP, "class_weights", class_weights, 2)
    dev = strong.device
    for name, t in (("weak", weak), ("bank", bank), ("class_weights", class_weights)):
        check_device(_OP, name, t, dev)
    if weak.shape != strong.shape:
        raise ValueError(
            f"{_OP}: weak and strong must have the same shape, got {tuple(weak.shape)} and {tuple(strong.shape)}"
        )
    if bank.shape[1] != strong.shape[1]:
        raise ValueError(f"{_OP}: bank must have D = {strong.shape[1]} columns like strong, got {tuple(bank.shape)}")
    if class_weights.shape[0] != strong.shape[0] or class_weights.shape[1] < 1:
        raise ValueError(
            f"{_OP}: class_weights must have shape ({strong.shape[0]}, C >= 1), got {tuple(class_weights.shape)}"
        )
    check_index(_OP, "bank_labels", bank_labels, (bank.shape[0],), dev)
    return check_positive(_OP, "temperature", temperature)


def instance_consistency_loss(
    weak: Tensor,
    strong: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    class_weights: Tensor,
    temperature: float,
    impl: str = "auto",
) -> Tensor:
    """Per-pixel instance consistency loss of the strong view against the weak view's class-weighted target.

    Args:
        weak: (N, D) float, the weak-view embeddings (a target: no gradient).
        strong: (N, D) float, the strong-view embeddings (differentiable).
        bank: (M, D) float (constant).
        bank_labels: (M,) int64 in [0, C); -1 (any value outside [0, C)) = empty slot.
        class_weights: (N, C) float >= 0, e.g. the weak view's class probabilities.
        temperature: T > 0.
        impl: "auto", "triton", "torch" (reference) or "chunked" (Triton needs D <= 256; wider: chunked).
    Returns:
        (N,) float32 loss per row (0 where the target is empty).
    """
    temperature = _check_args(weak, strong, bank, bank_labels, class_weights, temperature)
    impl = resolve_impl(impl, strong.device, _OP)
    if impl == "torch":
        return instance_consistency_loss_reference(weak, strong, bank, bank_labels, class_weights, temperature)
    if impl == "triton" and strong.shape[1] <= MAX_D:
        return _TritonInstanceLoss.apply(weak, strong, bank, bank_labels, class_weights, temperature)
    return _ChunkedInstanceLoss.apply(weak, strong, bank, bank_labels, class_weights, temperature)
