"""bank_topk: every impl against the float64 reference, the tie rule, the early-reject path, misuse, memory."""

from __future__ import annotations

import pytest
import torch

from udaseg.kernels import bank_topk, use_impl

# (N, M, D, k): 1 x 1, primes, k = M, k not a power of two, more rows than one interpreter block (16 x 32), the
# contract's D = 256. k > 64 takes the chunked path under impl="triton" (the running top-k lives in registers).
SHAPES = [
    (1, 1, 1, 1),
    (67, 53, 37, 5),
    (70, 50, 40, 50),
    (13, 41, 3, 16),
    (5, 61, 8, 33),
    (9, 40, 256, 5),
    (3, 80, 4, 70),
]


def _data(n: int, m: int, d: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g).to(dtype), torch.randn(m, d, generator=g).to(dtype)


@pytest.mark.parametrize("n,m,d,k", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_float64_reference(impl, n, m, d, k, dtype, assert_close):
    query, bank = _data(n, m, d, dtype)
    scores, index = bank_topk(query, bank, k, impl=impl)
    ref_scores, ref_index = bank_topk(query.double(), bank.double(), k, impl="torch")
    assert scores.dtype == torch.float32 and index.dtype == torch.int64
    assert scores.shape == index.shape == (n, k)
    assert_close(scores, ref_scores, 1e-5, 1e-5, "scores")
    assert torch.equal(index, ref_index), f"{(index != ref_index).sum().item()} indices differ"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_match_float64_reference_of_the_rounded_inputs(impl, dtype, assert_close):
    # Scores of half inputs accumulate in float32: equal to the float64 products of the rounded inputs up to
    # ~1e-6; indices agree wherever neighbouring scores differ by more than that (random data: everywhere).
    query, bank = _data(9, 40, 256, dtype)
    scores, index = bank_topk(query, bank, 5, impl=impl)
    ref_scores, ref_index = bank_topk(query.double(), bank.double(), 5, impl="torch")
    assert_close(scores, ref_scores, 1e-4, 1e-6, "scores")
    assert torch.equal(index, ref_index), f"{(index != ref_index).sum().item()} indices differ"


def test_ties_go_to_the_smaller_index(impl):
    g = torch.Generator().manual_seed(1)
    query = torch.randint(-2, 3, (9, 4), generator=g).float()  # small integers: exact dot products, many ties
    bank = torch.randint(-2, 3, (40, 4), generator=g).float()
    bank[20:] = bank[:20]  # every score appears at least twice
    scores, index = bank_topk(query, bank, 7, impl=impl)
    full = query @ bank.T
    for n in range(query.shape[0]):
        expected = sorted(range(bank.shape[0]), key=lambda m, n=n: (-full[n, m].item(), m))[:7]
        assert index[n].tolist() == expected, f"row {n}"
        assert torch.equal(scores[n], full[n, expected])


@pytest.mark.parametrize("order", ["best_first", "best_last"])
def test_sorted_bank_early_reject_and_merge_paths(impl, order):
    # best_first: after the first tile no tile beats the k-th best (the Triton kernel skips every merge);
    # best_last: every tile does.
    m = 61
    bank = torch.linspace(1, -1, m)[:, None].expand(m, 8).contiguous()  # (M, 8) descending scores
    if order == "best_last":
        bank = bank.flip(0).contiguous()
    query = torch.arange(1, 6, dtype=torch.float32)[:, None].expand(5, 8).contiguous()  # (5, 8) positive
    _, index = bank_topk(query, bank, 4, impl=impl)
    expected = torch.arange(4) if order == "best_first" else torch.arange(m - 1, m - 5, -1)
    assert torch.equal(index, expected.expand(5, 4))


def test_auto_and_use_impl_agree():
    query, bank = _data(20, 30, 8, torch.float32)
    auto = bank_topk(query, bank, 3)
    with use_impl("torch"):
        forced = bank_topk(query, bank, 3)
    assert torch.equal(auto[1], forced[1])
    assert torch.allclose(auto[0], forced[0], atol=1e-5)


@pytest.mark.parametrize(
    "case, name",
    [
        ("int_query", "query"),
        ("vector_query", "query"),
        ("wrong_d", "bank"),
        ("k_too_big", "k"),
        ("k_zero", "k"),
        ("bad_impl", "impl"),
    ],
)
def test_misuse_raises_value_error_naming_the_argument(case, name):
    query, bank = _data(4, 6, 3, torch.float32)
    args = {"query": query, "bank": bank, "k": 2, "impl": "auto"}
    args.update(
        {
            "int_query": {"query": query.long()},
            "vector_query": {"query": query[0]},
            "wrong_d": {"bank": bank[:, :2]},
            "k_too_big": {"k": 7},
            "k_zero": {"k": 0},
            "bad_impl": {"impl": "cuda"},
        }[case]
    )
    with pytest.raises(ValueError, match=name):
        bank_topk(**args)


def test_cpu_path_memory_is_bounded(peak_extra_mb):
    # An N x M float32 score matrix would take 2,400 MB; the chunked path keeps (chunk, M) tiles of 32 MB (and
    # torch.topk its own copy of one): measured ~130 MB.
    extra = peak_extra_mb("bank_topk", "lambda q: bank_topk(q, bank, 16)")
    assert extra < 300, f"bank_topk grew the peak RSS by {extra:.0f} MB"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_triton_matches_reference(dtype, assert_close):
    query, bank = (t.cuda() for t in _data(1000, 3001, 256, dtype))
    scores, index = bank_topk(query, bank, 16, impl="triton")
    ref_scores, _ = bank_topk(query.double(), bank.double(), 16, impl="torch")
    assert_close(scores, ref_scores, 1e-3, 1e-4, "scores")
    # The returned indices hold the returned scores (near-ties may pick either neighbour, never a wrong entry).
    exact = (query.double()[:, None, :] * bank.double()[index]).sum(-1)  # (N, 16)
    assert_close(scores, exact, 1e-3, 1e-4, "scores at the returned indices")
