"""Pieces several plug-ins share: the projection head, label downsampling to feature resolution, pixel sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udaseg.data.labels import IGNORE_INDEX


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
        return F.normalize(self.net(features.float()), dim=1)


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


def class_balanced_sample(labels: Tensor, per_class: int, num_classes: int,
                          generator: torch.Generator | None = None) -> Tensor:
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
