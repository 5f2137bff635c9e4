"""CPSL: each component against a direct reimplementation of its formula, state, and runs through the loop."""

import json

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_states_equal, check_resume_exact, run_ddp, tiny_config
from udaseg.data.labels import IGNORE_INDEX
from udaseg.methods.base import Step
from udaseg.methods.cpsl import CPSL, CPSLOptions

C, FEAT, D = 3, 5, 4


def make(**kw) -> CPSL:
    torch.manual_seed(0)
    return CPSL(CPSLOptions(embed_dim=D, **kw), num_classes=C, feature_dim=FEAT)


def fake_step(b=2, h=3, w=4, scale=2, seed=1) -> Step:
    """A step after self_training's pseudo_labels hook (teacher output at image and feature size)."""
    g = torch.Generator().manual_seed(seed)
    H, W = h * scale, w * scale
    probs = torch.rand(b, C, H, W, generator=g).mul(3).softmax(1)
    label = probs.argmax(1)
    label[0, 0, :3] = IGNORE_INDEX
    return Step(
        iteration=0,
        source_image=torch.rand(b, 3, H, W),
        source_label=torch.zeros(b, H, W, dtype=torch.long),
        target_image=torch.rand(b, 3, H, W),
        generator=torch.Generator().manual_seed(seed),
        teacher_target={"probs": probs, "logits": probs.log(), "features": torch.randn(b, FEAT, h, w, generator=g)},
        student_source={"features": torch.randn(b, FEAT, h, w, generator=g)},
        pseudo_label=label,
        pseudo_weight=torch.ones(b, H, W),
        pseudo_confidence=probs.amax(1),
        class_probs=probs,
    )


def sinkhorn_swav(scores, marginal, eps, iters):
    """SwAV's loop in float64: Q = exp(S/eps)/total; columns to marginal, rows to 1/N; return N * Q."""
    q = torch.exp(scores.double() / eps)
    q = q / q.sum()
    n = q.shape[0]
    for _ in range(iters):
        q = q / q.sum(0, keepdim=True) * marginal.double()
        q = q / q.sum(1, keepdim=True) / n
    return (q * n).float()


def weak_keys(m: CPSL, step: Step):
    return F.normalize(m.key_head.module.net(step.teacher_target["features"]), dim=1).permute(0, 2, 3, 1)


# ----------------------------------------------------------------------------- components
def test_prior_is_an_ema_of_the_pseudo_label_histogram_and_feeds_sinkhorn():
    m = make(prior_momentum=0.5, prior_floor=0.05, prototypes_per_class=2)
    hists = [torch.tensor([6, 2, 0]), torch.tensor([1, 1, 2]), torch.tensor([0, 0, 0]), torch.tensor([3, 0, 1])]
    prior, n = torch.full((C,), 1 / C, dtype=torch.float64), 0
    for counts in hists:
        m.update_prior(counts)
        if counts.sum() > 0:  # reference: first histogram replaces the uniform start, then EMA 0.5
            mom = min(1 - 1 / (n + 1), 0.5)
            prior = mom * prior + (1 - mom) * counts.double() / counts.sum()
            n += 1
        torch.testing.assert_close(m.prior, prior)
    floored = prior.clamp(min=0.05) / prior.clamp(min=0.05).sum()
    expect = torch.stack([floored / 2, floored / 2], 1).reshape(-1).float()  # each class's 2 prototypes share it
    torch.testing.assert_close(m.marginal(), expect)
    # the Sinkhorn assignment of queue + batch uses that marginal: columns sum to about N * marginal
    g = torch.Generator().manual_seed(0)
    m.push(F.normalize(torch.randn(50, D, generator=g), dim=1))
    weak = F.normalize(torch.randn(7, D, generator=g), dim=1)
    protos = m.prototypes().detach()
    got = m.assignments(weak, protos)
    rows = torch.cat([m.queue[:50], weak])
    full = sinkhorn_swav(rows @ protos.T, m.marginal(), 0.05, 3)
    torch.testing.assert_close(got, full[-7:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(full.sum(1), torch.ones(57))  # each row a distribution over prototypes


def test_queue_is_a_ring_buffer():
    m = make(queue_size=5)
    ref: list[float] = []
    for n in (2, 2, 3, 0, 7):
        rows = torch.arange(len(ref) + 100, len(ref) + 100 + n).float()[:, None].expand(-1, D)
        m.push(rows)
        ref = (ref + rows[:, 0].tolist())[-5:]
        assert sorted(m.queue[: m.queue_filled, 0].tolist()) == sorted(ref)
    assert m.queue_filled == 5 and m.queue_ptr == (2 + 2 + 3 + 5) % 5  # of 7 rows at once only the last 5 stay


def test_prototypes_start_at_class_means():
    m = make()
    step = fake_step(scale=1)
    step.pseudo_label[:] = 0
    step.pseudo_label[:, :, 2:] = 2  # class 1 absent: its prototype keeps its random start
    start = m.prototypes.weight.detach().clone()
    m.pseudo_labels(step)
    keys = weak_keys(m, step)  # (B, h, w, D)
    for c, cols in ((0, slice(0, 2)), (2, slice(2, 4))):
        mean = F.normalize(keys[:, :, cols].reshape(-1, D).mean(0), dim=0)
        torch.testing.assert_close(m.prototypes.weight[c], mean)
    torch.testing.assert_close(m.prototypes.weight[1], start[1])
    assert m.initialized and torch.equal(m.key_prototypes.module.weight, m.prototypes.weight)


def test_rectification_is_argmax_of_prototype_weight_times_probability():
    m = make(temperature=0.2)
    m.initialized = True
    step = fake_step()
    ignored = step.pseudo_label == IGNORE_INDEX
    probs = step.teacher_target["probs"]
    m.pseudo_labels(step)
    keys = weak_keys(m, step)  # (B, h, w, D)
    cos = keys @ F.normalize(m.key_prototypes.module.weight, dim=1).T  # (B, h, w, C)
    w = (cos / 0.2).softmax(-1).permute(0, 3, 1, 2)
    w_up = F.interpolate(w, probs.shape[-2:], mode="bilinear", align_corners=False)
    rect = w_up * probs
    assert torch.equal(step.pseudo_label, torch.where(ignored, IGNORE_INDEX, rect.argmax(1)))
    torch.testing.assert_close(step.class_probs, rect / rect.sum(1, keepdim=True))
    assert (
        m.scratch(step)["counts"].tolist()
        == torch.bincount(  # prior sees the incoming labels
            probs.argmax(1)[~ignored], minlength=C
        ).tolist()
    )


@pytest.mark.parametrize("view", ["weak", "strong"])
def test_self_labeling_and_consistency_losses_match_their_formulas(view):
    m = make(
        temperature=0.3,
        pixels_per_image=100,
        consistency_pixels=100,
        queue_size=16,
        source_weight=0.0,
        self_label_view=view,
    )
    m.initialized = True
    g = torch.Generator().manual_seed(3)
    m.push(F.normalize(torch.randn(9, D, generator=g), dim=1))
    m.update_prior(torch.tensor([5, 3, 2]))
    with torch.no_grad():
        m.key_prototypes.module.weight.copy_(torch.randn(C, D, generator=g))  # differs from the learnable ones
    step = fake_step()
    m.pseudo_labels(step)
    step.student_mix = {"features": torch.randn(2, FEAT, 3, 4, generator=g, requires_grad=True)}
    out = m.losses(step)
    weak = weak_keys(m, step).reshape(-1, D)  # every pixel is sampled (counts above N), in order
    strong = F.normalize(m.head.net(step.student_mix["features"]), dim=1).permute(0, 2, 3, 1).reshape(-1, D)
    protos = F.normalize(m.prototypes.weight, dim=1)
    assign = sinkhorn_swav(torch.cat([m.queue[:9], weak]) @ protos.T, m.marginal(), 0.05, 3)[9:]
    scored = weak if view == "weak" else strong
    self_label = -(assign * (scored @ protos.T / 0.3).log_softmax(1)).sum(1).mean()
    key = F.normalize(m.key_prototypes.module.weight, dim=1)
    t, s = (weak @ key.T / 0.3).softmax(1), (strong @ key.T / 0.3).softmax(1)
    kl = (t * (t.log() - s.log())).sum(1).mean()
    torch.testing.assert_close(out["self_label"], 0.1 * self_label, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["consistency"], 5.0 * kl, rtol=1e-4, atol=1e-6)
    out["self_label"].backward(retain_graph=True)
    assert m.prototypes.weight.grad.abs().sum() > 0
    head_grad = m.head.net[0].weight.grad
    if view == "weak":  # the official loss: EMA features, only the prototypes learn from it
        assert head_grad is None or head_grad.abs().sum() == 0
    else:  # swapped prediction: the student's strong view learns too
        assert head_grad.abs().sum() > 0
    out["consistency"].backward()
    assert m.head.net[0].weight.grad.abs().sum() > 0


def test_source_prototype_loss_is_ce_of_class_max_cosine_on_labelled_pixels():
    m = make(temperature=0.2, prototypes_per_class=2, source_pixels_per_class=1000)
    m.initialized = True
    g = torch.Generator().manual_seed(5)
    step = fake_step()
    m.pseudo_labels(step)
    step.student_mix = {"features": torch.randn(2, FEAT, 3, 4, generator=g)}
    feats = torch.randn(2, FEAT, 3, 4, generator=g, requires_grad=True)
    step.student_source = {"features": feats}
    lab = torch.randint(0, C, (2, 3, 4), generator=g)  # one label per feature pixel (a 2x2 image patch)
    lab[:, 0] = IGNORE_INDEX  # the first row of feature pixels is ignored
    step.source_label = lab.repeat_interleave(2, 1).repeat_interleave(2, 2)
    out = m.losses(step)
    lab = lab.reshape(-1)
    emb = F.normalize(m.head.net(feats), dim=1).permute(0, 2, 3, 1).reshape(-1, D)
    protos = F.normalize(m.prototypes.weight, dim=1)
    logits = (emb @ protos.T).view(-1, C, 2).amax(2) / 0.2
    expected = F.cross_entropy(logits, lab, ignore_index=IGNORE_INDEX)  # every labelled pixel (per class < 1000)
    torch.testing.assert_close(out["proto_source"], expected, rtol=1e-5, atol=1e-6)
    out["proto_source"].backward()
    assert feats.grad.abs().sum() > 0 and m.prototypes.weight.grad.abs().sum() > 0


def test_only_target_pixels_of_the_mix_are_used():
    m = make(pixels_per_image=100)
    m.initialized = True
    step = fake_step()
    m.pseudo_labels(step)
    step.mix_mask = torch.zeros(2, 6, 8, dtype=torch.bool)
    step.mix_mask[:, :, :4] = True  # left half pasted from the source
    step.mix_aligned = ~step.mix_mask
    step.student_mix = {"features": torch.randn(2, FEAT, 3, 4)}
    m.losses(step)
    weak = weak_keys(m, step)[:, :, 2:].reshape(-1, D)  # the right half only
    assert m.scratch(step)["sampled"].shape == (12, D)
    assert {tuple(r.tolist()) for r in m.scratch(step)["sampled"]} == {tuple(r.tolist()) for r in weak}


def test_load_rejects_a_queue_of_another_size():  # the round trip itself: tests/methods/test_contract.py
    with pytest.raises(ValueError, match="queue has shape"):
        make(queue_size=9).load_state_dict(make(queue_size=8).state_dict())


# ----------------------------------------------------------------------------- through the loop
def test_trains_and_resumes(tmp_path):
    check_resume_exact(tiny_config("cpsl"), tmp_path, stop_after=3)  # bitwise: weights, heads, method state
    rows = [json.loads(r) for r in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    adapt = [r for r in rows if r.get("stage") == "adapt"]
    assert adapt and all("cpsl/self_label" in r and "cpsl/consistency" in r for r in adapt)
    payload = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    state = payload["methods"]["cpsl"]
    assert state["initialized"] and state["queue_filled"] > 0 and state["prior_steps"] == 3
    assert {"cpsl.head", "cpsl.prototypes"} <= set(payload["heads"])


@pytest.mark.slow
def test_dida_cpsl_two_process_ddp_state_is_identical_on_both_ranks(tmp_path):
    states = run_ddp(tiny_config("dida+cpsl"), tmp_path)
    assert (states[0]["methods"]["dida"]["bank_labels"] >= 0).any()
    assert states[0]["methods"]["cpsl"]["queue_filled"] > 0
    assert_states_equal(states[0], states[1])
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("stage") == "adapt"]
    assert {"dida/instance", "cpsl/self_label", "cpsl/consistency"} <= set(rows[-1])


def test_unknown_self_label_view_is_rejected():
    with pytest.raises(ValueError, match="self_label_view"):
        make(self_label_view="teacher")
