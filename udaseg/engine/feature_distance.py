"""ImageNet feature distance (DAFormer, Hoyer et al., CVPR 2022, section 3.3): a source-side regulariser.

Training on synthetic labels pulls the encoder away from the ImageNet features it started from, and with them the
real-world knowledge they hold. DAFormer keeps the student's deepest encoder map F_S near that of a frozen copy of
the pretrained encoder F_I on the source image, only where the label shows a "thing" class (cars, people, signs...):

    L_FD = weight * mean over masked cells of || F_S(x_s) - F_I(x_s) ||_2          (L2 over channels)

The mask is the source label at the encoder's resolution: a cell takes the label that covers at least `min_ratio` of
its pixels (DAFormer's `downscale_label_ratio`), else it is ignored; masked cells are those whose label is one of
`classes` (Cityscapes train ids; DAFormer: 6, 7, 11-18 with weight 0.005, min_ratio 0.75). A batch with no masked
cell contributes 0. The term applies in every stage (warm-up and adaptation), as DAFormer applies it to every
source step, and is logged as `feature_distance`. It needs `model.pretrained`: the reference is the model rebuilt
from that file, frozen, never checkpointed (a resumed run rebuilds it the same way).

Where we differ: DAFormer's cells are `H // scale` with the scale from the widths; here the label is pooled over
`scale x scale` windows with `scale = H // h` and both maps are cut to their common size, which is the same on the
sizes DAFormer uses (multiples of 32) and defined on any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udaseg.data.labels import IGNORE_INDEX


def downscale_label(label: Tensor, scale: int, min_ratio: float, num_classes: int) -> Tensor:
    """(B, H, W) int64 -> (B, H // scale, W // scale): each cell's majority class where its share of the cell's
    pixels is >= min_ratio, else IGNORE_INDEX. Ignored pixels count as their own class (they can win a cell)."""
    lab = label.clone()
    lab[(lab < 0) | (lab >= num_classes)] = num_classes  # ignore as one more class
    onehot = F.one_hot(lab, num_classes + 1).permute(0, 3, 1, 2).float()  # (B, C+1, H, W)
    share = F.avg_pool2d(onehot, kernel_size=scale, stride=scale)  # (B, C+1, H//s, W//s)
    ratio, cls = share.max(dim=1)
    cls[(cls == num_classes) | (ratio < min_ratio)] = IGNORE_INDEX
    return cls


def thing_mask(
    label: Tensor, size: tuple[int, int], classes: list[int] | Tensor, min_ratio: float, num_classes: int
) -> Tensor:
    """(B, h', w') bool at (at most) `size`: encoder cells whose downscaled label is one of `classes`."""
    scale = max(1, label.shape[-2] // size[0])
    cells = downscale_label(label, scale, min_ratio, num_classes)
    cells = cells[:, : size[0], : size[1]]
    return torch.isin(cells, torch.as_tensor(classes, device=label.device))


def masked_distance(student: Tensor, reference: Tensor, mask: Tensor) -> Tensor:
    """Mean L2 (over channels) distance of (B, E, h, w) maps at the True cells of (B, h', w') `mask`; both maps
    are cut to the mask's size. 0 (still attached to the graph) when no cell is masked."""
    h, w = mask.shape[-2:]
    diff = student[..., :h, :w].float() - reference[..., :h, :w].float()
    dist = torch.linalg.vector_norm(diff, dim=1)  # (B, h, w)
    # sum / count rather than dist[mask].mean(): no host sync, and 0 (not NaN) for an empty mask
    return (dist * mask).sum() / mask.sum().clamp(min=1)


class FeatureDistance:
    """The frozen pretrained encoder and the options; `loss(step)` is the weighted term of one source batch."""

    def __init__(self, reference: nn.Module, weight: float, classes: list[int], min_ratio: float, num_classes: int):
        self.reference = reference.eval().requires_grad_(False)
        self.weight, self.min_ratio, self.num_classes = weight, min_ratio, num_classes
        device = next(reference.parameters()).device
        self.classes = torch.tensor(list(classes), device=device)  # made once, not per step

    def loss(
        self, student_encoder: Tensor, image: Tensor, label: Tensor, amp: Callable[[], Any] = contextlib.nullcontext
    ) -> Tensor:
        """weight * masked distance between the student's encoder map (with gradient) and the reference's, the
        reference run under the loop's autocast `amp`."""
        with torch.no_grad(), amp():
            reference = self.reference.encode(image)
        mask = thing_mask(label, tuple(student_encoder.shape[-2:]), self.classes, self.min_ratio, self.num_classes)
        return self.weight * masked_distance(student_encoder, reference, mask)
