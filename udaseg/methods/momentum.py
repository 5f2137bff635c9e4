"""Pieces DIDA and CPSL share: a momentum (key) copy of a trainable module, and the target pixels of the mix.

Both methods compare a pixel's weak view (the EMA teacher on the target crop) with its strong view (the student on
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
from udaseg.methods.base import Step


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
