"""Pseudo-label diagnostics: what the teacher's pseudo-labels do, per class, in every logging window.

    stats = PseudoLabelStats(num_classes=19, confident=0.968, device=device)
    stats.add(step, target_label)      # after each train_step: on-device counts, no host sync
    row = stats.flush()                # at log time: one transfer, per-class numbers, window counters reset

Per class c, over the target pixels of the window's training crops:
  coverage[c]   of the pixels the teacher predicts as c (argmax), the share that keeps a pseudo-label
                (label != ignore and weight > 0): what thresholds and the plug-ins' selection leave of the class.
  share[c]      the class distribution of the kept pseudo-labels, to set against source_share[c], the distribution
                of the source labels the student is trained on (after rare-class sampling; counted over the run).
  confidence[c] mean `step.pseudo_confidence` of the kept pixels labelled c; confident[c] the share of them at or
                above `confident` (DAFormer's 0.968 weighting threshold).
  precision[c], recall[c]  only where the target crops carry labels (the embedded benchmark, Cityscapes): the
                loop hands them to `add` for monitoring; they never reach a plug-in or a loss.
The teacher's change rate is measured on a fixed probe set (`ProbeSet`, `change_rate`), not on random crops.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from udaseg.data.labels import IGNORE_INDEX

# rows of the per-class count table, one index_add_ each per step
PREDICTED, KEPT_OF_PREDICTED, KEPT, CONFIDENT, CONFIDENCE_SUM, GT, KEPT_LABELLED, TRUE_POSITIVE = range(8)


def effective_classes(counts: Tensor) -> float:
    """exp(entropy) of a class histogram: 1 when one class holds every pixel, C when all C are equal (NaN if empty)."""
    total = float(counts.sum())
    if total <= 0:
        return math.nan
    p = counts.double() / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _ratio(num: Tensor, den: Tensor) -> list[float]:
    """num / den per class as floats, NaN where den is 0."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.full_like(num, math.nan)).tolist()


class PseudoLabelStats:
    """Per-class pseudo-label counts over a logging window, accumulated on the step's device."""

    def __init__(self, num_classes: int, confident: float = 0.968, device: str | torch.device = "cpu"):
        self.c, self.confident, self.device = num_classes, confident, torch.device(device)
        self.counts = torch.zeros(8, num_classes, dtype=torch.float64, device=self.device)  # (8, C), rows above
        self.pixels = torch.zeros((), dtype=torch.float64, device=self.device)  # target pixels in the window
        self.source = torch.zeros(num_classes, dtype=torch.float64, device=self.device)  # source labels, whole run
        self.steps = 0  # steps with pseudo-labels in the window

    def _count(self, cls: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
        """Per class, the number (or the `weight` sum) of pixels where `mask` holds. (C,) float64.

        index_add_ into a spare bucket for masked-out or ignored pixels: no boolean indexing and no bincount, both
        of which wait for the device (the output size depends on the data); this never does.
        """
        idx = torch.where(mask & (cls >= 0) & (cls < self.c), cls, self.c).reshape(-1)
        w = mask.double() if weight is None else mask.double() * weight.double()
        out = torch.zeros(self.c + 1, dtype=torch.float64, device=cls.device)
        return out.index_add_(0, idx, w.reshape(-1))[: self.c].to(self.device)

    @torch.no_grad()
    def add_source(self, source_label: Tensor) -> None:
        """Source label histogram (B, H, W): the class distribution the student learns as its prior."""
        self.source += self._count(source_label, source_label != IGNORE_INDEX)

    @torch.no_grad()
    def add(self, step, target_label: Tensor | None = None) -> None:
        """Count one step's pseudo-labels. `step` is the loop's `Step` after train_step; no host sync here."""
        self.add_source(step.source_label)
        if step.pseudo_label is None or "probs" not in step.teacher_target:
            return
        probs = step.teacher_target["probs"]  # (B, C, H, W)
        predicted = probs.argmax(1)  # (B, H, W)
        label = step.pseudo_label  # (B, H, W), ignore = 255
        weight = step.pseudo_weight if step.pseudo_weight is not None else torch.ones_like(label, dtype=torch.float)
        conf = step.pseudo_confidence if step.pseudo_confidence is not None else probs.max(1).values
        kept = (label != IGNORE_INDEX) & (weight > 0)  # (B, H, W) bool
        rows = self.counts
        rows[PREDICTED] += self._count(predicted, torch.ones_like(kept))
        rows[KEPT_OF_PREDICTED] += self._count(predicted, kept)
        rows[KEPT] += self._count(label, kept)
        rows[CONFIDENT] += self._count(label, kept & (conf >= self.confident))
        rows[CONFIDENCE_SUM] += self._count(label, kept, conf)
        self.pixels += label.numel()
        if target_label is not None:
            gt = target_label.to(label.device, non_blocking=True)  # a copy, no wait for the device
            labelled = gt != IGNORE_INDEX
            rows[GT] += self._count(gt, labelled)
            rows[KEPT_LABELLED] += self._count(label, kept & labelled)
            rows[TRUE_POSITIVE] += self._count(gt, kept & labelled & (gt == label))
        self.steps += 1

    def flush(self) -> dict | None:
        """Window numbers (one device-to-host transfer) and a reset; None when no step had pseudo-labels."""
        if self.steps == 0:
            return None
        counts, pixels, source = self.counts.cpu(), float(self.pixels), self.source.cpu()
        kept_total = counts[KEPT].sum()
        row = {
            "coverage": float(kept_total) / max(pixels, 1.0),
            "confidence": float(counts[CONFIDENCE_SUM].sum() / kept_total) if kept_total > 0 else math.nan,
            "effective_classes": effective_classes(counts[KEPT]),
            "source_effective_classes": effective_classes(source),
            "per_class": {
                "coverage": _ratio(counts[KEPT_OF_PREDICTED], counts[PREDICTED]),
                "share": _ratio(counts[KEPT], kept_total.expand(self.c)),
                "source_share": _ratio(source, source.sum().expand(self.c)),
                "confidence": _ratio(counts[CONFIDENCE_SUM], counts[KEPT]),
                "confident": _ratio(counts[CONFIDENT], counts[KEPT]),
            },
        }
        if counts[GT].sum() > 0:
            precision = _ratio(counts[TRUE_POSITIVE], counts[KEPT_LABELLED])
            recall = _ratio(counts[TRUE_POSITIVE], counts[GT])
            row["per_class"].update(precision=precision, recall=recall)
            row["precision"] = _nanmean(precision)
            row["recall"] = _nanmean(recall)
        self.counts.zero_()
        self.pixels.zero_()
        self.steps = 0
        return row


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


# ----------------------------------------------------------------------------- the fixed probe set
class ProbeSet:
    """A fixed set of target train images (evenly spaced indices), loaded once, whole images (CPU).

    The teacher is run on the same pixels at every window (change rate) and evaluation (label-free score), so
    differences come from the teacher, not from which crops a window happened to draw. Labels, where the
    dataset has them, are kept for monitoring only.
    """

    def __init__(self, dataset, count: int, size: list[int] | tuple[int, ...] = ()):
        from udaseg.data import transforms as T

        n = len(dataset)
        count = max(1, min(count, n))
        self.indices = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)})
        items = [dataset[i] for i in self.indices]
        images = [it["image"] for it in items]  # (3, H, W) each
        labels = [it["label"] for it in items]
        if size:
            images = [T.resize(im, tuple(size)) for im in images]
            labels = [T.resize_label(lb, tuple(size)) for lb in labels]
        shapes = {tuple(im.shape) for im in images}
        if len(shapes) > 1:  # a folder of mixed sizes: bring them to the first image's size
            images = [T.resize(im, images[0].shape[-2:]) for im in images]
            labels = [T.resize_label(lb, images[0].shape[-2:]) for lb in labels]
        self.images = torch.stack(images)  # (K, 3, H, W)
        self.labels = torch.stack(labels)  # (K, H, W), all ignore when the split has no labels
        self.has_labels = bool((self.labels != IGNORE_INDEX).any())

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int = 4):
        """(start index, images (b, 3, H, W)) on the CPU."""
        for s in range(0, len(self.images), batch_size):
            yield s, self.images[s : s + batch_size]


@torch.no_grad()
def probe_labels(model, probe: ProbeSet, device, batch_size: int = 4) -> Tensor:
    """The model's argmax class map on every probe image: (K, H, W) uint8 on the CPU (eval mode, restored)."""
    from udaseg.evaluate import predict

    was_training = model.training
    model.eval()
    try:
        maps = [predict(model, x.to(device)).argmax(1).to(torch.uint8).cpu() for _, x in probe.batches(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(maps)


def change_rate(before: Tensor, after: Tensor, num_classes: int) -> tuple[float, list[float]]:
    """Share of probe pixels whose class flipped between two windows, overall and per class of `before`.

    before, after: (K, H, W) integer class maps of the same probe images. Per class c: of the pixels the teacher
    called c before, the share it calls something else now (NaN for a class it did not predict).
    """
    flipped = before != after
    total = float(flipped.double().mean())
    b = before.reshape(-1).long()
    per = torch.bincount(b[flipped.reshape(-1)], minlength=num_classes)[:num_classes]
    den = torch.bincount(b, minlength=num_classes)[:num_classes]
    return total, _ratio(per, den)
