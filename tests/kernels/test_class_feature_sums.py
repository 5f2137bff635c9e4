"""class_feature_sums: sums, counts and gradient against the float64 reference, skipped labels, misuse."""

from __future__ import annotations

import pytest
import torch

from udaseg.kernels import class_feature_sums

# (N, D, C): 1 x 1, primes, more row blocks than interpreter programs (3 x 32 rows), more classes than rows, the
# contract's D = 256.
SHAPES = [(1, 1, 1), (67, 37, 7), (300, 40, 19), (5, 3, 20), (70, 256, 19)]


def _data(n, d, c, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=g).to(dtype)
    labels = torch.randint(-1, c + 1, (n,), generator=g)  # -1 and c: outside [0, C), skipped
    labels[::7] = 255  # ignore_index
    return features, labels


@pytest.mark.parametrize("n,d,c", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sums_counts_and_grad_match_float64_reference(impl, n, d, c, dtype, assert_close):
    features, labels = _data(n, d, c, dtype)
    f = features.clone().requires_grad_()
    sums, counts = class_feature_sums(f, labels, c, impl=impl)
    f64 = features.double().requires_grad_()
    ref_sums, ref_counts = class_feature_sums(f64, labels, c, impl="torch")
    assert sums.dtype == torch.float32 and sums.shape == (c, d)
    assert counts.dtype == torch.int64 and torch.equal(counts, ref_counts)
    assert_close(sums, ref_sums, 1e-5, 1e-5, "sums")
    weight = torch.randn(c, d, generator=torch.Generator().manual_seed(1))
    (sums * weight).sum().backward()
    (ref_sums * weight.double()).sum().backward()
    assert f.grad.dtype == dtype
    tol = 2.0**-8 if dtype == torch.bfloat16 else 1e-3  # exact up to the rounding of the grad to the input dtype
    assert_close(f.grad, f64.grad, tol, tol, "grad")


def test_all_ignored_gives_zeros(impl):
    features, _ = _data(40, 6, 5)
    sums, counts = class_feature_sums(features, torch.full((40,), 255), 5, impl=impl)
    assert not sums.any() and not counts.any()


def test_ignore_index_inside_the_class_range(impl):
    features, labels = _data(50, 4, 3)
    labels = labels.clamp(0, 2)
    sums, counts = class_feature_sums(features, labels, 3, ignore_index=0, impl=impl)
    assert counts[0] == 0 and not sums[0].any()
    assert counts[1] == (labels == 1).sum()
    assert torch.allclose(sums[2], features[labels == 2].sum(0), atol=1e-5)


def test_gradcheck_chunked_float64():
    features, labels = _data(9, 3, 4, torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: class_feature_sums(x, labels, 4, impl="chunked")[0], (features.requires_grad_(),)
    )


def test_gradcheck_triton_float32(need_triton):
    features, labels = _data(9, 3, 4)
    assert torch.autograd.gradcheck(
        lambda x: class_feature_sums(x.float(), labels, 4, impl="triton")[0].double(),
        (features.double().requires_grad_(),),
        eps=1e-2,
        atol=1e-3,
        rtol=1e-3,
    )


@pytest.mark.parametrize(
    "key, value, name",
    [
        ("features", "int", "features"),
        ("features", "1d", "features"),
        ("labels", "float", "labels"),
        ("labels", "short", "labels"),
        ("num_classes", 0, "num_classes"),
        ("ignore_index", "text", "ignore_index"),
    ],
)
def test_misuse_raises_value_error_naming_the_argument(key, value, name):
    features, labels = _data(6, 3, 4)
    args = {"features": features, "labels": labels, "num_classes": 4, "ignore_index": 255}
    edits = {"int": features.long(), "1d": features[:, 0], "float": labels.float(), "short": labels[:-1], "text": "255"}
    args[key] = edits[value] if isinstance(value, str) else value
    with pytest.raises(ValueError, match=name):
        class_feature_sums(**args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_triton_matches_reference(dtype, assert_close):
    features, labels = (t.cuda() for t in _data(100_003, 256, 19, dtype))
    sums, counts = class_feature_sums(features, labels, 19, impl="triton")
    ref_sums, ref_counts = class_feature_sums(features.double(), labels, 19, impl="torch")
    assert torch.equal(counts, ref_counts)
    assert_close(sums, ref_sums, 1e-2, 1e-4, "sums")
