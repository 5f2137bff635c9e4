"""sinkhorn: balanced soft assignment of N rows to K columns (SwAV / CPSL), in log space.

Q = exp(scores / eps) normalised to total 1, then `iterations` rounds of: scale each column k to total
marginal[k], scale each row to total 1/N; return N * Q. Kept as potentials, log Q = scores / eps + u[n] + v[k]:
    v[k] = log marginal[k] - LSE_n(scores[n, k] / eps + u[n])     (columns)
    u[n] = -log N - LSE_k(scores[n, k] / eps + v[k])              (rows)
so nothing overflows for scores / eps up to 1e4. Not differentiable (the codes are targets).

Triton design: a row pass reads scores once per iteration; it computes u for its rows (a row fits one tile,
K <= 4096) and in the same pass the per-program column partials (max, sum of 2^(x + u)) for the next column
step; a tiny kernel merges the partials into v. 2 launches per iteration, the last row pass writes N * Q.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_count, check_device, check_float, check_positive
from ._dispatch import INTERPRET, acc_dtype, chunk_rows, exp_, logsumexp_, next_pow2, resolve_impl
from ._tiles import Launcher, num_programs, tl, triton

_OP = "sinkhorn"
_MAX_K = 4096  # a row of scores is one register tile; wider: the chunked torch path
_LOG2E = 1.4426950408889634

# --- torch reference ---


def sinkhorn_reference(scores: Tensor, marginal: Tensor, epsilon: float, iterations: int) -> Tensor:
    """Plain torch, log space, whole-matrix logsumexps.

    Args:
        scores: (N, K) float.  marginal: (K,) > 0, sums to 1.  epsilon: > 0.  iterations: >= 0.
    Returns:
        (N, K) float32 (float64 for float64 inputs); rows sum to 1 when iterations >= 1.
    """
    dt = acc_dtype(scores, marginal)
    logits = scores.to(dt) / epsilon  # (N, K)
    n = scores.shape[0]
    u = -torch.logsumexp(logits.flatten(), 0).expand(n)  # (N,) the initial normalisation to total 1
    v = torch.zeros(scores.shape[1], dtype=dt, device=scores.device)  # (K,)
    log_b = marginal.to(dt).log()  # (K,)
    for _ in range(iterations):
        v = log_b - torch.logsumexp(logits + u[:, None], dim=0)
        u = -math.log(n) - torch.logsumexp(logits + v[None, :], dim=1)
    return torch.exp(logits + u[:, None] + v[None, :] + math.log(n))


# --- CPU path: chunked torch ---
# Where the logits span at most _EXP_SPACE_RANGE, exp(logits - max) lies in [e^-50, 1] and no scaling below can
# leave float32's normal range (the smallest factor, ~1 / (N K), stays above e^-37 for N K < 1e16): there the
# iterations are the same arithmetic in exp space, sums and products, no exp per iteration. Wider spans (large
# scores / eps) take the log-space path.
_EXP_SPACE_RANGE = 50.0


def _sinkhorn_exp_space(q: Tensor, marginal: Tensor, iterations: int) -> Tensor:
    """q = exp(logits - max) (N, K), scaled in place: columns to marginal, rows to 1 / N; returns N * Q."""
    n = q.shape[0]
    if iterations == 0:
        return q.mul_(n / q.sum())
    for _ in range(iterations):
        q.mul_(marginal / q.sum(0))  # (K,) column totals -> marginal
        q.mul_((1.0 / n) / q.sum(1, keepdim=True))  # (N, 1) row totals -> 1 / N
    return q.mul_(n)


def _column_lse(logits: Tensor, u: Tensor, step: int) -> Tensor:
    """LSE_n(logits[n, k] + u[n]) -> (K,), accumulated over row chunks (online max and sum)."""
    peak = torch.full((logits.shape[1],), float("-inf"), dtype=logits.dtype, device=logits.device)  # (K,)
    total = torch.zeros_like(peak)  # (K,) sum of exp(x - peak)
    for s in range(0, logits.shape[0], step):
        x = logits[s : s + step] + u[s : s + step, None]  # (R, K)
        new_peak = torch.maximum(peak, x.amax(0))
        total = total * torch.exp(peak - new_peak) + exp_(x.sub_(new_peak)).sum(0)
        peak = new_peak
    return peak + total.log()


def _sinkhorn_log_space(logits: Tensor, marginal: Tensor, iterations: int) -> Tensor:
    """Potentials u (N,), v (K,) over row chunks; overwrites logits with the output."""
    n, k = logits.shape
    step = chunk_rows(k)
    log_b = marginal.log()  # (K,)
    u = torch.zeros(n, dtype=logits.dtype, device=logits.device)  # (N,)
    v = torch.zeros(k, dtype=logits.dtype, device=logits.device)  # (K,)
    if iterations == 0:  # only then does the initial normalisation survive: with a column step it cancels
        u -= torch.logsumexp(_column_lse(logits, u, step), 0)
    for _ in range(iterations):
        v = log_b - _column_lse(logits, u, step)
        for s in range(0, n, step):
            u[s : s + step] = -math.log(n) - logsumexp_(logits[s : s + step] + v).squeeze(1)
    for s in range(0, n, step):  # out = exp(logits + u + v + log N), in the logits buffer
        logits[s : s + step].add_(u[s : s + step, None]).add_(v + math.log(n)).exp_()
    return logits


def _sinkhorn_chunked(scores: Tensor, marginal: Tensor, epsilon: float, iterations: int) -> Tensor:
    """The CPU path: exp space where the logits' span allows it exactly, log space otherwise."""
    dt = acc_dtype(scores, marginal)
    logits = scores.to(dt) / epsilon  # (N, K), the only N x K buffer: it becomes the output
    low, high = torch.aminmax(logits)
    if (high - low).item() <= _EXP_SPACE_RANGE:  # host sync: fine on the CPU path
        return _sinkhorn_exp_space(logits.sub_(high).exp_(), marginal.to(dt), iterations)
    return _sinkhorn_log_space(logits, marginal.to(dt), iterations)


# --- Triton kernels ---


@triton.jit
def _rows_kernel(
    s_ptr,  # (N, K) scores
    v_ptr,  # (K,) float32 column potentials (log2 units)
    u_ptr,  # (N,) float32 row potentials (log2 units): written if COMPUTE_U, else read
    q_ptr,  # (N, K) float32 output (WRITE_Q)
    pmax_ptr,  # (G, BLOCK_K) float32 column partial max (COLS)
    psum_ptr,  # (G, BLOCK_K) float32 column partial sum of 2^(x + u - max) (COLS)
    N,
    K,
    scale,  # log2(e) / eps
    log2_n,
    G,
    COMPUTE_U: tl.constexpr,
    COLS: tl.constexpr,
    WRITE_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Persistent program g: row blocks g, g + G, ...; rows step u = -log2 N - LSE_k(x + v), then partials."""
    g = tl.program_id(0)
    k = tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    k_mask = k < K
    v = tl.load(v_ptr + k, mask=k_mask, other=0.0)  # (BLOCK_K,)
    c_max = tl.full((BLOCK_K,), float("-inf"), tl.float32)
    c_sum = tl.zeros((BLOCK_K,), tl.float32)
    for start in range(g * BLOCK_N, N, G * BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        mask = (rows < N)[:, None] & k_mask[None, :]  # (BLOCK_N, BLOCK_K)
        offs = rows.to(tl.int64)[:, None] * K + k[None, :]
        x = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32) * scale  # (BLOCK_N, BLOCK_K) log2 units
        if COMPUTE_U:
            y = tl.where(mask, x + v[None, :], float("-inf"))
            y_max = tl.max(y, 1)
            y_max = tl.where(rows < N, y_max, 0.0)  # padded rows: 0 and a sum of 1, no NaN
            y_sum = tl.where(rows < N, tl.sum(tl.exp2(y - y_max[:, None]), 1), 1.0)
            lse = y_max + tl.log2(y_sum)  # (BLOCK_N,)
            u = -log2_n - lse
            tl.store(u_ptr + rows, u, mask=rows < N)
            if WRITE_Q:
                tl.store(q_ptr + offs, tl.exp2(y - lse[:, None]), mask=mask)  # N * Q: each row sums to 1
        else:
            u = tl.load(u_ptr + rows, mask=rows < N, other=0.0)
            if WRITE_Q:
                tl.store(q_ptr + offs, tl.exp2(x + v[None, :] + u[:, None] + log2_n), mask=mask)
        if COLS:  # online column log-sum-exp of x + u over this program's rows
            z = tl.where(mask, x + u[:, None], float("-inf"))
            new = tl.maximum(c_max, tl.max(z, 0))
            safe = tl.where(new == float("-inf"), 0.0, new)
            c_sum = c_sum * tl.exp2(c_max - safe) + tl.sum(tl.exp2(z - safe[None, :]), 0)
            c_max = new
    if COLS:
        tl.store(pmax_ptr + g * BLOCK_K + k, c_max)
        tl.store(psum_ptr + g * BLOCK_K + k, c_sum)


@triton.jit
def _cols_kernel(
    pmax_ptr,  # (G, STRIDE) float32
    psum_ptr,  # (G, STRIDE) float32
    log_b_ptr,  # (K,) float32 log2 marginal
    v_ptr,  # (K,) float32 output column potentials
    G,
    K,
    STRIDE,
    BLOCK_G: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Columns step: v = log2 b - LSE over the programs' partials."""
    k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    k_mask = k < K
    c_max = tl.full((BLOCK_K,), float("-inf"), tl.float32)
    c_sum = tl.zeros((BLOCK_K,), tl.float32)
    for g0 in range(0, G, BLOCK_G):
        gi = g0 + tl.arange(0, BLOCK_G)  # (BLOCK_G,)
        mask = (gi < G)[:, None] & k_mask[None, :]
        pm = tl.load(pmax_ptr + gi[:, None] * STRIDE + k[None, :], mask=mask, other=float("-inf"))
        ps = tl.load(psum_ptr + gi[:, None] * STRIDE + k[None, :], mask=mask, other=0.0)  # (BLOCK_G, BLOCK_K)
        new = tl.maximum(c_max, tl.max(pm, 0))
        safe = tl.where(new == float("-inf"), 0.0, new)
        c_sum = c_sum * tl.exp2(c_max - safe) + tl.sum(ps * tl.exp2(pm - safe[None, :]), 0)
        c_max = new
    log_b = tl.load(log_b_ptr + k, mask=k_mask, other=0.0)
    tl.store(v_ptr + k, log_b - (c_max + tl.log2(tl.where(k_mask, c_sum, 1.0))), mask=k_mask)


# Fixed configs chosen per call from K (no autotuning: the row pass is memory-bound and its tile is one row wide).
_ROWS = Launcher(_rows_kernel, None)
_COLS = Launcher(_cols_kernel, None)


def _sinkhorn_triton(scores: Tensor, marginal: Tensor, epsilon: float, iterations: int) -> Tensor:
    """2 launches per iteration (+1), the scores read once per iteration (+1).

    Returns:
        (N, K) float32 N * Q.
    """
    n, k = scores.shape
    s = scores.contiguous()  # (N, K)
    block_k = next_pow2(k)
    # 2048-element tiles, 4 warps: 4096-element tiles on 8 warps spilled at K = 19 (benchmarks/kernels_static.py).
    block_n = 16 if INTERPRET else max(1, 2048 // block_k)
    g = max(1, min(num_programs(s.device), triton.cdiv(n, block_n)))
    f32 = dict(dtype=torch.float32, device=s.device)
    u, v = torch.zeros(n, **f32), torch.zeros(k, **f32)  # (N,), (K,) log2 units
    q = torch.empty(n, k, **f32)  # (N, K)
    pmax, psum = torch.empty(g, block_k, **f32), torch.empty(g, block_k, **f32)  # (G, BLOCK_K)
    log_b = torch.log2(marginal.float())  # (K,)
    scale, log2_n, warps = _LOG2E / epsilon, math.log2(n), 4 if block_k * block_n <= 2048 else 8

    def rows(compute_u: bool, cols: bool, write_q: bool) -> None:
        _ROWS[(g,)](
            s,
            v,
            u,
            q,
            pmax,
            psum,
            n,
            k,
            scale,
            log2_n,
            g,
            COMPUTE_U=compute_u,
            COLS=cols,
            WRITE_Q=write_q,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            num_warps=warps,
            num_stages=2,
        )

    def columns(log_marginal: Tensor) -> None:
        _COLS[(triton.cdiv(k, 128),)](
            pmax, psum, log_marginal, v, g, k, block_k, BLOCK_G=16, BLOCK_K=128, num_warps=4, num_stages=2
        )

    rows(compute_u=False, cols=True, write_q=False)  # column partials of x + 0
    if iterations == 0:  # N * exp(x - LSE_all x): v = 0, u = -LSE_all - log2 N
        columns(torch.zeros_like(log_b))  # v = -LSE_n(x) per column
        u.copy_((-torch.logsumexp(-v * math.log(2), 0) * _LOG2E).expand(n))  # no host sync
        v.zero_()
        rows(compute_u=False, cols=False, write_q=True)
        return q
    columns(log_b)
    for it in range(iterations):
        last = it == iterations - 1
        rows(compute_u=True, cols=not last, write_q=last)
        if not last:
            columns(log_b)
    return q


# --- public op ---


def _check_args(scores, marginal, epsilon, iterations) -> float:
    """ValueError naming the argument on misuse; returns epsilon as a float."""
    check_float(_OP, "scores", scores, 2)
    check_float(_OP, "marginal", marginal, 1)
    if marginal.shape[0] != scores.shape[1]:
        raise ValueError(
            f"{_OP}: marginal must have shape ({scores.shape[1]},) like scores' columns, got {tuple(marginal.shape)}"
        )
    check_device(_OP, "marginal", marginal, scores.device)
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"{_OP}: scores must be non-empty, got shape {tuple(scores.shape)}")
    check_count(_OP, "iterations", iterations, 0)
    return check_positive(_OP, "epsilon", epsilon)


def sinkhorn(scores: Tensor, marginal: Tensor, epsilon: float, iterations: int = 3, impl: str = "auto") -> Tensor:
    """Sinkhorn-Knopp soft assignment with column marginals.

    Args:
        scores: (N, K) float similarities of N rows to K prototypes/classes.
        marginal: (K,) float > 0 summing to 1, the target column totals.
        epsilon: entropy temperature > 0 (SwAV: 0.05).
        iterations: rounds of column + row scaling, >= 0 (SwAV: 3).
        impl: "auto", "triton", "torch" (reference) or "chunked".
    Returns:
        (N, K) float32, N * Q: each row sums to 1 (for iterations >= 1), column k sums to about N * marginal[k].
    """
    epsilon = _check_args(scores, marginal, epsilon, iterations)
    impl = resolve_impl(impl, scores.device, _OP)
    with torch.no_grad():
        if impl == "torch":
            return sinkhorn_reference(scores, marginal, epsilon, iterations)
        if impl == "triton":
            if scores.shape[1] <= _MAX_K:
                return _sinkhorn_triton(scores, marginal, epsilon, iterations)
        return _sinkhorn_chunked(scores, marginal, epsilon, iterations)
