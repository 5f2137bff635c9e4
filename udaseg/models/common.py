"""Layers and helpers shared by every model: input normalisation, the one resize, parameter groups."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def upsample(logits: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Resize ``(B, C, h, w)`` to ``(B, C, *size)``: bilinear, ``align_corners=False``.

    The one resize used everywhere (training losses, evaluation, export), so all paths see the same values.
    Returns the input itself when the size already matches, except while tracing/exporting, where a size
    comparison would freeze the graph's dynamic height and width.
    """
    size = tuple(size[-2:])
    exporting = torch.jit.is_tracing() or torch.compiler.is_compiling()
    if not exporting and tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class Normalize(nn.Module):
    """``(x - mean) / std`` with ImageNet statistics: the first layer of every model, input float RGB in [0, 1].

    Kept inside the model so exported graphs take the same input as training. Mean/std are non-persistent buffers:
    they are constants, not weights, and stay out of state dicts.
    """

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, 3, H, W)
        return (x - self.mean) * self.inv_std


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU; 'same' padding for odd ``k``, so output = ceil(input / stride)."""
    pad = dilation * (k - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def param_groups(model: nn.Module, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
    """Optimizer groups: backbone at ``lr``, head at ``lr * head_lr_mult`` (DAFormer convention: 10x).

    The head is the set of top-level children named in ``model.head_names``; everything else is backbone.
    Frozen parameters (``requires_grad=False``) are left out.
    """
    head_names = set(getattr(model, "head_names", ()))
    backbone, head = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (head if name.split(".", 1)[0] in head_names else backbone).append(p)
    groups = [
        {"name": "backbone", "params": backbone, "lr": lr},
        {"name": "head", "params": head, "lr": lr * head_lr_mult},
    ]
    return [g for g in groups if g["params"]]


class SegmentationModel(nn.Module):
    """Base of every udaseg model: ``forward(x) -> {"logits": (B, C, h, w), "features": (B, F, h, w), "encoder":
    (B, E, h', w')}`` (features: the decoder's, for the plug-ins; encoder: the backbone's deepest map, what
    ImageNet feature distance holds near the pretrained weights); ``encode(x)`` computes the encoder map alone.

    Subclasses set ``num_classes``, ``feature_dim``, ``output_stride`` (h = ceil(H / output_stride)) and
    ``head_names`` (top-level children trained at the head learning rate).
    """

    num_classes: int
    feature_dim: int
    output_stride: int
    head_names: tuple[str, ...] = ()

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """Optimizer groups: backbone at ``lr``, head at ``lr * head_lr_mult`` (see ``param_groups``)."""
        return param_groups(self, lr, head_lr_mult)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions (fan_out, ReLU), BatchNorm weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@contextlib.contextmanager
def keep_norm_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm running statistics of `model` are the same after the block as before it.

    For an extra forward pass on images unlike the data (`Step.forward(..., norm_stats=False)`, MIC's masked
    images): in train mode BatchNorm still normalises with the batch's own statistics, but the running ones, which
    the EMA teacher and evaluation use, are not moved towards that batch. The block's forward updates copies (which
    autograd may keep for the backward pass); the original buffers are put back untouched.
    """
    names = ("running_mean", "running_var", "num_batches_tracked")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    kept = [{n: getattr(m, n) for n in names if getattr(m, n) is not None} for m in norms]
    for m, buffers in zip(norms, kept):
        for name, value in buffers.items():
            setattr(m, name, value.clone())
    try:
        yield
    finally:
        for m, buffers in zip(norms, kept):
            for name, value in buffers.items():
                setattr(m, name, value)
