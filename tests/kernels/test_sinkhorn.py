"""sinkhorn: against the float64 reference, marginals, scores/eps up to 1e4, misuse."""

from __future__ import annotations

import pytest
import torch

from udaseg.kernels import sinkhorn

# (N, K): 1 x 1, primes, more rows than one interpreter block (16), K not a power of two.
SHAPES = [(1, 1), (67, 7), (70, 19), (33, 50)]


def _data(n, k, scale=0.5, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randn(n, k, generator=g) * scale).to(dtype)
    marginal = torch.rand(k, generator=g) + 0.2
    return scores, marginal / marginal.sum()


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("iterations", [0, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("scale", [0.5, 4.0])  # logits spanning < 50 (the CPU path's exp space) and > 50 (log space)
def test_matches_float64_reference(impl, n, k, iterations, dtype, scale, assert_close):
    scores, marginal = _data(n, k, scale=scale, dtype=dtype)
    q = sinkhorn(scores, marginal, 0.05, iterations, impl=impl)
    ref = sinkhorn(scores.double(), marginal.double(), 0.05, iterations, impl="torch")
    assert q.dtype == torch.float32 and q.shape == (n, k)
    assert_close(q, ref, 1e-6, 1e-4, "Q")
    if iterations:
        assert_close(q.sum(1), torch.ones(n), 1e-4, 0, "row sums")  # logits ~ 300: float32 ulp ~ 3e-5


def test_columns_approach_the_marginal(impl, assert_close):
    scores, marginal = _data(64, 5)
    q = sinkhorn(scores, marginal, 0.1, 30, impl=impl)
    assert_close(q.sum(0), 64 * marginal, 1e-3, 1e-3, "column sums")


@pytest.mark.parametrize("scale", [1e2, 3e2])
def test_large_scores_over_epsilon_stay_finite(impl, scale, assert_close):
    scores, marginal = _data(40, 13, scale=scale)  # scores / eps up to ~1e4
    q = sinkhorn(scores, marginal, 0.1, 3, impl=impl)
    ref = sinkhorn(scores.double(), marginal.double(), 0.1, 3, impl="torch")
    assert torch.isfinite(q).all()
    # float32 holds scores / eps ~ 1e4 to ~1e-3 in the exponent: a relative error of ~1e-3 in Q is the floor.
    assert_close(q, ref, 1e-2, 1e-2, "Q")
    assert_close(q.sum(1), torch.ones(40), 1e-2, 0, "row sums")


@pytest.mark.parametrize(
    "key, value, name",
    [
        ("scores", "int", "scores"),
        ("scores", "1d", "scores"),
        ("marginal", "short", "marginal"),
        ("epsilon", -0.05, "epsilon"),
        ("epsilon", 0.0, "epsilon"),
        ("iterations", -1, "iterations"),
        ("iterations", 2.5, "iterations"),
    ],
)
def test_misuse_raises_value_error_naming_the_argument(key, value, name):
    scores, marginal = _data(6, 4)
    args = {"scores": scores, "marginal": marginal, "epsilon": 0.05, "iterations": 3}
    edits = {"int": scores.long(), "1d": scores[0], "short": marginal[:-1]}
    args[key] = edits[value] if isinstance(value, str) else value
    with pytest.raises(ValueError, match=name):
        sinkhorn(**args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("k", [19, 190])
def test_gpu_triton_matches_reference(dtype, k, assert_close):
    scores, marginal = (t.cuda() for t in _data(65_536, k, dtype=dtype))
    q = sinkhorn(scores, marginal, 0.05, 3, impl="triton")
    ref = sinkhorn(scores.double(), marginal.double(), 0.05, 3, impl="torch")
    assert_close(q, ref, 1e-5, 1e-3, "Q")
