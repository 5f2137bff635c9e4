"""``compact``: a small, fast segmentation model for CPU runs, tests and the car.

Layout (width ``w``, default 32; output stride 8)::

    Normalize -> stem: conv3x3 s2 (w/2) -> conv3x3 s2 (w)                     # /4
    stage8:  BasicBlock(w -> 2w, s2) + (depth8 - 1) x BasicBlock(2w)           # /8   low-level features
    stage16: BasicBlock(2w -> 4w, s2) + (depth16 - 1) x BasicBlock(4w, dil 2) # /16  context
    context: PPM-lite, x + 1x1(global mean(x)) (a broadcast add, no resize of a 1x1 map), then 1x1 -> F
    decoder: upsample context to /8, concat 1x1(low-level), conv3x3 -> F        # /8   "features"
    classifier: 1x1 conv F -> C                                                 # /8   "logits"

Only Conv/BatchNorm/ReLU/add/concat/mean/bilinear resize: every op exports cleanly to ONNX and TensorRT. Most
parameters sit at 1/16 resolution, which keeps the model cheap on CPU (see the model card in ``__init__``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from udaseg.models.common import Normalize, SegmentationModel, conv_bn_relu, init_weights, upsample
from udaseg.models.registry import register_model


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity (or 1x1 conv-BN projection) shortcut, ReLU after the add."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:  # (B, cin, H, W) -> (B, cout, ceil(H/s), ceil(W/s))
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _stage(cin: int, cout: int, depth: int, dilation: int = 1) -> nn.Sequential:
    """One stride-2 block then ``depth - 1`` blocks at ``dilation``."""
    blocks = [BasicBlock(cin, cout, stride=2)]
    blocks += [BasicBlock(cout, cout, dilation=dilation) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class PoolContext(nn.Module):
    """PPM-lite: add a projection of the global mean to every position, then a 1x1 conv-BN-ReLU to ``cout``.

    The pooled branch has no BatchNorm (a 1x1 map would make batch statistics degenerate at batch 1) and is added
    by broadcasting, which avoids resizing a 1x1 map (a known ONNX-export pitfall).
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.pool_proj = nn.Conv2d(cin, cin, 1, bias=True)
        self.out = conv_bn_relu(cin, cout, k=1)

    def forward(self, x: Tensor) -> Tensor:  # (B, cin, h, w) -> (B, cout, h, w)
        g = self.pool_proj(x.mean(dim=(2, 3), keepdim=True))  # (B, cin, 1, 1)
        return self.out(x + g)


class CompactSeg(SegmentationModel):
    """Small residual encoder (stride 16) with a stride-8 decoder; see the module docstring for the layout.

    Args:
        num_classes: output classes C.
        width: base width w (stage widths w, 2w, 4w); parameters grow as w^2 (w=32: 1.10 M, w=24: 0.66 M).
        depth8, depth16: basic blocks in the stride-8 and stride-16 stages.
        feature_dim: channels F of the decoder features returned as ``"features"``.
    """

    output_stride = 8
    head_names = ("context", "low_proj", "fuse", "classifier")

    def __init__(
        self, num_classes: int = 19, width: int = 32, depth8: int = 2, depth16: int = 3, feature_dim: int = 96
    ) -> None:
        super().__init__()
        w = width
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.normalize = Normalize()
        self.stem = nn.Sequential(conv_bn_relu(3, w // 2, stride=2), conv_bn_relu(w // 2, w, stride=2))
        self.stage8 = _stage(w, 2 * w, depth8)
        self.stage16 = _stage(2 * w, 4 * w, depth16, dilation=2)
        self.context = PoolContext(4 * w, feature_dim)
        self.low_proj = conv_bn_relu(2 * w, w, k=1)
        self.fuse = conv_bn_relu(feature_dim + w, feature_dim, k=3)
        self.classifier = nn.Conv2d(feature_dim, num_classes, 1)
        init_weights(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # (B, 3, H, W) in [0, 1]
        low, deep = self._encode(x)
        ctx = upsample(self.context(deep), low.shape[-2:])  # (B, F, H/16, W/16) -> (B, F, H/8, W/8)
        feats = self.fuse(torch.cat([ctx, self.low_proj(low)], dim=1))  # (B, F, H/8, W/8)
        return {"logits": self.classifier(feats), "features": feats, "encoder": deep}

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        low = self.stage8(self.stem(self.normalize(x)))  # (B, w, H/4, W/4) -> (B, 2w, H/8, W/8)
        return low, self.stage16(low)  # (B, 4w, H/16, W/16)

    def encode(self, x: Tensor) -> Tensor:
        """The encoder's deepest map (B, 4w, H/16, W/16), before the pooled context."""
        return self._encode(x)[1]


@register_model
def compact(num_classes: int = 19, **kw) -> CompactSeg:
    """Compact residual model, output stride 8, 1.10 M parameters at the default width 32."""
    return CompactSeg(num_classes=num_classes, **kw)
