"""TDI: each component against a direct reimplementation of its formula, and runs through the loop."""

import math

import pytest
import torch

from tests.helpers import check_resume_exact, pseudo_labelled_step, tiny_config
from udaseg.data.labels import IGNORE_INDEX
from udaseg.methods.base import Step
from udaseg.methods.tdi import TDI, TDIOptions, info_nce_pairs, pixel_contrast, prototype_contrast

C = 4


def direct_info_nce(a, b, tau, valid=None):
    """-log(exp(s_i,partner) / sum_{j != i} exp(s_ij)) over the kept rows of [a; b], by loops."""
    z = torch.cat([a, b]).double()
    n = a.shape[0]
    keep = [True] * (2 * n) if valid is None else valid.repeat(2).tolist()
    losses = []
    for i in range(2 * n):
        if not keep[i]:
            continue
        partner = i + n if i < n else i - n
        den = sum(math.exp(z[i] @ z[j] / tau) for j in range(2 * n) if j != i and keep[j])
        losses.append(-(z[i] @ z[partner] / tau - math.log(den)))
    return sum(losses) / len(losses)


def test_info_nce_matches_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=g).softmax(1), torch.randn(5, 3, generator=g).softmax(1)
    assert info_nce_pairs(a, b, 0.05).item() == pytest.approx(float(direct_info_nce(a, b, 0.05)), rel=1e-4)
    valid = torch.tensor([True, False, True, True, False])
    assert info_nce_pairs(a, b, 0.2, valid).item() == pytest.approx(float(direct_info_nce(a, b, 0.2, valid)), rel=1e-4)


def test_pixel_contrast_uses_the_same_location_of_the_other_view_as_positive():
    g = torch.Generator().manual_seed(1)
    la, lb = torch.randn(2, C, 3, 4, generator=g), torch.randn(2, C, 3, 4, generator=g)
    valid = torch.rand(2, 3, 4, generator=g) < 0.7
    got = pixel_contrast(la, lb, valid, count=100, temperature=0.05, generator=torch.Generator())  # all pixels
    expected = []
    for i in range(2):
        pa = la[i].permute(1, 2, 0)[valid[i]].softmax(1)
        pb = lb[i].permute(1, 2, 0)[valid[i]].softmax(1)
        expected.append(direct_info_nce(pa, pb, 0.05))
    assert got.item() == pytest.approx(float(sum(expected) / 2), rel=1e-4)
    sampled = pixel_contrast(la, lb, valid, count=3, temperature=0.05, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(sampled.item())


def test_prototype_contrast_matches_class_means_of_each_view():
    g = torch.Generator().manual_seed(2)
    la, lb = torch.randn(2, C, 3, 4, generator=g), torch.randn(2, C, 3, 4, generator=g)
    labels = torch.randint(0, C - 1, (2, 3, 4), generator=g)  # class C-1 never present
    labels[1, 0] = IGNORE_INDEX
    got = prototype_contrast(la, lb, labels, temperature=1 / 7)
    expected = []
    for i in range(2):
        present = [k for k in range(C) if (labels[i] == k).any()]
        pa = torch.stack([la[i].permute(1, 2, 0)[labels[i] == k].mean(0) for k in present]).softmax(1)
        pb = torch.stack([lb[i].permute(1, 2, 0)[labels[i] == k].mean(0) for k in present]).softmax(1)
        expected.append(direct_info_nce(pa, pb, 1 / 7))
    assert got.item() == pytest.approx(float(sum(expected) / 2), rel=1e-4)


def fake_step(seed=1, b=2, h=16, w=32) -> Step:
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    mask[..., : w // 3] = True
    step = pseudo_labelled_step(C, seed, b, h, w, mix_mask=mask, mix_aligned=~mask, class_probs=None)
    label = step.pseudo_label
    step.mix_image = torch.where(mask[:, None], step.source_image, step.target_image)
    step.mix_label = torch.where(mask, step.source_label, label)
    return step


def test_target_to_source_mix_pastes_confident_pseudo_labelled_pixels():
    m, step = TDI(TDIOptions(strong_view=False), num_classes=C), fake_step()
    m.mix(step)
    confident = (step.pseudo_label != IGNORE_INDEX) & (step.pseudo_confidence > 0.95)
    assert 0 < confident.float().mean() < 1
    ex = m.scratch(step)
    assert torch.equal(ex["image"], torch.where(confident[:, None], step.target_image, step.source_image))
    assert torch.equal(ex["label"], torch.where(confident, step.pseudo_label, step.source_label))


def test_losses_reach_the_student_and_prototype_labels_follow_the_rule():
    m, step = TDI(TDIOptions(), num_classes=C), fake_step()
    m.mix(step)
    step.student_mix = {
        "logits": torch.nn.functional.interpolate(
            step.student(step.mix_image)["logits"], size=(16, 32), mode="bilinear"
        )
    }
    losses = m.losses(step)
    assert set(losses) == {"t2s_ce", "pixel_nce", "proto_nce"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in step.student.classifier.parameters())
    labels = m.prototype_labels(step, ~step.mix_mask)
    expected = torch.where(
        step.mix_mask, step.source_label, torch.where(step.pseudo_confidence > 0.95, step.pseudo_label, IGNORE_INDEX)
    )
    assert torch.equal(labels, expected)
    assert torch.equal(TDI.weak_mix(step), torch.where(step.mix_mask[:, None], step.source_image, step.target_image))


TINY = {"data.rcs": False, "methods.tdi.pixels": 64}  # rare-class sampling is not what these tests check


def test_trains_and_resumes_exactly(tmp_path):
    check_resume_exact(tiny_config("tdi", **TINY), tmp_path, stop_after=3)
    assert torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["methods"]["tdi"] == {}


def test_combines_with_hiast_and_diga(tmp_path):  # under DDP: tests/methods/test_hiast.py
    from udaseg.train import train

    result = train(tiny_config("hiast+diga+tdi", **{"data.rcs": False, "train.warmup": "diga"}), tmp_path)
    assert math.isfinite(result["miou"])
