"""DiGA: each component against a direct reimplementation of its formula, state, and runs through the loop."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import check_resume_exact, tiny_config
from udaseg.data.labels import IGNORE_INDEX
from udaseg.methods.base import Step
from udaseg.methods.diga import (
    DiGA,
    DiGAOptions,
    build_translator,
    cross_domain_mixture,
    fda_translate,
    nearest_centroid_labels,
    stats_translate,
    symmetric_distillation,
)
from udaseg.models import build_model, upsample

C, FEAT = 3, 5


def test_fda_swaps_the_low_frequency_amplitude_and_keeps_the_phase():
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.rand(2, 3, 16, 20, generator=g) * 0.5 + 0.25, torch.rand(2, 3, 16, 20, generator=g) * 0.5 + 0.25
    got = fda_translate(src, tgt, window=0.2)  # b = floor(16 * 0.2) = 3
    fs, ft = np.fft.fft2(src.double().numpy()), np.fft.fft2(tgt.double().numpy())
    amp = np.abs(fs).copy()
    for ky in range(16):
        for kx in range(20):
            if min(ky, 16 - ky) < 3 and min(kx, 20 - kx) < 3:
                amp[..., ky, kx] = np.abs(ft[..., ky, kx])
    expected = np.clip(np.real(np.fft.ifft2(amp * np.exp(1j * np.angle(fs)))), 0, 1)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    inside = (expected > 0) & (expected < 1)
    assert inside.all()  # no clipping here, so the image mean (DC) is the target's
    np.testing.assert_allclose(got.mean((2, 3)).numpy(), tgt.mean((2, 3)).numpy(), atol=1e-5)


def test_stats_translator_matches_channel_statistics():
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.rand(2, 3, 8, 8, generator=g) * 0.3 + 0.3, torch.rand(2, 3, 8, 8, generator=g) * 0.2 + 0.4
    got = stats_translate(src, tgt)
    expected = (src - src.mean((2, 3), True)) / (src.std((2, 3), keepdim=True) + 1e-5) * tgt.std(
        (2, 3), keepdim=True
    ) + tgt.mean((2, 3), True)
    torch.testing.assert_close(got, expected.clamp(0, 1))


def test_user_translator_is_imported_from_module_callable(tmp_path, monkeypatch):
    (tmp_path / "my_translator.py").write_text("class T:\n    def __call__(self, s, t):\n        return t\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = build_translator("my_translator:T", 0.01, "cpu")
    x, y = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    assert torch.equal(fn(x, y), y)
    with pytest.raises(ValueError, match="cannot import"):
        build_translator("my_translator:Missing", 0.01, "cpu")
    with pytest.raises(ValueError, match="fda, stats"):
        build_translator("gan", 0.01, "cpu")


def test_cross_domain_mixture_keeps_half_the_classes_and_the_ignored_pixels():
    label = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 255]]).repeat(4, 1)[None]  # (1, 4, 8): 4 classes + ignore
    image = torch.rand(1, 3, 4, 8)
    out = cross_domain_mixture(
        image,
        label,
        torch.rand(1, 3, 4, 8),
        torch.Generator().manual_seed(0),
        lambda s, t: torch.full_like(s, 2.0),
        blend=0.0,
    )  # blend 0: x_aug = x
    kept = (out == image).all(1)[0]  # (4, 8): pixels with source appearance
    assert ((out == 2.0).all(1)[0] == ~kept).all()
    assert kept[label[0] == 255].all()
    kept_classes = {c for c in range(4) if kept[label[0] == c].all()}
    assert len(kept_classes) == 2 and all(not kept[label[0] == c].any() for c in set(range(4)) - kept_classes)


def tiny_models(seed=0):
    torch.manual_seed(seed)
    student = build_model("compact", num_classes=C, width=8, feature_dim=FEAT)
    teacher = build_model("compact", num_classes=C, width=8, feature_dim=FEAT)
    return student, teacher


def test_symmetric_distillation_matches_its_formula():
    student, teacher = tiny_models()
    g = torch.Generator().manual_seed(5)
    x, y, tgt = (
        torch.rand(2, 3, 16, 32, generator=g),
        torch.randint(0, C, (2, 16, 32), generator=g),
        torch.rand(2, 3, 16, 32, generator=g),
    )
    step = Step(
        iteration=0,
        source_image=x,
        source_label=y,
        target_image=tgt,
        student=student,
        teacher=teacher,
        generator=torch.Generator().manual_seed(7),
    )
    step.student_source = {"logits": upsample(student(x)["logits"], x.shape[-2:])}
    translate = build_translator("fda", 0.1, "cpu")
    loss, _ = symmetric_distillation(step, translate, 0.4)
    mixture = cross_domain_mixture(x, y, tgt, torch.Generator().manual_seed(7), translate, 0.4)
    teacher.eval()
    with torch.no_grad():
        t_x = upsample(teacher(x)["logits"], x.shape[-2:]).softmax(1)
        t_m = upsample(teacher(mixture)["logits"], x.shape[-2:]).softmax(1)
    s_m = upsample(student(mixture)["logits"], x.shape[-2:])
    expected = (-(t_x * s_m.log_softmax(1)).sum(1)).mean() + 0.5 * (
        -(t_m * step.student_source["logits"].log_softmax(1)).sum(1)
    ).mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_nearest_centroid_labels_match_a_direct_distance_computation():
    g = torch.Generator().manual_seed(2)
    feats, cents = torch.randn(2, FEAT, 3, 4, generator=g), torch.randn(C, FEAT, generator=g)
    available = torch.tensor([True, False, True])
    got = nearest_centroid_labels(feats, cents, available, (6, 8))
    d = torch.stack([(feats - cents[k][None, :, None, None]).norm(dim=1) for k in range(C)], 1)  # (B, C, h, w)
    w = torch.where(available[None, :, None, None], (-d).exp(), torch.zeros_like(d))
    w = w / w.sum(1, keepdim=True)
    expected = F.interpolate(w, size=(6, 8), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(got, expected)
    assert not (got == 1).any()


def consensus_step(seed=3):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, FEAT, 3, 4, generator=g)
    probs = torch.randn(2, C, 6, 8, generator=g).softmax(1)
    label = probs.argmax(1)
    label[0, 0] = IGNORE_INDEX
    return Step(
        iteration=0,
        source_image=torch.rand(2, 3, 6, 8),
        source_label=torch.randint(0, C, (2, 6, 8)),
        target_image=torch.rand(2, 3, 6, 8),
        generator=torch.Generator().manual_seed(seed),
        teacher_target={"probs": probs, "logits": probs.log(), "features": feats},
        pseudo_label=label,
    )


def test_consensus_keeps_labels_only_where_the_nearest_centroid_agrees():
    m = DiGA(DiGAOptions(), num_classes=C, feature_dim=FEAT)
    m.centroids, m.updates = torch.randn(C, FEAT, generator=torch.Generator().manual_seed(4)), torch.ones(C).long()
    step = consensus_step()
    before = step.pseudo_label.clone()
    m.pseudo_labels(step)
    nearest = nearest_centroid_labels(
        step.teacher_target["features"], m.centroids, torch.ones(C, dtype=torch.bool), (6, 8)
    )
    assert torch.equal(step.pseudo_label, torch.where(before == nearest, before, IGNORE_INDEX))
    assert (step.pseudo_label[0, 0] == IGNORE_INDEX).all()


def test_centroids_are_a_running_mean_then_an_ema():
    m = DiGA(DiGAOptions(centroid_momentum=0.25), num_classes=C, feature_dim=2)
    v1, v2, v3 = (torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]) * k for k in (1, 2, 3))
    counts = torch.tensor([1, 2, 0])
    for v in (v1, v2, v3):
        m.apply_means(v * counts[:, None], counts)
    # class 0/1: m = max(0.25, 1/k) -> 1, 1/2, 1/3 (running mean): (1 + 2 + 3) / 3 = 2 times v1
    torch.testing.assert_close(m.centroids[:2], 2 * v1[:2])
    assert m.updates.tolist() == [3, 3, 0] and m.centroids[2].abs().sum() == 0
    for _ in range(2):  # now momentum 0.25 wins
        m.apply_means(v1 * counts[:, None], counts)
    expected = 2 * v1[:2]
    for _ in range(2):
        expected = 0.75 * expected + 0.25 * v1[:2]
    torch.testing.assert_close(m.centroids[:2], expected)


def test_first_step_borrows_batch_means_and_update_uses_agreeing_pixels():
    m = DiGA(DiGAOptions(distil_weight=0.0), num_classes=C, feature_dim=FEAT)
    step = consensus_step()
    m.pseudo_labels(step)  # no centroid yet: batch means of the teacher's argmax pixels
    m.update(step)
    feats = step.teacher_target["features"]
    size = feats.shape[-2:]
    from udaseg.methods.common import labels_to_features

    lbl = labels_to_features(m.scratch(step)["label"], size, C)
    arg = labels_to_features(step.teacher_target["probs"].argmax(1), size, C)
    for k in range(C):
        sel = (lbl == k) & (arg == k)
        if sel.any():
            torch.testing.assert_close(m.centroids[k], feats.permute(0, 2, 3, 1)[sel].mean(0))
            assert m.updates[k] == 1
        else:
            assert m.updates[k] == 0


def test_load_rejects_centroids_of_another_class_count():  # round trip: tests/methods/test_contract.py
    m = DiGA(DiGAOptions(), num_classes=C, feature_dim=FEAT)
    with pytest.raises(ValueError, match="classes"):
        DiGA(DiGAOptions(), num_classes=C + 1, feature_dim=FEAT).load_state_dict(m.state_dict())


TINY = {"data.rcs": False, "train.warmup": "diga"}  # rare-class sampling is not what these tests check


def test_warmup_and_adaptation_train_and_resume_exactly(tmp_path):
    check_resume_exact(tiny_config("diga", **TINY), tmp_path, stop_after=3)
    payload = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    assert payload["methods"]["diga"]["updates"].sum() > 0
    assert all(math.isfinite(v) for v in payload["methods"]["diga"]["centroids"].flatten().tolist())


# two-process DDP of diga's state: tests/methods/test_hiast.py runs hiast+diga+tdi once under DDP
