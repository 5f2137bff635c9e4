"""AMP in the methods: with `step.compute_dtype = bfloat16` (what the loop sets on CUDA with train.amp) DIDA and CPSL
hand the kernels bf16 embeddings, banks, queues and class weights; the Triton kernels (run by the interpreter) then
stay within stated tolerances of the float64 reference on the unrounded inputs. The numbers are in
docs/methods/dida_cpsl.md ("Mixed precision")."""

import os

import pytest
import torch

from tests.helpers import triton_kernels_present
from udaseg.data.labels import IGNORE_INDEX
from udaseg.kernels import use_impl
from udaseg.methods import cpsl as cpsl_module
from udaseg.methods import dida as dida_module
from udaseg.methods.base import Step
from udaseg.methods.cpsl import CPSL, CPSLOptions
from udaseg.methods.dida import DIDA, DIDAOptions

pytestmark = pytest.mark.skipif(
    not triton_kernels_present() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs triton and TRITON_INTERPRET=1 (set before the kernels are imported)",
)

C, FEAT = 19, 32  # Cityscapes' 19 classes; D = 64 embeddings (the interpreter's cost grows with D; the kernel
#                   tests cover the contract's D = 256)
D = 64


def fake_step(dtype: torch.dtype, seed: int = 0) -> Step:
    """After self_training's pseudo_labels hook, with the student's features on the mix; 2 x 8 x 8 feature pixels."""
    g = torch.Generator().manual_seed(seed)
    probs = (3 * torch.randn(2, C, 16, 16, generator=g)).softmax(1)
    label = probs.argmax(1)
    label[:, 0] = IGNORE_INDEX
    feats = torch.randn(2, FEAT, 8, 8, generator=g)
    return Step(
        iteration=0,
        source_image=torch.rand(2, 3, 16, 16, generator=g),
        source_label=torch.randint(0, C, (2, 16, 16), generator=g),
        target_image=torch.rand(2, 3, 16, 16),
        generator=torch.Generator().manual_seed(seed),
        teacher_target={"probs": probs, "logits": probs.log(), "features": feats},
        student_source={"features": torch.randn(2, FEAT, 8, 8, generator=g)},
        student_mix={"features": (feats + 0.3 * torch.randn(2, FEAT, 8, 8, generator=g)).requires_grad_()},
        pseudo_label=label,
        pseudo_weight=torch.ones(2, 16, 16),
        pseudo_confidence=probs.amax(1),
        class_probs=probs,
        compute_dtype=dtype,
    )


def spy(module, name: str, monkeypatch) -> list:
    """Record the floating dtypes each call of module.<name> receives."""
    calls, fn = [], getattr(module, name)

    def wrapped(*args, **kwargs):
        calls.append([a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()])
        return fn(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


def run_dida(dtype: torch.dtype, impl: str):
    torch.manual_seed(0)
    m = DIDA(
        DIDAOptions(embed_dim=D, instance_pixels=10_000, writes_per_class=4, bank_per_class=4),
        num_classes=C,
        feature_dim=FEAT,
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a bank of keys like the queries: entries near the pixels they will be compared with
        m.bank.copy_(m.key_head(torch.randn(4, FEAT, 4, 5, generator=g)).permute(0, 2, 3, 1).reshape(-1, D)[:76])
        m.bank_labels.copy_(torch.arange(76) // 4)
    step = fake_step(dtype)
    with use_impl(impl):
        m.pseudo_labels(step)
        loss = m.losses(step)["instance"]
    loss.backward()
    return step, loss, step.student_mix["features"].grad


def test_dida_feeds_the_kernels_bf16_and_stays_close_to_float64(monkeypatch):
    lse_calls = spy(dida_module, "bank_class_logsumexp", monkeypatch)
    loss_calls = spy(dida_module, "instance_consistency_loss", monkeypatch)
    step, loss, grad = run_dida(torch.bfloat16, "triton")
    assert lse_calls and all(d == [torch.bfloat16] * 2 for d in lse_calls)  # query, bank
    assert loss_calls and all(d == [torch.bfloat16] * 4 for d in loss_calls)  # weak, strong, bank, class weights
    ref_step, ref_loss, ref_grad = run_dida(torch.float64, "torch")
    # measured here: P' 2.4e-4, loss 7e-5 relative, gradient 3.9e-3 relative, no label changed
    assert (step.class_probs.double() - ref_step.class_probs).abs().max() < 2e-3
    assert (step.pseudo_label == ref_step.pseudo_label).float().mean() > 0.99
    assert abs(loss.double() - ref_loss) / ref_loss < 1e-3
    assert (grad.double() - ref_grad).norm() / ref_grad.norm() < 2e-2


def run_cpsl(dtype: torch.dtype, impl: str):
    torch.manual_seed(0)
    m = CPSL(
        CPSLOptions(embed_dim=D, queue_size=512, pixels_per_image=64, consistency_pixels=10_000, source_weight=0.0),
        num_classes=C,
        feature_dim=FEAT,
    )
    with torch.no_grad():
        m.push(
            m.key_head(torch.randn(8, FEAT, 8, 8, generator=torch.Generator().manual_seed(1)))
            .permute(0, 2, 3, 1)
            .reshape(-1, D)
        )
    step = fake_step(dtype)
    with use_impl(impl):
        m.pseudo_labels(step)  # prototypes from the class means of the weak keys, then rectification
        out = m.losses(step)
    (out["self_label"] + out["consistency"]).backward()
    return step, out, step.student_mix["features"].grad


def test_cpsl_feeds_the_kernels_bf16_and_stays_close_to_float64(monkeypatch):
    sums_calls = spy(cpsl_module, "class_feature_sums", monkeypatch)
    sink_calls = spy(cpsl_module, "sinkhorn", monkeypatch)
    step, out, grad = run_cpsl(torch.bfloat16, "triton")
    assert sums_calls[0] == [torch.bfloat16]  # the weak keys the prototypes start from
    assert sink_calls and sink_calls[0][0] == torch.bfloat16  # the queue + batch scores (marginal: float32)
    ref_step, ref_out, ref_grad = run_cpsl(torch.float64, "torch")
    # bf16 reaches the Sinkhorn scores and the prototypes' start only; rectification and the losses are float32.
    # Measured here: rectified probabilities 1.3e-3, losses 8e-5 relative, gradient 1.8e-3, no label changed
    assert (step.class_probs.double() - ref_step.class_probs).abs().max() < 1e-2
    assert (step.pseudo_label == ref_step.pseudo_label).float().mean() > 0.99
    for key in ("self_label", "consistency"):
        assert abs(out[key].double() - ref_out[key]) / ref_out[key] < 1e-3, key
    assert (grad.double() - ref_grad).norm() / ref_grad.norm() < 1e-2


def test_float32_stays_float32_on_cpu(monkeypatch):
    """The loop's CPU default: every kernel input float32, as before AMP reached the methods."""
    calls = spy(dida_module, "instance_consistency_loss", monkeypatch)
    run_dida(torch.float32, "auto")
    assert calls and all(d == [torch.float32] * 4 for d in calls)
