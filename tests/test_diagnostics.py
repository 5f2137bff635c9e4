"""Pseudo-label diagnostics against direct per-pixel loops: coverage, shares, confidence, precision/recall, change."""

import math

import pytest
import torch

from udaseg.data.labels import IGNORE_INDEX
from udaseg.engine.diagnostics import ProbeSet, PseudoLabelStats, change_rate, effective_classes
from udaseg.methods.base import Step

C = 5


def random_step(seed: int, b=2, h=7, w=9):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(b, C, h, w, generator=g).softmax(1)
    label = probs.argmax(1)
    label = torch.where(torch.rand(b, h, w, generator=g) < 0.2, torch.randint(0, C, (b, h, w), generator=g), label)
    label[torch.rand(b, h, w, generator=g) < 0.25] = IGNORE_INDEX  # what a plug-in left out
    weight = (torch.rand(b, h, w, generator=g) > 0.1).float()  # some zero weights
    step = Step(
        iteration=0, source_image=torch.zeros(b, 3, h, w), source_label=torch.randint(0, C - 1, (b, h, w), generator=g)
    )  # class C-1 never in source
    step.teacher_target = {"probs": probs}
    step.pseudo_label, step.pseudo_weight = label, weight
    step.pseudo_confidence = probs.max(1).values * 1.5
    gt = torch.randint(0, C, (b, h, w), generator=g)
    gt[torch.rand(b, h, w, generator=g) < 0.1] = IGNORE_INDEX
    return step, gt


def loops(steps):
    """The same numbers by plain loops over pixels."""
    n = {k: [0.0] * C for k in ("pred", "kept_of_pred", "kept", "conf", "confident", "gt", "tp", "kept_lab")}
    src = [0.0] * C
    pixels = 0
    for step, gt in steps:
        pred = step.teacher_target["probs"].argmax(1).flatten().tolist()
        lab, wt = step.pseudo_label.flatten().tolist(), step.pseudo_weight.flatten().tolist()
        cf, g = step.pseudo_confidence.flatten().tolist(), gt.flatten().tolist()
        for s in step.source_label.flatten().tolist():
            src[s] += 1
        for p, lb, wi, c, t in zip(pred, lab, wt, cf, g):
            pixels += 1
            n["pred"][p] += 1
            kept = lb != IGNORE_INDEX and wi > 0
            if t != IGNORE_INDEX:
                n["gt"][t] += 1
            if kept:
                n["kept_of_pred"][p] += 1
                n["kept"][lb] += 1
                n["conf"][lb] += c
                n["confident"][lb] += c >= 0.9
                if t != IGNORE_INDEX:
                    n["kept_lab"][lb] += 1
                    n["tp"][lb] += lb == t
    return n, src, pixels


def div(a, b):
    return [x / y if y else math.nan for x, y in zip(a, b)]


def same(a, b):
    return all((math.isnan(x) and math.isnan(y)) or abs(x - y) < 1e-9 for x, y in zip(a, b))


def test_window_numbers_match_pixel_loops():
    steps = [random_step(s) for s in range(3)]
    stats = PseudoLabelStats(C, confident=0.9)
    for step, gt in steps:
        stats.add(step, gt)
    row = stats.flush()
    n, src, pixels = loops(steps)
    pc = row["per_class"]
    kept = sum(n["kept"])
    assert abs(row["coverage"] - kept / pixels) < 1e-12
    assert same(pc["coverage"], div(n["kept_of_pred"], n["pred"]))
    assert same(pc["share"], [k / kept for k in n["kept"]])
    assert same(pc["source_share"], [s / sum(src) for s in src]) and pc["source_share"][C - 1] == 0
    assert same(pc["confidence"], div(n["conf"], n["kept"]))
    assert same(pc["confident"], div(n["confident"], n["kept"]))
    assert same(pc["precision"], div(n["tp"], n["kept_lab"]))
    assert same(pc["recall"], div(n["tp"], n["gt"]))
    assert abs(row["confidence"] - sum(n["conf"]) / kept) < 1e-9
    # the window resets; the source histogram keeps counting over the run
    assert stats.flush() is None
    stats.add(*random_step(7))
    assert stats.flush()["per_class"]["source_share"] != pc["source_share"]


def test_no_labels_no_precision_and_warmup_steps_count_source_only():
    stats = PseudoLabelStats(C)
    step, _ = random_step(0)
    stats.add(step, None)
    row = stats.flush()
    assert "precision" not in row["per_class"] and "recall" not in row
    warm = Step(iteration=0, source_image=torch.zeros(1, 3, 4, 4), source_label=torch.zeros(1, 4, 4, dtype=torch.long))
    stats.add(warm)  # no pseudo-labels (a source-only step): nothing in the window
    assert stats.flush() is None


def test_effective_classes():
    assert effective_classes(torch.tensor([5.0, 0, 0])) == pytest.approx(1.0)
    assert effective_classes(torch.tensor([2.0, 2, 2, 2])) == pytest.approx(4.0)
    p = torch.tensor([0.5, 0.3, 0.2])
    assert effective_classes(p * 10) == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert math.isnan(effective_classes(torch.zeros(3)))


def test_change_rate():
    before = torch.tensor([[[0, 0, 1, 2], [1, 1, 2, 2]]])
    after = torch.tensor([[[0, 1, 1, 2], [1, 0, 0, 2]]])
    total, per = change_rate(before, after, 4)
    assert total == pytest.approx(3 / 8)
    assert per[0] == pytest.approx(1 / 2) and per[1] == pytest.approx(1 / 3) and per[2] == pytest.approx(1 / 3)
    assert math.isnan(per[3])


class Images(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": torch.full((3, 6, 8), float(i)), "label": torch.full((6, 8), IGNORE_INDEX)}


def test_probe_set_is_fixed_and_evenly_spaced():
    probe = ProbeSet(Images(10), 4, size=(3, 4))
    assert probe.indices == [0, 3, 6, 9]
    assert probe.images.shape == (4, 3, 3, 4) and not probe.has_labels
    assert [float(x) for x in probe.images[:, 0, 0, 0]] == [0.0, 3.0, 6.0, 9.0]
    assert ProbeSet(Images(2), 8).indices == [0, 1]
