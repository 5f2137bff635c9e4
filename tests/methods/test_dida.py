"""DIDA: each component against a direct reimplementation of its formula, state, and runs through the loop."""

import json

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import check_resume_exact, tiny_config
from udaseg.data.labels import IGNORE_INDEX
from udaseg.methods.base import Step
from udaseg.methods.common import top_per_class
from udaseg.methods.dida import DIDA, DIDAOptions, boundary_mask

C, FEAT, D = 3, 5, 4


def make(**kw) -> DIDA:
    torch.manual_seed(0)
    return DIDA(DIDAOptions(embed_dim=D, **kw), num_classes=C, feature_dim=FEAT)


def fake_step(b=2, h=3, w=4, scale=2, seed=1) -> Step:
    """A step after self_training's pseudo_labels hook: teacher output at image (H = scale*h) / feature size."""
    g = torch.Generator().manual_seed(seed)
    H, W = h * scale, w * scale
    probs = torch.rand(b, C, H, W, generator=g).softmax(1)
    label = probs.argmax(1)
    label[0, 0, :3] = IGNORE_INDEX  # e.g. ignore_top of the self_training plug-in
    return Step(
        iteration=0,
        source_image=torch.rand(b, 3, H, W, generator=g),
        source_label=torch.randint(0, C, (b, H, W), generator=g),
        target_image=torch.rand(b, 3, H, W),
        generator=torch.Generator().manual_seed(seed),
        teacher_target={"probs": probs, "logits": probs.log(), "features": torch.randn(b, FEAT, h, w, generator=g)},
        pseudo_label=label,
        pseudo_weight=torch.ones(b, H, W),
        pseudo_confidence=probs.amax(1),
        class_probs=probs,
    )


def fill_bank(m: DIDA, seed=2) -> None:
    g = torch.Generator().manual_seed(seed)
    m.bank.copy_(F.normalize(torch.randn(m.bank.shape, generator=g), dim=1))
    m.bank_labels.copy_(torch.randint(-1, C, m.bank_labels.shape, generator=g))  # some empty slots


def bank_softmax(query, bank, labels, tau):
    """s (N, M): softmax over the valid slots of q . b / tau; empty slots get 0."""
    logits = query @ bank.T / tau
    return logits.masked_fill(labels[None] < 0, float("-inf")).softmax(1)


# ----------------------------------------------------------------------------- components
def test_boundary_mask_is_the_3x3_rule():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, C + 1, (2, 5, 6), generator=g)
    labels[labels == C] = IGNORE_INDEX
    got = boundary_mask(labels, C)
    for b in range(2):
        for y in range(5):
            for x in range(6):
                if labels[b, y, x] == IGNORE_INDEX:
                    assert not got[b, y, x]
                    continue
                patch = labels[b, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
                assert bool(got[b, y, x]) == (len(set(patch[patch != IGNORE_INDEX].tolist())) >= 2)


def test_bank_queues_wrap_around_per_class():
    m = make(bank_per_class=3, writes_per_class=3)
    ring = {c: [None] * 3 for c in range(C)}
    ptr = dict.fromkeys(range(C), 0)
    count = 0
    for labels in ([0, 0, 1], [0, 0, -1, 2], [1, 0, 1, 1], [2, 2, 2], [0]):
        emb = torch.arange(count, count + len(labels)).float()[:, None].expand(-1, D).contiguous()
        count += len(labels)
        m.write(emb, torch.tensor(labels))
        for e, c in zip(emb, labels):  # the reference: one ring buffer per class, entries in order
            if c >= 0:
                ring[c][ptr[c]] = float(e[0])
                ptr[c] = (ptr[c] + 1) % 3
        for c in range(C):
            block = slice(c * 3, (c + 1) * 3)
            expect_labels = [c if v is not None else -1 for v in ring[c]]
            assert m.bank_labels[block].tolist() == expect_labels
            assert [float(v) if lab >= 0 else None for v, lab in zip(m.bank[block, 0], expect_labels)] == ring[c]
        assert m.bank_ptr.tolist() == [ptr[c] for c in range(C)]


def test_top_per_class_keeps_the_k_highest_of_each_class():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, C, (40,), generator=g)
    priority = torch.rand(40, generator=g)
    pos, rank = top_per_class(labels, priority, k=4)
    for c in range(C):
        members = [i for i in range(40) if labels[i] == c]
        expect = sorted(members, key=lambda i: -float(priority[i]))[:4]
        got = pos[labels[pos] == c].tolist()
        assert got == expect and rank[labels[pos] == c].tolist() == list(range(len(expect)))


def test_dynamic_update_prefers_boundaries_and_bounds_each_class():
    m = make(writes_per_class=2, candidates_per_class=1000, bank_threshold=0.0)
    step = fake_step(b=1, h=4, w=6, scale=1)
    step.source_label[:] = 0
    step.source_label[0, :, 3:] = 1  # two halves: boundary columns 2 and 3
    step.pseudo_label[:] = IGNORE_INDEX  # no target pixel enters
    m.pseudo_labels(step)
    step.student_source = {"features": torch.randn(1, FEAT, 4, 6)}
    emb, lab = m.select_writes(step)
    assert sorted(lab.tolist()) == [0, 0, 1, 1]  # two per class: bounded, and no class starved
    keys = m.key_head(step.student_source["features"])[0]  # (D, h, w)
    boundary = {tuple(keys[:, y, x].tolist()) for y in range(4) for x in (2, 3)}
    assert all(tuple(e.tolist()) in boundary for e in emb)


def test_dynamic_update_prefers_hard_instances():
    m = make(writes_per_class=2, candidates_per_class=1000, temperature=0.5)
    fill_bank(m)
    step = fake_step(b=1, h=4, w=6, scale=1)
    step.source_label[:] = 1  # one class, no boundary: hardness alone decides
    step.pseudo_label[:] = IGNORE_INDEX
    m.pseudo_labels(step)
    step.student_source = {"features": torch.randn(1, FEAT, 4, 6)}
    emb, lab = m.select_writes(step)
    keys = m.key_head(step.student_source["features"]).flatten(2)[0].T  # (h*w, D)
    s = bank_softmax(keys, m.bank, m.bank_labels, 0.5)
    q_own = s[:, m.bank_labels == 1].sum(1)  # instance probability of the own class
    hardest = keys[q_own.argsort()[:2]]
    assert lab.tolist() == [1, 1]
    torch.testing.assert_close(emb, hardest)


def test_scatter_fuses_bank_distribution_into_pseudo_labels():
    m = make(alpha=0.6, temperature=0.2)
    fill_bank(m)
    step = fake_step()
    ignored = step.pseudo_label == IGNORE_INDEX
    probs = step.teacher_target["probs"]
    m.pseudo_labels(step)
    weak = F.normalize(m.key_head.module.net(step.teacher_target["features"]), dim=1)  # (B, D, h, w)
    b, _, h, w = weak.shape
    s = bank_softmax(weak.permute(0, 2, 3, 1).reshape(-1, D), m.bank, m.bank_labels, 0.2)  # (N, M)
    q = torch.stack([s[:, m.bank_labels == c].sum(1) for c in range(C)], 1)  # scatter: sum per class
    q_up = F.interpolate(q.view(b, h, w, C).permute(0, 3, 1, 2), probs.shape[-2:], mode="bilinear", align_corners=False)
    fused = 0.6 * probs + 0.4 * q_up
    torch.testing.assert_close(step.class_probs, fused)
    assert torch.equal(step.pseudo_label, torch.where(ignored, IGNORE_INDEX, fused.argmax(1)))
    torch.testing.assert_close(step.pseudo_confidence, fused.amax(1))


def test_gather_weights_the_instance_target_by_fused_probabilities():
    m = make(alpha=0.5, temperature=0.3, instance_pixels=10_000)
    fill_bank(m)
    step = fake_step()
    m.pseudo_labels(step)
    step.student_mix = {"features": torch.randn(2, FEAT, 3, 4, requires_grad=True)}
    loss = m.losses(step)["instance"]
    # direct formula: t_m ∝ s_m(weak) * P'_{label m}, loss = -sum_m t_m log s_m(strong), mean over pixels
    weak = m.scratch(step)["weak"]
    strong = F.normalize(m.head.net(step.student_mix["features"]), dim=1).permute(0, 2, 3, 1).reshape(-1, D)
    probs = F.adaptive_avg_pool2d(step.teacher_target["probs"], (3, 4)).permute(0, 2, 3, 1).reshape(-1, C)
    s_weak = bank_softmax(weak, m.bank, m.bank_labels, 0.3)
    q = torch.stack([s_weak[:, m.bank_labels == c].sum(1) for c in range(C)], 1)
    p_fused = 0.5 * probs + 0.5 * q
    t = s_weak * p_fused[:, m.bank_labels.clamp(min=0)]
    t = t / t.sum(1, keepdim=True)
    log_s = bank_softmax(strong, m.bank, m.bank_labels, 0.3).clamp(min=1e-30).log()
    expect = 0.5 * (-(t * log_s).sum(1)).mean()  # instance_weight 0.5
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert m.head.net[0].weight.grad is not None and step.student_mix["features"].grad.abs().sum() > 0


def test_load_rejects_a_bank_of_another_shape():  # the round trip itself: tests/methods/test_contract.py
    with pytest.raises(ValueError, match="bank has shape"):
        make(bank_per_class=9).load_state_dict(make().state_dict())


# ----------------------------------------------------------------------------- through the loop
def test_trains_and_resumes(tmp_path):
    check_resume_exact(tiny_config("dida"), tmp_path, stop_after=3)  # bitwise: weights, heads, method state
    rows = [json.loads(r) for r in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    adapt = [r for r in rows if r.get("stage") == "adapt"]
    assert adapt and all(r["dida/instance"] >= 0 for r in adapt)
    payload = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    assert (payload["methods"]["dida"]["bank_labels"] >= 0).any() and "dida.head" in payload["heads"]


# two-process DDP: tests/methods/test_cpsl.py runs dida+cpsl, which covers both methods' state (one spawn);
# torch vs Triton kernels through the loop: tests/methods/test_contract.py
