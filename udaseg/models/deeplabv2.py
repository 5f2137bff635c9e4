"""DeepLabV2 with a dilated ResNet-101/50: the model of most UDA segmentation papers (AdvEnt, DACS, ProDA, CPSL).

Output stride 8: ``layer3`` and ``layer4`` keep stride 1 and use dilation 2 and 4. The classifier is DeepLabV2's ASPP:
four 3x3 convolutions (dilation 6/12/18/24) from the ``layer4`` output straight to class logits, summed.
``"features"`` is the ``layer4`` output (2048 channels) -- exactly what the ASPP consumes.

As in the DeepLabV2 Caffe model (and AdvEnt/DACS), the stride of a bottleneck is on its first 1x1 conv
(``stride_in_1x1=True``); torchvision's ResNet v1.5 puts it on the 3x3 conv (``stride_in_1x1=False``). Module names
follow torchvision/AdvEnt (``conv1``, ``bn1``, ``layer1..4``), so either family of ImageNet weights loads as is (the
shapes are the same: pass ``stride_in_1x1=False`` with torchvision weights so the strides match how they were trained);
an AdvEnt/DACS ``layer5.conv2d_list`` ASPP is renamed to ``classifier.convs`` on load.

``freeze_bn=True`` keeps every BatchNorm in eval mode with frozen affine parameters, the usual choice with
ImageNet weights and 1-2 images per batch (AdvEnt/DACS freeze the affine parameters).
"""

from __future__ import annotations

from torch import Tensor, nn

from udaseg.models.common import Normalize, SegmentationModel, init_weights
from udaseg.models.registry import register_model


class Bottleneck(nn.Module):
    """ResNet bottleneck 1x1 -> 3x3 (dilated) -> 1x1 (x4 channels), BatchNorm, projection shortcut when needed."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, stride_in_1x1: bool = True
    ) -> None:
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=s3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:  # (B, inplanes, H, W) -> (B, 4 * planes, ceil(H/s), ceil(W/s))
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ASPPClassifier(nn.Module):
    """DeepLabV2 ASPP: ``sum_d conv3x3_d(x)`` over dilations ``d``, each conv mapping features straight to classes."""

    def __init__(self, cin: int, num_classes: int, dilations: tuple[int, ...] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(cin, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations)
        for conv in self.convs:  # DeepLab's init for the classifier
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, cin, h, w) -> (B, C, h, w)
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(SegmentationModel):
    """Dilated ResNet (output stride 8) + DeepLabV2 ASPP; returns ``{"logits", "features"}`` (features: layer4).

    Args:
        num_classes: output classes C.
        layers: bottleneck counts per stage ((3, 4, 23, 3) for ResNet-101, (3, 4, 6, 3) for ResNet-50).
        stride_in_1x1: stride on the first 1x1 conv of a bottleneck (Caffe / DeepLabV2) or on the 3x3 (torchvision).
        freeze_bn: keep BatchNorm in eval mode with frozen affine parameters (see the module docstring).
    """

    output_stride = 8
    feature_dim = 2048
    head_names = ("classifier",)

    def __init__(
        self,
        num_classes: int = 19,
        layers: tuple[int, int, int, int] = (3, 4, 23, 3),
        stride_in_1x1: bool = True,
        freeze_bn: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.freeze_bn = freeze_bn
        self._inplanes = 64
        self._stride_in_1x1 = stride_in_1x1
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)  # ceil_mode=False keeps h = ceil(H / 4)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], dilation=2)
        self.layer4 = self._make_layer(512, layers[3], dilation=4)
        init_weights(self)
        self.classifier = ASPPClassifier(512 * Bottleneck.expansion, num_classes)
        if freeze_bn:
            self._freeze_bn()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        mods = []
        for i in range(blocks):
            s = stride if i == 0 else 1
            mods.append(Bottleneck(self._inplanes, planes, s, dilation, self._stride_in_1x1))
            self._inplanes = planes * Bottleneck.expansion
        return nn.Sequential(*mods)

    def _freeze_bn(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
                for p in m.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True) -> DeepLabV2:
        """Like ``nn.Module.train``, but BatchNorm stays in eval mode when ``freeze_bn`` is set."""
        super().train(mode)
        if self.freeze_bn:
            self._freeze_bn()
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # (B, 3, H, W) in [0, 1]
        feats = self.encode(x)  # (B, 2048, H/8, W/8): the backbone's output is the decoder's input
        return {"logits": self.classifier(feats), "features": feats, "encoder": feats}

    def encode(self, x: Tensor) -> Tensor:
        """The ResNet's last stage (B, 2048, H/8, W/8)."""
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))  # (B, 64, H/2, W/2)
        x = self.layer2(self.layer1(self.maxpool(x)))  # (B, 512, H/8, W/8)
        return self.layer4(self.layer3(x))


@register_model
def deeplabv2_r101(num_classes: int = 19, **kw) -> DeepLabV2:
    """DeepLabV2, dilated ResNet-101 (43.9 M parameters with 19 classes)."""
    return DeepLabV2(num_classes=num_classes, layers=(3, 4, 23, 3), **kw)


@register_model
def deeplabv2_r50(num_classes: int = 19, **kw) -> DeepLabV2:
    """DeepLabV2, dilated ResNet-50 (24.9 M parameters with 19 classes)."""
    return DeepLabV2(num_classes=num_classes, layers=(3, 4, 6, 3), **kw)
