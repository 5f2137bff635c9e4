"""instance_consistency_loss: forward and gradient against the float64 reference, empty targets, empty slots,
the closed form on a tiny case, gradcheck, misuse."""

from __future__ import annotations

import pytest
import torch

from udaseg.kernels import instance_consistency_loss

# (N, M, D, C): 1 x 1, primes, more rows than one interpreter block (16), few classes spanning several tiles, the
# contract's D = 256; N <= 64 with classes over several 16-row tiles: 2 or 3 bank splits under the interpreter,
# each holding tiles, so the combine step is exercised.
SHAPES = [(1, 1, 1, 1), (67, 53, 37, 7), (70, 50, 40, 2), (17, 41, 3, 19), (20, 100, 256, 3), (40, 90, 24, 2)]


def _data(n, m, d, c, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    weak, strong = torch.randn(n, d, generator=g).to(dtype), torch.randn(n, d, generator=g).to(dtype)
    bank = torch.randn(m, d, generator=g).to(dtype)
    labels = torch.randint(-1, c, (m,), generator=g)  # -1: empty slots
    weights = torch.rand(n, c, generator=g).to(dtype)
    weights[: min(3, n)] = 0  # empty targets: loss 0, grad 0
    weights[3:6, : c // 2] = 0  # zero weight on some classes
    return weak, strong, bank, labels, weights


@pytest.mark.parametrize("n,m,d,c", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_forward_and_grad_match_float64_reference(impl, n, m, d, c, dtype, assert_close):
    weak, strong, bank, labels, weights = _data(n, m, d, c, dtype)
    s = strong.clone().requires_grad_()
    w = weak.clone().requires_grad_()
    loss = instance_consistency_loss(w, s, bank, labels, weights, 0.5, impl=impl)
    s64 = strong.double().requires_grad_()
    ref = instance_consistency_loss(weak.double(), s64, bank.double(), labels, weights.double(), 0.5, impl="torch")
    assert loss.dtype == torch.float32 and loss.shape == (n,)
    assert_close(loss, ref, 1e-4, 1e-5, "loss")
    grad_out = torch.randn(n, generator=torch.Generator().manual_seed(1))
    (loss * grad_out).sum().backward()
    (ref * grad_out.double()).sum().backward()
    tol = 1e-4 if dtype == torch.float32 else 1e-3  # a float16 grad is rounded to float16
    assert_close(s.grad, s64.grad, tol, tol, "grad strong")
    assert w.grad is None or not w.grad.any(), "weak is a target: no gradient"


@pytest.mark.parametrize("n,m,d,c", [(20, 100, 256, 3), (40, 90, 64, 2)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_match_float64_reference_of_the_rounded_inputs(impl, n, m, d, c, dtype, assert_close):
    # The loop under AMP on CUDA: half embeddings and bank, float32 class weights. The reference sees the same
    # rounded values in float64: left are the float32 accumulation (loss) and the rounding of the returned
    # gradient to the input dtype (2^-8 relative for bf16, 2^-11 for fp16).
    weak, strong, bank, labels, weights = _data(n, m, d, c)
    weak, strong, bank = (torch.nn.functional.normalize(t, dim=1).to(dtype) for t in (weak, strong, bank))
    s = strong.clone().requires_grad_()
    loss = instance_consistency_loss(weak, s, bank, labels, weights, 0.1, impl=impl)
    s64 = strong.double().requires_grad_()
    ref = instance_consistency_loss(weak.double(), s64, bank.double(), labels, weights.double(), 0.1, impl="torch")
    assert_close(loss, ref, 2e-5, 1e-5, "loss")
    grad_out = torch.randn(n, generator=torch.Generator().manual_seed(1))
    (loss * grad_out).sum().backward()
    (ref * grad_out.double()).sum().backward()
    assert s.grad.dtype == dtype
    ulp = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    assert_close(s.grad, s64.grad, 1e-4, ulp, "grad strong")


def test_closed_form_two_slots(impl, assert_close):
    # One query, two slots of two classes: t = softmax(weak logits + log weights), loss = CE(t, strong softmax).
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    weak, strong = torch.tensor([[0.3, -0.2]]), torch.tensor([[0.5, 0.1]]).requires_grad_()
    weights = torch.tensor([[0.25, 0.75]])
    loss = instance_consistency_loss(weak, strong, bank, labels, weights, 0.5, impl=impl)
    t = torch.softmax(weak[0] / 0.5 + weights[0].log(), 0)
    log_p = torch.log_softmax(strong[0].detach() / 0.5, 0)
    assert_close(loss, -(t * log_p).sum()[None], 1e-6, 1e-6, "loss")
    loss.sum().backward()
    assert_close(strong.grad, ((log_p.exp() - t) / 0.5)[None], 1e-6, 1e-6, "grad")


def test_no_valid_slot_gives_zero_loss_and_grad(impl):
    weak, strong, bank, _, weights = _data(9, 11, 5, 3)
    s = strong.clone().requires_grad_()
    loss = instance_consistency_loss(weak, s, bank, torch.full((11,), -1), weights, 0.2, impl=impl)
    assert torch.equal(loss, torch.zeros(9))
    loss.sum().backward()
    assert s.grad is None or not s.grad.any()


def test_gradcheck_chunked_float64():
    weak, strong, bank, labels, weights = _data(5, 11, 3, 3, torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: instance_consistency_loss(weak, x, bank, labels, weights, 0.7, impl="chunked"),
        (strong.requires_grad_(),),
    )


def test_gradcheck_triton_float32(need_triton):
    weak, strong, bank, labels, weights = _data(3, 7, 3, 2)
    assert torch.autograd.gradcheck(
        lambda x: instance_consistency_loss(weak, x.float(), bank, labels, weights, 1.0, impl="triton").double(),
        (strong.double().requires_grad_(),),
        eps=1e-2,
        atol=1e-2,
        rtol=1e-2,
    )


@pytest.mark.parametrize(
    "key, value, name",
    [
        ("weak", "int", "weak"),
        ("strong", "short", "strong"),
        ("bank", "wrong_d", "bank"),
        ("bank_labels", "float", "bank_labels"),
        ("class_weights", "short", "class_weights"),
        ("temperature", -1.0, "temperature"),
    ],
)
def test_misuse_raises_value_error_naming_the_argument(key, value, name):
    weak, strong, bank, labels, weights = _data(4, 6, 3, 3)
    args = {
        "weak": weak,
        "strong": strong,
        "bank": bank,
        "bank_labels": labels,
        "class_weights": weights,
        "temperature": 0.1,
    }
    edits = {
        "int": args[key].long() if isinstance(args[key], torch.Tensor) else None,
        "short": args[key][:-1] if isinstance(args[key], torch.Tensor) else None,
        "wrong_d": bank[:, :2],
        "float": labels.float(),
    }
    args[key] = edits[value] if isinstance(value, str) else value
    with pytest.raises(ValueError, match=name):
        instance_consistency_loss(**args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_triton_matches_reference(dtype, assert_close):
    weak, strong, bank, labels, weights = (t.cuda() for t in _data(1000, 3001, 256, 19))
    weak, strong, bank = (torch.nn.functional.normalize(t, dim=1).to(dtype) for t in (weak, strong, bank))
    s = strong.clone().requires_grad_()
    loss = instance_consistency_loss(weak, s, bank, labels, weights, 0.1, impl="triton")
    s64 = strong.double().requires_grad_()
    ref = instance_consistency_loss(weak.double(), s64, bank.double(), labels, weights.double(), 0.1, impl="torch")
    assert_close(loss, ref, 1e-3, 1e-3, "loss")
    loss.sum().backward()
    ref.sum().backward()
    assert_close(s.grad, s64.grad, 5e-2 if dtype == torch.bfloat16 else 1e-2, 1e-2, "grad")
