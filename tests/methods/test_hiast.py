"""HIAST: each component against a direct reimplementation of its formula, state, and runs through the loop."""

import math

import numpy as np
import pytest
import torch

from tests.helpers import assert_states_equal, check_resume_exact, run_ddp, tiny_config
from udaseg.data.labels import IGNORE_INDEX
from udaseg.methods.base import Step
from udaseg.methods.hiast import HIAST, HIASTOptions, class_quantiles, hard_class_mask, region_losses

C = 4


def fake_step(b=2, h=6, w=8, seed=1) -> Step:
    """A step after self_training's hooks: teacher output, pseudo-labels, and a ClassMix batch."""
    g = torch.Generator().manual_seed(seed)
    probs = (3 * torch.randn(b, C, h, w, generator=g)).softmax(1)
    label = probs.argmax(1)
    label[0, 0] = IGNORE_INDEX  # e.g. ignore_top of the self_training plug-in
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    mask[:, :, : w // 4] = True  # ClassMix source pixels on the left
    source_label = torch.randint(0, C, (b, h, w), generator=g)
    step = Step(
        iteration=0,
        source_image=torch.rand(b, 3, h, w, generator=g),
        source_label=source_label,
        target_image=torch.rand(b, 3, h, w, generator=g),
        generator=torch.Generator().manual_seed(seed),
        teacher_target={"probs": probs, "logits": probs.log()},
        pseudo_label=label,
        pseudo_weight=torch.full((b, h, w), 0.5),
        pseudo_confidence=probs.amax(1),
        mix_mask=mask,
        mix_aligned=~mask,
    )
    step.mix_image = torch.where(mask[:, None], step.source_image, step.target_image)
    step.mix_label = torch.where(mask, source_label, label)
    step.mix_weight = torch.where(mask, 1.0, step.pseudo_weight)
    return step


def make(**kw) -> HIAST:
    return HIAST(HIASTOptions(**kw), num_classes=C)


def test_class_quantiles_match_numpy_with_the_prior_prepended():
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(300, generator=g)
    labels = torch.randint(0, C + 1, (300,), generator=g)  # label C is out of range: skipped
    labels[labels == 2] = 1  # class 2 empty: its quantile is the prior itself
    labels[:5] = IGNORE_INDEX
    levels, prior = torch.tensor([0.0, 0.3, 0.5, 1.0]), torch.tensor([0.9, 0.8, 0.7, 0.95])
    got = class_quantiles(conf, labels, levels, prior)
    for c in range(C):
        values = np.concatenate([[prior[c].item()], conf[labels == c].double().numpy()])
        assert got[c].item() == pytest.approx(np.quantile(values, levels[c].item()), abs=1e-6)


def test_ias_selection_and_threshold_update_follow_the_formula():
    m, step = make(), fake_step()
    before = step.pseudo_label.clone()
    probs = step.teacher_target["probs"]
    conf, arg = probs.max(1)
    theta = np.full(C, 0.9)
    expected_theta = np.empty(C)
    for c in range(C):
        values = np.concatenate([[0.9], conf[arg == c].double().numpy()])
        psi = np.quantile(values, 1 - 0.5 * theta[c] ** 8)
        expected_theta[c] = min(0.9 * theta[c] + 0.1 * psi, 0.999)
    m.pseudo_labels(step)
    keep = conf.double().numpy() >= expected_theta[arg.numpy()]
    expected = np.where(keep, before.numpy(), IGNORE_INDEX)
    np.testing.assert_array_equal(step.pseudo_label.numpy(), expected)
    assert (step.pseudo_label[0, 0] == IGNORE_INDEX).all()  # earlier plug-ins' ignores survive
    m.update(step)
    np.testing.assert_allclose(m.thresholds.numpy(), expected_theta, atol=1e-6)


def test_class_confidence_is_a_bias_corrected_ema_of_selected_pixels():
    m = make(alpha=1.0, theta0=0.0)  # keep every pixel above psi
    for seed in (1, 2):
        step = fake_step(seed=seed)
        m.pseudo_labels(step)
        m.update(step)
    # recompute: two EMA steps of the per-class mean confidence of the kept pixels
    num, den = np.zeros(C), np.zeros(C)
    theta = np.zeros(C)
    for seed in (1, 2):
        probs = fake_step(seed=seed).teacher_target["probs"]
        conf, arg = (t.double().numpy() for t in probs.max(1))
        th = np.empty(C)
        for c in range(C):
            psi = np.quantile(np.concatenate([[theta[c]], conf[arg == c]]), 1 - theta[c] ** 8)
            th[c] = min(0.9 * theta[c] + 0.1 * psi, 0.999)
        theta = th
        kept = conf >= th[arg.astype(int)]
        for c in range(C):
            sel = kept & (arg == c)
            if sel.any():
                num[c] = 0.99 * num[c] + 0.01 * conf[sel].mean()
                den[c] = 0.99 * den[c] + 0.01
    got, seen = m.class_confidence()
    np.testing.assert_array_equal(seen.numpy(), den > 0)
    np.testing.assert_allclose(got.numpy()[den > 0], (num / np.maximum(den, 1e-12))[den > 0], atol=1e-5)


def test_hard_classes_are_the_least_confident_seen_ones():
    conf = torch.tensor([0.5, 0.9, 0.2, 0.0])
    seen = torch.tensor([True, True, True, False])
    assert hard_class_mask(conf, seen, 2).tolist() == [True, False, True, False]
    assert hard_class_mask(conf, seen, 10).tolist() == [True, True, True, False]


def test_pool_is_a_ring_buffer_with_class_counts():
    m = make(pool_size=3)
    for i in range(4):
        labels = torch.full((1, 2, 3), i % C, dtype=torch.uint8)
        labels[0, 0, 0] = 255
        m.push(torch.full((1, 3, 2, 3), i, dtype=torch.uint8), labels, torch.tensor([i / 10]))
    assert m.pool["size"] == 3 and m.pool["next"] == 1
    assert m.pool["images"][:, 0, 0, 0].tolist() == [3, 1, 2]  # entry 0 was overwritten by the 4th crop
    expected = torch.zeros(3, C, dtype=torch.long)
    for slot, i in enumerate([3, 1, 2]):
        expected[slot, i % C] = 5
    assert torch.equal(m.pool["counts"], expected)


def test_paste_puts_the_donors_hard_class_pixels_on_the_target_part():
    m = make(hard_classes=1, donor_strong_view=False, pool_size=2)
    m.confidence_num, m.confidence_den = torch.tensor([0.9, 0.2, 0.8, 0.7]), torch.ones(C)  # class 1 is hard
    step = fake_step()
    donor_label = torch.tensor([[0, 1, 1, 2, 1, 3, 1, 1]]).repeat(6, 1)[None].to(torch.uint8)  # (1, H, W)
    donor_image = torch.randint(0, 256, (1, 3, 6, 8), dtype=torch.uint8)
    m.push(donor_image, donor_label, torch.tensor([0.7]))
    m.push(donor_image, torch.zeros_like(donor_label), torch.tensor([0.1]))  # holds no hard class: never drawn
    old_image, old_label, old_weight = step.mix_image.clone(), step.mix_label.clone(), step.mix_weight.clone()
    m.mix(step)
    paste = (donor_label.long() == 1) & ~step.mix_mask  # (B, H, W): donor 0 for both images
    assert torch.equal(m.scratch(step)["paste_mask"], paste)
    exp_image = torch.where(paste[:, None], donor_image.float() / 255, old_image)
    torch.testing.assert_close(step.mix_image, exp_image)
    assert torch.equal(step.mix_label, torch.where(paste, 1, old_label))
    torch.testing.assert_close(step.mix_weight, torch.where(paste, 0.7, old_weight))


def test_region_regularisers_match_their_definitions():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, C, 5, 6, generator=g, requires_grad=True)
    q = torch.randn(2, C, 5, 6, generator=g).softmax(1)
    labelled = torch.rand(2, 5, 6, generator=g) < 0.5
    unlabelled = ~labelled & (torch.rand(2, 5, 6, generator=g) < 0.7)
    got = region_losses(logits, q, labelled, unlabelled)
    p = logits.detach().softmax(1)
    u = torch.full_like(p, 1 / C)
    kl = (u * (u / p).log()).sum(1)
    ent = -(p * p.log()).sum(1)
    sce = -(q * p.log()).sum(1)
    torch.testing.assert_close(got["smooth"], kl[labelled].mean() / C)
    torch.testing.assert_close(got["sharpen"], ent[unlabelled].mean() / C)
    torch.testing.assert_close(got["consistency"], sce[unlabelled].mean() / C)
    sum(got.values()).backward()
    assert logits.grad.abs().sum() > 0


def test_losses_use_target_regions_of_the_mix():
    m, step = make(), fake_step()
    step.student_mix = {"logits": torch.randn(2, C, 6, 8)}
    got = m.losses(step)
    target = ~step.mix_mask
    exp = region_losses(
        step.student_mix["logits"],
        step.teacher_target["probs"],
        (step.mix_label != IGNORE_INDEX) & target,
        (step.mix_label == IGNORE_INDEX) & target,
    )
    for k, w in (("smooth", 0.1), ("sharpen", 1.0), ("consistency", 0.5)):
        torch.testing.assert_close(got[k], w * exp[k])


def test_load_rejects_thresholds_of_another_class_count():  # round trip: tests/methods/test_contract.py
    with pytest.raises(ValueError, match="thresholds"):
        HIAST(HIASTOptions(), num_classes=C + 1).load_state_dict(make().state_dict())


TINY = {"data.rcs": False, "methods.hiast.pool_size": 4}  # rare-class sampling is not what these tests check


def test_trains_and_resumes_exactly(tmp_path):
    check_resume_exact(tiny_config("hiast", **TINY), tmp_path, stop_after=3)
    state = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["methods"]["hiast"]
    assert state["pool"]["size"] == 4 and math.isfinite(float(state["thresholds"].sum()))


@pytest.mark.slow
def test_two_process_ddp_state_of_hiast_diga_tdi_is_identical_on_both_ranks(tmp_path):
    """One DDP run for the three plug-ins of this file's family (spawning costs ~25 s a run)."""
    cfg = tiny_config("hiast+diga+tdi", **TINY, **{"train.warmup": "diga", "methods.tdi.pixels": 64})
    states = run_ddp(cfg, tmp_path)
    assert_states_equal(states[0], states[1])
    methods = states[0]["methods"]
    assert methods["hiast"]["pool"]["size"] == 4  # 2 ranks x batch 2 per step, gathered into one pool
    assert methods["diga"]["updates"].sum() > 0


def test_hooks_do_not_touch_fields_they_do_not_own():
    m, step = make(), fake_step()
    conf, weight = step.pseudo_confidence.clone(), step.pseudo_weight.clone()
    m.pseudo_labels(step)
    m.mix(step)
    assert torch.equal(step.pseudo_confidence, conf) and torch.equal(step.pseudo_weight, weight)
