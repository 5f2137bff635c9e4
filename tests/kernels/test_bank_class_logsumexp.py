"""bank_class_logsumexp: forward and gradient against the float64 reference, empty classes and slots, a score
range beyond exp's, gradcheck, misuse, memory."""

from __future__ import annotations

import pytest
import torch

from udaseg.kernels import bank_class_logsumexp

# (N, M, D, C): 1 x 1, primes, more rows than one interpreter block (16), a class spanning several tiles (C = 2),
# the contract's D = 256; N <= 64 with classes over several 16-row tiles: 2 or 3 bank splits under the interpreter,
# each holding tiles, so the combine step is exercised.
SHAPES = [(1, 1, 1, 1), (67, 53, 37, 7), (70, 50, 40, 2), (17, 41, 3, 19), (20, 100, 256, 3), (40, 90, 24, 2)]


def _data(n, m, d, c, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(n, d, generator=g).to(dtype)
    bank = torch.randn(m, d, generator=g).to(dtype)
    labels = torch.randint(-1, c, (m,), generator=g)  # -1: empty slots
    if c > 2:
        labels[labels == 1] = -1  # class 1 has no slot: its output is -inf
    return query, bank, labels


def _masked_sum(out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A scalar loss that skips -inf entries (empty classes)."""
    return (out * weight).masked_fill(torch.isinf(out), 0.0).sum()


@pytest.mark.parametrize("n,m,d,c", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_forward_and_grad_match_float64_reference(impl, n, m, d, c, dtype, assert_close):
    query, bank, labels = _data(n, m, d, c, dtype)
    q = query.clone().requires_grad_()
    out = bank_class_logsumexp(q, bank, labels, c, 0.5, impl=impl)
    q64 = query.double().requires_grad_()
    ref = bank_class_logsumexp(q64, bank.double(), labels, c, 0.5, impl="torch")
    assert out.dtype == torch.float32 and out.shape == (n, c)
    assert_close(out, ref, 1e-4, 1e-5, "forward")
    weight = torch.randn(n, c, generator=torch.Generator().manual_seed(1))
    _masked_sum(out, weight).backward()
    _masked_sum(ref, weight.double()).backward()
    assert q.grad.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-3  # a float16 grad is rounded to float16 (rel. 5e-4)
    assert_close(q.grad, q64.grad, tol, tol, "grad")


@pytest.mark.parametrize("n,m,d,c", [(20, 100, 256, 3), (40, 90, 64, 2)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_match_float64_reference_of_the_rounded_inputs(impl, n, m, d, c, dtype, assert_close):
    # What the loop hands the kernels under AMP on CUDA: half embeddings and bank. The reference sees the same
    # rounded values in float64, so the only error left is the kernels' float32 accumulation (forward, ~1e-6 of
    # scores |s / T| <= ~50 here) and the rounding of the returned gradient to the input dtype (2^-8 relative for
    # bf16, 2^-11 for fp16). On a GPU the half path also rounds the softmax weights to the input dtype before the
    # gradient's tensor-core dot (as flash attention does): the GPU test allows for that, this one runs the
    # interpreter, which computes that dot in float32.
    query, bank, labels = _data(n, m, d, c)
    query = torch.nn.functional.normalize(query, dim=1).mul(2).to(dtype)
    bank = torch.nn.functional.normalize(bank, dim=1).to(dtype)
    q = query.clone().requires_grad_()
    out = bank_class_logsumexp(q, bank, labels, c, 0.1, impl=impl)
    q64 = query.double().requires_grad_()
    ref = bank_class_logsumexp(q64, bank.double(), labels, c, 0.1, impl="torch")
    assert_close(out, ref, 2e-5, 1e-5, "forward")
    weight = torch.randn(n, c, generator=torch.Generator().manual_seed(1))
    _masked_sum(out, weight).backward()
    _masked_sum(ref, weight.double()).backward()
    assert q.grad.dtype == dtype
    ulp = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    assert_close(q.grad, q64.grad, 1e-4, ulp, "grad")


def test_class_far_below_the_row_max_stays_finite(impl, assert_close):
    # Class 1 scores sit 2/T = 200 below class 0's: a single running row max would underflow exp() to a false -inf.
    query = torch.ones(5, 4) / 2  # unit norm
    bank = torch.cat([torch.ones(20, 4) / 2, -torch.ones(23, 4) / 2])  # scores +1 (class 0) and -1 (class 1)
    labels = torch.cat([torch.zeros(20), torch.ones(23)]).long()
    q = query.clone().requires_grad_()
    out = bank_class_logsumexp(q, bank, labels, 2, 0.01, impl=impl)
    expected = torch.tensor([100 + torch.log(torch.tensor(20.0)), -100 + torch.log(torch.tensor(23.0))])
    assert_close(out, expected.expand(5, 2), 1e-4, 1e-6, "forward")
    out[:, 1].sum().backward()
    assert_close(q.grad, bank[20:].mean(0).expand(5, 4) / 0.01, 1e-3, 1e-5, "grad")  # softmax-weighted class 1


def test_no_valid_slot_gives_minus_inf_and_zero_grad(impl):
    query, bank, _ = _data(9, 11, 5, 3)
    labels = torch.full((11,), -1)
    q = query.clone().requires_grad_()
    out = bank_class_logsumexp(q, bank, labels, 3, 0.2, impl=impl)
    assert torch.isneginf(out).all()
    out.masked_fill(torch.isinf(out), 0.0).sum().backward()
    assert q.grad is None or not q.grad.any()


def test_gradcheck_chunked_float64():
    query, bank, labels = _data(5, 11, 3, 3, torch.float64)
    q = query.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: bank_class_logsumexp(x, bank, labels, 3, 0.7, impl="chunked").masked_fill(
            torch.isinf(bank_class_logsumexp(x.detach(), bank, labels, 3, 0.7, impl="torch")), 0.0
        ),
        (q,),
    )


def test_gradcheck_triton_float32(need_triton):
    query, bank, labels = _data(3, 7, 3, 2, torch.float32)
    labels[:] = torch.tensor([0, 1, 0, 1, 1, 0, 0])
    q = query.double().requires_grad_()  # gradcheck perturbs in float64; the kernel computes in float32
    assert torch.autograd.gradcheck(
        lambda x: bank_class_logsumexp(x.float(), bank, labels, 2, 1.0, impl="triton").double(),
        (q,),
        eps=1e-2,
        atol=1e-2,
        rtol=1e-2,
    )


@pytest.mark.parametrize(
    "change, name",
    [
        ({"query": "int"}, "query"),
        ({"bank": "wrong_d"}, "bank"),
        ({"bank_labels": "float"}, "bank_labels"),
        ({"bank_labels": "short"}, "bank_labels"),
        ({"num_classes": 0}, "num_classes"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_misuse_raises_value_error_naming_the_argument(change, name):
    query, bank, labels = _data(4, 6, 3, 3)
    args = {"query": query, "bank": bank, "bank_labels": labels, "num_classes": 3, "temperature": 0.1}
    edits = {"int": query.long(), "wrong_d": bank[:, :2], "float": labels.float(), "short": labels[:-1]}
    for key, value in change.items():
        args[key] = edits.get(value, value) if isinstance(value, str) else value
    with pytest.raises(ValueError, match=name):
        bank_class_logsumexp(**args)


def test_cpu_path_memory_is_bounded(peak_extra_mb):
    # An N x M float32 score matrix would take 2,400 MB; (chunk, M_c) tiles of 32 MB: measured ~70 MB.
    extra = peak_extra_mb("bank_class_logsumexp", "lambda q: bank_class_logsumexp(q, bank, labels, 19, 0.1)")
    assert extra < 300, f"bank_class_logsumexp grew the peak RSS by {extra:.0f} MB"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_triton_matches_reference(dtype, assert_close):
    query, bank, labels = _data(1000, 3001, 256, 19, dtype)
    query = torch.nn.functional.normalize(query.float(), dim=1).to(dtype).cuda().requires_grad_()
    bank = torch.nn.functional.normalize(bank.float(), dim=1).to(dtype).cuda()
    out = bank_class_logsumexp(query, bank, labels.cuda(), 19, 0.1, impl="triton")
    q64 = query.detach().double().requires_grad_()
    ref = bank_class_logsumexp(q64, bank.double(), labels.cuda(), 19, 0.1, impl="torch")
    assert_close(out, ref, 1e-3, 1e-4, "forward")
    _masked_sum(out, torch.ones_like(out)).backward()
    _masked_sum(ref, torch.ones_like(ref)).backward()
    assert_close(query.grad, q64.grad, 5e-2 if dtype == torch.bfloat16 else 1e-2, 1e-2, "grad")
