"""bank_class_logsumexp: per-class log-sum-exp of query-bank similarities.

out[n, c] = log sum_{m: bank_labels[m] = c} exp(query[n] . bank[m] / T); -inf for a class with no entry.
Labels outside [0, C) (-1 marks an empty slot) take part in nothing. Differentiable w.r.t. query; the bank is a
constant (a memory bank), it gets no gradient. The N x M similarity matrix is never stored.

Triton design: the bank is first grouped by class (a sort of M labels and one gather of the bank, no host sync),
so each program runs, per class, a flash-attention style online log-sum-exp (running row max and sum, exp2) over
that class's rows only. Compared with one running row max and a one-hot value matrix, this is exact for every
class however far its scores lie below the row maximum (no exp underflow to a false -inf), and it needs no
P @ one-hot GEMM; the price is <= C partly filled tiles per row block and the O(M D) grouping copy.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._dispatch import (
    INTERPRET,
    acc_dtype,
    check_count,
    check_device,
    check_float,
    check_index,
    check_positive,
    chunk_rows,
    exp_,
    logsumexp_,
    next_pow2,
    resolve_impl,
)
from ._tiles import Launcher, common_dtype, configs, dot_precision, dot_tile, group_bank, rows_times_tile, tl, triton

OP = "bank_class_logsumexp"
LOG2E = 1.4426950408889634

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


# --- chunked torch (CPU fast path) ---


def sort_bank(bank: Tensor, bank_labels: Tensor, num_classes: int, scale: float, dt: torch.dtype):
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


class ChunkedClassLSE(torch.autograd.Function):
    """Per class, row chunks of query @ bank_c.T (contiguous, so logsumexp runs at full speed; a slice of a wider
    score matrix would not). Saves only the (N, C) output and the grouped bank."""

    @staticmethod
    def forward(ctx, query: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, temperature: float):
        dt = acc_dtype(query, bank)
        rows, labels, offsets = sort_bank(bank.detach(), bank_labels, num_classes, 1.0 / temperature, dt)
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
    out_ptr,  # (N, C) float32
    N,
    D,
    C,
    scale,  # log2(e) / T: the scores in log2 units
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """One program per BLOCK_N queries; per class an online log-sum-exp over that class's bank tiles."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_mask = rows < N
    for c in range(0, C):
        start = tl.load(off_ptr + c)
        end = tl.load(off_ptr + c + 1)
        m_i = tl.full((BLOCK_N,), float("-inf"), tl.float32)  # running max (log2 units)
        l_i = tl.zeros((BLOCK_N,), tl.float32)  # running sum of 2^(s - m_i)
        for m0 in range(start, end, BLOCK_M):
            cols = m0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
            col_mask = cols < end
            s = dot_tile(q_ptr, rows, row_mask, b_ptr, cols, col_mask, D, BLOCK_N, BLOCK_M, BLOCK_D, UPCAST, PREC)
            s = tl.where(col_mask[None, :], s * scale, float("-inf"))  # (BLOCK_N, BLOCK_M)
            m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile holds a slot of the class
            l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), 1)
            m_i = m_new
        # l_i >= 1 for a class with a slot (its maximum adds 2^0); an empty class keeps m_i = -inf and gives -inf.
        lse = (m_i + tl.log2(tl.maximum(l_i, 1.0))) * 0.6931471805599453  # log2 -> natural log
        tl.store(out_ptr + rows.to(tl.int64) * C + c, lse, mask=row_mask)


@triton.jit
def _lse_bwd_kernel(
    q_ptr,  # (N, D)
    b_ptr,  # (M, D) grouped by class
    off_ptr,  # (C + 1,) int32
    out_ptr,  # (N, C) float32, the forward output
    gout_ptr,  # (N, C) float32, d loss / d out
    gq_ptr,  # (N, D) float32, d loss / d query
    N,
    D,
    C,
    scale,  # log2(e) / T
    inv_t,  # 1 / T
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """grad_q[n, d-block] = sum_c gout[n, c] sum_{m in c} exp(s[n, m] - out[n, c]) bank[m, d-block] / T."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_mask = rows < N
    d_out = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)  # (BLOCK_DO,)
    acc = tl.zeros((BLOCK_N, BLOCK_DO), tl.float32)
    for c in range(0, C):
        start = tl.load(off_ptr + c)
        end = tl.load(off_ptr + c + 1)
        lse = tl.load(out_ptr + rows.to(tl.int64) * C + c, mask=row_mask, other=0.0) * 1.4426950408889634
        g = tl.load(gout_ptr + rows.to(tl.int64) * C + c, mask=row_mask, other=0.0)  # (BLOCK_N,)
        for m0 in range(start, end, BLOCK_M):
            cols = m0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
            col_mask = cols < end
            s = dot_tile(q_ptr, rows, row_mask, b_ptr, cols, col_mask, D, BLOCK_N, BLOCK_M, BLOCK_D, UPCAST, PREC)
            s = tl.where(col_mask[None, :], s * scale, float("-inf"))  # (BLOCK_N, BLOCK_M)
            w = tl.exp2(s - lse[:, None]) * g[:, None]  # softmax within the class x grad
            acc += rows_times_tile(w, b_ptr, cols, col_mask, d_out, D, UPCAST, PREC)
    mask = row_mask[:, None] & (d_out[None, :] < D)
    tl.store(gq_ptr + rows.to(tl.int64)[:, None] * D + d_out[None, :], acc * inv_t, mask=mask)


_BLOCKS = ({"BLOCK_N": 64, "BLOCK_M": 64, "BLOCK_D": 64}, {"BLOCK_N": 128, "BLOCK_M": 64, "BLOCK_D": 64},
           {"BLOCK_N": 64, "BLOCK_M": 128, "BLOCK_D": 64}, {"BLOCK_N": 128, "BLOCK_M": 128, "BLOCK_D": 64})
_FWD = Launcher(
    _lse_fwd_kernel,
    configs(*[(b, w, st) for b in _BLOCKS for w, st in ((4, 3), (8, 3))]),
    key=["D", "C"],
    interpret=lambda kw: {"BLOCK_N": 16, "BLOCK_M": 16, "BLOCK_D": 16},
)
_BWD = Launcher(
    _lse_bwd_kernel,
    configs(*[({**b, "BLOCK_M": 64}, w, 2) for b in _BLOCKS[:2] for w in (4, 8)]),
    key=["D", "C", "BLOCK_DO"],
    interpret=lambda kw: {"BLOCK_N": 16, "BLOCK_M": 16, "BLOCK_D": 16},
)


class TritonClassLSE(torch.autograd.Function):
    """Fused forward and backward; saves the (N, C) output and the grouped bank, nothing of size N x M."""

    @staticmethod
    def forward(ctx, query: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, temperature: float):
        dt = common_dtype(query, bank)
        q = query.detach().to(dt).contiguous()  # (N, D)
        rows, offsets = group_bank(bank, bank_labels, num_classes, dt)  # (M, D), (C + 1,)
        out = torch.empty(q.shape[0], num_classes, dtype=torch.float32, device=q.device)  # (N, C)
        if q.shape[0]:
            grid = lambda meta: (triton.cdiv(q.shape[0], meta["BLOCK_N"]),)  # noqa: E731
            _FWD[grid](q, rows, offsets, out, q.shape[0], q.shape[1], num_classes, LOG2E / temperature,
                       UPCAST=INTERPRET, PREC=dot_precision(dt))
        ctx.save_for_backward(q, rows, offsets, out)
        ctx.temperature, ctx.input_dtype = temperature, query.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, rows, offsets, out = ctx.saved_tensors
        n, d = q.shape
        grad = torch.zeros(n, d, dtype=torch.float32, device=q.device)  # (N, D)
        block_do = min(next_pow2(d), 32 if INTERPRET else 128)
        if n:
            grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(d, block_do))  # noqa: E731
            _BWD[grid](q, rows, offsets, out, grad_out.float().contiguous(), grad, n, d, out.shape[1],
                       LOG2E / ctx.temperature, 1.0 / ctx.temperature, BLOCK_DO=block_do, UPCAST=INTERPRET,
                       PREC=dot_precision(q.dtype))
        return grad.to(ctx.input_dtype), None, None, None, None


# --- public op ---


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
        impl: "auto", "triton", "torch" (reference) or "chunked".
    Returns:
        (N, C) float32: out[n, c] = log sum_{m in class c} exp(query[n] . bank[m] / T), -inf for an empty class.
    """
    check_float(OP, "query", query, 2)
    check_float(OP, "bank", bank, 2)
    check_device(OP, "bank", bank, query.device)
    if bank.shape[1] != query.shape[1]:
        raise ValueError(f"{OP}: bank must have D = {query.shape[1]} columns like query, got {tuple(bank.shape)}")
    check_index(OP, "bank_labels", bank_labels, (bank.shape[0],), query.device)
    check_count(OP, "num_classes", num_classes, 1)
    temperature = check_positive(OP, "temperature", temperature)
    impl = resolve_impl(impl, query.device, OP)
    if impl == "torch":
        return bank_class_logsumexp_reference(query, bank, bank_labels, num_classes, temperature)
    if impl == "triton":
        return TritonClassLSE.apply(query, bank, bank_labels, num_classes, temperature)
    return ChunkedClassLSE.apply(query, bank, bank_labels, num_classes, temperature)
