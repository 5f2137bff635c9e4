"""Pieces several plug-ins share, so that no method imports another method's module.

- Embeddings: `ProjectionHead`, `embed` (the head in the loop's autocast, the result in `step.compute_dtype`),
  `MomentumCopy` (a key encoder that follows a trainable module by EMA).
- Losses: `weighted_cross_entropy` (the pseudo-label CE with a per-pixel weight; self_training, MIC).
- Pixels: `labels_to_features`, `flatten_pixels`, `sample_pixels`, `class_balanced_sample`, `top_per_class`,
  `pool_probs`.
- Regions of the mixed image: `target_aligned` (image resolution), `target_region` (feature resolution).

DIDA and CPSL compare a pixel's weak view (the EMA teacher on the target crop) with its strong view (the student on
the ClassMix image). The embedding of the weak view goes through a momentum copy of the method's projection head,
so that the weak targets, the bank / queue entries and the prototypes used as targets all live in one slowly moving
space (MoCo's key encoder, He et al. 2020; the same mean-teacher rule as the loop's EMA teacher).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udaseg import distributed as dist
from udaseg.data.labels import IGNORE_INDEX
from udaseg.methods.base import Step


class ProjectionHead(nn.Module):
    """Pixel embeddings from decoder features: 1x1 conv - BN - ReLU - 1x1 conv, L2-normalised over channels.

    (B, F, h, w) -> (B, D, h, w), each pixel's vector of unit norm.
    """

    def __init__(self, in_dim: int, out_dim: int = 64, hidden: int = 0):
        super().__init__()
        hidden = hidden or max(out_dim, min(in_dim, 256))
        self.net = nn.Sequential(
            nn.Conv2d(in_dim, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_dim, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        # float32 in (the student's features are bf16 under autocast, the head's weights float32; inside autocast
        # the convolutions still run in the autocast dtype); the L2 norm always in float32
        return F.normalize(self.net(features.float()).float(), dim=1)


class MomentumCopy:
    """A frozen copy of `module` that follows it by EMA: m = min(1 - 1/(n+1), momentum) at its n-th update.

    The ramp (DACS) makes the first update a plain copy. The copy is always in eval mode (BatchNorm uses the
    averaged running statistics). It is method state, not a trainable module: `state_dict()` holds its tensors.
    """

    def __init__(self, module: nn.Module):
        self.module = copy.deepcopy(module).requires_grad_(False).eval()
        self.steps = 0

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.module(x)

    @torch.no_grad()
    def update(self, source: nn.Module, momentum: float) -> None:
        m = min(1.0 - 1.0 / (self.steps + 1), momentum)
        for t, s in zip(self.module.parameters(), source.parameters()):
            t.mul_(m).add_(s.detach(), alpha=1.0 - m)
        for t, s in zip(self.module.buffers(), source.buffers()):
            if t.dtype.is_floating_point:
                t.mul_(m).add_(s, alpha=1.0 - m)
            else:
                t.copy_(s)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": {k: v.detach().clone() for k, v in self.module.state_dict().items()}, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = int(state["steps"])

    def broadcast(self) -> None:
        """Rank 0's copy on every rank (BatchNorm statistics of the source head differ between ranks)."""
        dist.broadcast_module(self.module)


def embed(step: Step, head: nn.Module | MomentumCopy, features: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Unit pixel embeddings (B, D, h, w) of decoder features, in `dtype` (default `step.compute_dtype`).

    The head runs under the loop's autocast (its 1x1 convolutions on tensor cores with train.amp on CUDA), the
    norm in float32, then one cast: on CUDA with AMP, embeddings that go to the bank kernels are bf16/fp16 (the
    kernels accumulate in float32); embeddings only plain-torch losses read can ask for float32. On CPU everything
    stays float32. The cast is differentiable.
    """
    with step.amp():
        out = head(features)
    return out.to(dtype or step.compute_dtype)


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weight: Tensor | None) -> Tensor:
    """Mean over labelled pixels of weight * CE. logits (B, C, H, W), labels (B, H, W), weight (B, H, W)."""
    ce = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")  # (B, H, W)
    valid = labels != IGNORE_INDEX
    if weight is not None:
        ce = ce * weight
    return ce.sum() / valid.sum().clamp(min=1)


def labels_to_features(labels: Tensor, size: tuple[int, int], num_classes: int) -> Tensor:
    """Labels (B, H, W) at image resolution -> (B, h, w) at feature resolution.

    A feature pixel keeps the majority label of its image patch (by nearest-neighbour voting over the class
    histogram of the patch), so thin classes are not lost the way strided nearest sampling loses them.
    Patches whose majority is 'ignore' stay ignored.
    """
    b, h_img, w_img = labels.shape
    h, w = size
    if (h, w) == (h_img, w_img):
        return labels
    valid = labels != IGNORE_INDEX
    onehot = F.one_hot(torch.where(valid, labels, num_classes), num_classes + 1)  # (B, H, W, C+1)
    hist = F.adaptive_avg_pool2d(onehot.permute(0, 3, 1, 2).float(), (h, w))  # (B, C+1, h, w)
    out = hist.argmax(1)
    return torch.where(out == num_classes, torch.full_like(out, IGNORE_INDEX), out)


def flatten_pixels(x: Tensor) -> Tensor:
    """(B, D, h, w) -> (B*h*w, D), pixel order b, y, x."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def sample_pixels(valid: Tensor, count: int, generator: torch.Generator | None = None) -> Tensor:
    """Indices of up to `count` distinct True entries of a flat bool mask, uniformly at random (no replacement)."""
    idx = valid.reshape(-1).nonzero().squeeze(1)
    if idx.numel() <= count:
        return idx
    perm = torch.randperm(idx.numel(), generator=generator, device="cpu")[:count].to(idx.device)
    return idx[perm]


def class_balanced_sample(
    labels: Tensor, per_class: int, num_classes: int, generator: torch.Generator | None = None
) -> Tensor:
    """Up to `per_class` random indices of each class in a flat label vector (ignored labels skipped).

    One random key per pixel, then a stable sort by (class, key): the first `per_class` of each class are a
    uniform sample without replacement, with no Python loop over classes.
    """
    labels = labels.reshape(-1)
    valid = labels < num_classes
    idx = valid.nonzero().squeeze(1)
    if idx.numel() == 0:
        return idx
    cls = labels[idx]
    key = torch.rand(idx.numel(), generator=generator, device="cpu").to(idx.device)
    order = torch.argsort(cls.double() * 2 + key.double())  # class major, random minor
    cls_sorted = cls[order]
    start = torch.searchsorted(cls_sorted, cls_sorted, right=False)  # first position of each pixel's class
    rank = torch.arange(cls_sorted.numel(), device=idx.device) - start
    return idx[order[rank < per_class]]


def target_aligned(step: Step) -> Tensor:
    """(B, H, W) bool: where the student's mixed image shows this step's target crop, pixel-aligned with the
    teacher's view (not a ClassMix source pixel, not a pasted donor pixel): `step.mix_aligned`, all True without."""
    if step.mix_aligned is not None:
        return step.mix_aligned
    b, _, h, w = step.mix_image.shape
    return torch.ones(b, h, w, dtype=torch.bool, device=step.mix_image.device)


def target_region(step: Step, size: tuple[int, int]) -> Tensor:
    """(B, h, w) bool at feature resolution: pixels of the student's mixed image aligned with the weak target view.

    A feature pixel counts when more than half of its image patch is aligned (`step.mix_aligned`: not pasted from
    the source by ClassMix, nor from a donor by HIAST), so the strong view's pixel lines up with the weak view's.
    """
    b = step.target_image.shape[0]
    if step.mix_aligned is None:
        return torch.ones(b, *size, dtype=torch.bool, device=step.target_image.device)
    aligned = F.adaptive_avg_pool2d(step.mix_aligned[:, None].float(), size)[:, 0]  # (B, h, w) aligned fraction
    return aligned > 0.5


def pool_probs(probs: Tensor, size: tuple[int, int]) -> Tensor:
    """Class probabilities (B, C, H, W) -> (B, C, h, w) by area averaging (still a distribution per pixel)."""
    return probs if tuple(probs.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(probs, size)


def top_per_class(labels: Tensor, priority: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Positions of the (up to) k highest-priority entries of each class, and each one's rank within its class.

    labels (N,) int64 in [0, C); priority (N,) float. A stable sort keeps the incoming order among equal
    priorities, so callers that pass candidates in random order get random tie-breaking. No loop over classes.
    """
    if labels.numel() == 0:
        empty = labels.new_zeros(0)
        return empty, empty
    order = torch.argsort(-priority.double(), stable=True)
    order = order[torch.argsort(labels[order], stable=True)]  # class major, priority minor
    cls = labels[order]
    rank = torch.arange(cls.numel(), device=cls.device) - torch.searchsorted(cls, cls, right=False)
    keep = rank < k
    return order[keep], rank[keep]
