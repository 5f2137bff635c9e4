"""bank_topk: the k largest inner products of each query with an instance bank (a nearest-neighbour utility).

scores[n, j] = query[n] . bank[index[n, j]], descending along j; ties go to the smaller bank index.
The N x M score matrix is never stored: the torch path works in row chunks, the Triton kernel tile by tile.
No method of udaseg calls it today (DIDA aggregates the bank per class with bank_class_logsumexp instead): it is a
utility for nearest-neighbour lookups in a bank (retrieval, kNN pseudo-labels, inspecting a bank). Its baseline in
the benchmark is torch.topk on the matrix product, which does not promise the tie rule; the reference here sorts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_count, check_device, check_float
from ._dispatch import INTERPRET, acc_dtype, chunk_rows, next_pow2, resolve_impl
from ._tiles import MAX_D, Launcher, common_dtype, configs, dot_precision, load_cols, load_rows, tl, triton

_OP = "bank_topk"
_MAX_K_PAD = 64  # larger k: the chunked torch path (the running top-k lives in registers next to the score tile)

# --- torch reference ---


def bank_topk_reference(query: Tensor, bank: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Plain torch: the full score matrix and a stable descending sort.

    Args:
        query: (N, D) float.
        bank: (M, D) float.
        k: how many to keep, 1 <= k <= M.
    Returns:
        scores (N, k) float32 (float64 for float64 inputs), index (N, k) int64.
    """
    dt = acc_dtype(query, bank)
    scores = query.to(dt) @ bank.to(dt).T  # (N, M)
    values, index = torch.sort(scores, dim=1, descending=True, stable=True)
    return values[:, :k].contiguous(), index[:, :k].contiguous()


# --- CPU path: chunked torch ---


def _topk_chunk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """torch.topk of a (R, M) chunk made to obey the tie rule (smaller index first), which torch.topk does not
    promise. One extra candidate shows a tie across the k-th place; only rows with a tie pay for more work.

    Returns:
        values, index (R, k) in (score descending, index ascending) order.
    """
    m = scores.shape[1]
    values, index = torch.topk(scores, min(k + 1, m), dim=1, sorted=True)
    if k < m:
        crowded = (values[:, k] == values[:, k - 1]).nonzero().flatten()  # host sync: CPU path only
        values, index = values[:, :k], index[:, :k]
        if crowded.numel():  # more than k scores reach the k-th value: a stable sort picks the smaller indices
            v, i = torch.sort(scores[crowded], dim=1, descending=True, stable=True)
            values[crowded], index[crowded] = v[:, :k], i[:, :k]
    if k > 1 and bool((values[:, 1:] == values[:, :-1]).any()):  # ties inside the k: by index, then by value
        index, perm = index.sort(dim=1)
        values, perm2 = values.gather(1, perm).sort(dim=1, descending=True, stable=True)
        index = index.gather(1, perm2)
    return values, index


def _topk_chunked(query: Tensor, bank: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Row chunks of query @ bank.T, each reduced by torch.topk: peak extra memory O(chunk x M)."""
    dt = acc_dtype(query, bank)
    q = query.to(dt)  # (N, D)
    bank_t = bank.to(dt).T.contiguous()  # (D, M)
    values = torch.empty(q.shape[0], k, dtype=dt, device=q.device)  # (N, k)
    index = torch.empty(q.shape[0], k, dtype=torch.int64, device=q.device)  # (N, k)
    step = chunk_rows(bank_t.shape[1])
    for s in range(0, q.shape[0], step):
        values[s : s + step], index[s : s + step] = _topk_chunk(q[s : s + step] @ bank_t, k)
    return values, index


# --- Triton kernel ---
# Bitonic network on a hypercube, after triton.language.standard (sort_impl, "Massively Parallel Top-K",
# Shanbhag et al.), with the compare-and-swap written as a min/max over the pair axis instead of an xor_sum:
# the same network, but the interpreter runs min/max in numpy while it runs xor_sum one element at a time.


@triton.constexpr_function
def _log2(n):
    return int(n).bit_length() - 1


@triton.jit
def _merge(h, stage: tl.constexpr, order: tl.constexpr):
    """Bitonic merge of runs of 2**stage in the hypercube h: order 0 ascending, 1 descending, 2 alternating.

    Compare-and-swap along axis j (from the innermost) = min on its left side, max on its right (flipped runs
    the other way). Written inline: each nested jit call costs the interpreter a re-patch of the language.
    """
    n_dims: tl.constexpr = _log2(h.numel)
    if order == 2:
        flip = tl.reshape(tl.arange(0, 2), [1] * (n_dims - stage - 1) + [2] + [1] * stage)
    else:
        flip = order
    for j in tl.static_range(stage - 1, -1, -1):  # (a constexpr assigned in the loop would not compile)
        right = tl.reshape(tl.arange(0, 2), [1] * (n_dims - j - 1) + [2] + [1] * j)
        lo = tl.min(h, n_dims - 1 - j, keep_dims=True)
        hi = tl.max(h, n_dims - 1 - j, keep_dims=True)
        h = tl.where((flip ^ right).to(tl.int1), hi, lo)
    return h


@triton.jit
def _top(x, K: tl.constexpr):
    """(R, W) -> (R, K) the K largest of each row, sorted descending (K, W powers of two, 2 <= K <= W)."""
    log_w: tl.constexpr = _log2(x.shape[1])
    log_k: tl.constexpr = _log2(K)
    h = tl.reshape(x, [2] * _log2(x.numel))
    for i in tl.static_range(1, log_k + 1):  # sort runs of K, alternating
        h = _merge(h, i, 2 if i < log_w else 1)
    for i in tl.static_range(log_k + 1, log_w + 1):  # halve: max of a run and its reversed neighbour, re-merge
        h = tl.max(h, axis=_log2(h.numel) - 1 - log_k)
        h = _merge(h, log_k, 2 if i < log_w else 1)
    return tl.reshape(h, [x.shape[0], K])


@triton.jit
def _sort_ascending(x):
    """(R, W) with bitonic rows -> rows sorted ascending."""
    h = _merge(tl.reshape(x, [2] * _log2(x.numel)), _log2(x.shape[1]), 0)
    return tl.reshape(h, x.shape)


@triton.jit
def _pack(scores, cols):
    """uint64 keys ordered like (score, -column): flipped float bits above, 0xFFFFFFFF - column below."""
    bits = scores.to(tl.uint32, bitcast=True)  # (BLOCK_N, BLOCK_M)
    negative = (bits >> 31) != 0
    flip = tl.where(negative, tl.full(bits.shape, 0xFFFFFFFF, tl.uint32), tl.full(bits.shape, 0x80000000, tl.uint32))
    low = tl.full(bits.shape, 0xFFFFFFFF, tl.uint64) - cols.to(tl.uint64)
    return ((bits ^ flip).to(tl.uint64) << 32) | low


@triton.jit
def _unpack(keys):
    """Inverse of _pack: (float32 scores, int64 columns)."""
    hi = (keys >> 32).to(tl.uint32)
    negative = (hi >> 31) == 0  # a flipped negative float has its top bit cleared
    flip = tl.where(negative, tl.full(hi.shape, 0xFFFFFFFF, tl.uint32), tl.full(hi.shape, 0x80000000, tl.uint32))
    cols = tl.full(keys.shape, 0xFFFFFFFF, tl.uint64) - (keys & 0xFFFFFFFF)
    return (hi ^ flip).to(tl.float32, bitcast=True), cols.to(tl.int64)


@triton.jit
def _topk_kernel(
    q_ptr,  # (N, D)
    b_ptr,  # (M, D)
    score_ptr,  # (N, K) float32
    index_ptr,  # (N, K) int64
    N,
    M,
    D,
    K,
    K_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """One program per BLOCK_N queries: stream bank tiles, keep a running top-K_PAD of packed keys."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_mask = rows < N
    d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    q = load_rows(q_ptr, rows, row_mask, d, D, UPCAST)  # (BLOCK_N, BLOCK_D), resident
    best = tl.zeros((BLOCK_N, K_PAD), dtype=tl.uint64)  # key 0 = "nothing yet", below every real key
    for m0 in range(0, M, BLOCK_M):
        cols = m0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        scores = tl.dot(q, load_cols(b_ptr, cols, cols < M, d, D, UPCAST), input_precision=PREC)  # (BLOCK_N, BLOCK_M)
        keys = tl.where((cols < M)[None, :], _pack(scores, cols[None, :]), 0)  # (BLOCK_N, BLOCK_M)
        # Early reject: merge only when some row has a key above its current k-th best.
        if tl.max((tl.max(keys, 1) > tl.min(best, 1)).to(tl.int32), 0) > 0:
            # best, sorted ascending, against the tile's top, sorted descending: the element-wise max holds the
            # top K_PAD of both, as a bitonic sequence (sorted again at the next merge).
            best = tl.maximum(_sort_ascending(best), _top(keys, K_PAD))
    scores, index = _unpack(_top(best, K_PAD))  # (BLOCK_N, K_PAD) descending
    j = tl.arange(0, K_PAD)  # (K_PAD,)
    out = rows.to(tl.int64)[:, None] * K + j[None, :]
    mask = row_mask[:, None] & (j[None, :] < K)
    tl.store(score_ptr + out, scores, mask=mask)
    tl.store(index_ptr + out, index, mask=mask)


def _prune(configs_, named_args, **kwargs):
    """Configs whose bank tile holds at least K_PAD columns (the tile's top-K_PAD is taken before the merge)."""
    k_pad = {**named_args, **kwargs}["K_PAD"]
    return [c for c in configs_ if c.kwargs["BLOCK_M"] >= k_pad] or [configs_[-1]]


# Kept configs (the static check, benchmarks/kernels_static.py, shows none spills at D = 256): a (BLOCK_N, K_PAD)
# uint64 running top-k and a (BLOCK_N, BLOCK_M) uint64 key tile share the registers with the query tile.
_TOPK = Launcher(
    _topk_kernel,
    configs(
        ({"BLOCK_N": 32, "BLOCK_M": 32}, 4, 2),
        ({"BLOCK_N": 64, "BLOCK_M": 32}, 8, 2),
        ({"BLOCK_N": 32, "BLOCK_M": 64}, 8, 2),
    ),
    key=["M", "D", "K_PAD", "PREC"],
    interpret=lambda kw: {"BLOCK_N": 16, "BLOCK_M": max(32, kw["K_PAD"])},
    prune=_prune,
    tensor_cores=True,
)


def _topk_triton(query: Tensor, bank: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Launch the fused kernel: one pass over the bank per query block, nothing of size N x M.

    Args:
        query: (N, D).  bank: (M, D).  k: 1 <= k <= M.
    Returns:
        scores (N, k) float32, index (N, k) int64.
    """
    k_pad = next_pow2(k, 2)
    dt = common_dtype(query, bank)
    q, b = query.to(dt).contiguous(), bank.to(dt).contiguous()  # (N, D), (M, D)
    n, m = q.shape[0], b.shape[0]
    scores = torch.empty(n, k, dtype=torch.float32, device=q.device)  # (N, k)
    index = torch.empty(n, k, dtype=torch.int64, device=q.device)  # (N, k)
    if n == 0:
        return scores, index
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _TOPK[grid](
        q,
        b,
        scores,
        index,
        n,
        m,
        q.shape[1],
        k,
        K_PAD=k_pad,
        BLOCK_D=next_pow2(q.shape[1]),
        UPCAST=INTERPRET,
        PREC=dot_precision(dt),
    )
    return scores, index


# --- public op ---


def _check_args(query, bank, k) -> None:
    """ValueError naming the argument on misuse."""
    check_float(_OP, "query", query, 2)
    check_float(_OP, "bank", bank, 2)
    check_device(_OP, "bank", bank, query.device)
    if bank.shape[1] != query.shape[1]:
        raise ValueError(f"{_OP}: bank must have D = {query.shape[1]} columns like query, got {tuple(bank.shape)}")
    if bank.shape[0] == 0:
        raise ValueError(f"{_OP}: bank must have at least one row, got shape {tuple(bank.shape)}")
    check_count(_OP, "k", k, 1, bank.shape[0])


def bank_topk(query: Tensor, bank: Tensor, k: int, impl: str = "auto") -> tuple[Tensor, Tensor]:
    """The k largest inner products of each query row with the bank rows.

    Args:
        query: (N, D) float16/bfloat16/float32.
        bank: (M, D) float, same device.
        k: 1 <= k <= M.
        impl: "auto", "triton", "torch" (reference) or "chunked" (Triton needs k <= 64 and D <= 256; otherwise
            the chunked path runs).
    Returns:
        scores (N, k) float32, descending per row; index (N, k) int64 into the bank (ties: smaller index first).
        Not differentiable (a retrieval).
    """
    _check_args(query, bank, k)
    impl = resolve_impl(impl, query.device, _OP)
    with torch.no_grad():
        if impl == "torch":
            return bank_topk_reference(query, bank, k)
        if impl == "triton" and next_pow2(k, 2) <= _MAX_K_PAD and query.shape[1] <= MAX_D:
            return _topk_triton(query, bank, k)
        return _topk_chunked(query, bank, k)
