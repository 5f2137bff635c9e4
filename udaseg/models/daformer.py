"""DAFormer and SegFormer: a MiT encoder (``udaseg.models.mit``) with DAFormer's or SegFormer's decoder.

``daformer_mitb0`` ... ``daformer_mitb5`` (Hoyer et al., CVPR 2022; ``mit_b5`` is the paper's network)::

    4 MiT maps (strides 4-32) -> per level: linear embedding to 256 ch -> upsample to stride 4 -> concat (1024 ch)
    -> context-aware fusion ("sepaspp"): [1x1 conv, depthwise-separable 3x3 at dilation 6, 12, 18] -> concat
    -> 3x3 conv-BN-ReLU to 256 ch                                  = "features" (B, 256, H/4, W/4)
    -> dropout 0.1 -> 1x1 conv to C                                = "logits"

``segformer_mitb0`` ... ``segformer_mitb5`` (Xie et al., 2021), the all-MLP head: per-level linear embedding to E
(256 for B0/B1, 768 for B2-B5), upsample, concat (deepest level first), 1x1 conv-BN-ReLU = "features", dropout,
1x1 conv = "logits". Cheap: the CPU choice (``segformer_mitb0``).

Module names follow the mmseg/DAFormer checkpoints (``backbone.*``, ``decode_head.embed_layers.0.proj``,
``decode_head.fuse_layer.aspp_modules.1.depthwise_conv.conv``, ``decode_head.conv_seg`` ...; mmcv's ConvModule
is ``conv``/``bn``), so ImageNet MiT files, mmseg SegFormer and DAFormer training checkpoints load by name
(``udaseg.models.pretrained``). Output stride 4; inputs at least 29 pixels a side (``mit.MIN_INPUT_SIZE``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from udaseg.models.common import Normalize, SegmentationModel, init_weights, upsample
from udaseg.models.mit import MIT_SPECS, mit
from udaseg.models.registry import register_model


class ConvModule(nn.Sequential):
    """Conv (no bias) + BatchNorm + ReLU under mmcv's names (``conv``, ``bn``, ``activate``)."""

    def __init__(self, cin: int, cout: int, k: int = 1, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True)


class SeparableConvModule(nn.Sequential):
    """Depthwise 3x3 (dilated) conv-BN-ReLU then pointwise 1x1 conv-BN-ReLU (mmcv's DepthwiseSeparableConvModule)."""

    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, 3, dilation=dilation, groups=cin)
        self.pointwise_conv = ConvModule(cin, cout, 1)


class MLP(nn.Module):
    """Linear embedding of a map's channels: ``(B, Cin, h, w) -> (B, E, h, w)`` (a 1x1 conv stored as a Linear)."""

    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cin, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)


class SepASPP(nn.Module):
    """DAFormer's context-aware fusion: 1x1 conv + separable 3x3 convs at ``dilations[1:]``, concat, 3x3 conv."""

    def __init__(self, cin: int, channels: int, dilations: tuple[int, ...] = (1, 6, 12, 18)) -> None:
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            ConvModule(cin, channels, 1) if d == 1 else SeparableConvModule(cin, channels, d) for d in dilations
        )
        self.bottleneck = ConvModule(len(dilations) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:  # (B, cin, h, w) -> (B, channels, h, w)
        return self.bottleneck(torch.cat([m(x) for m in self.aspp_modules], dim=1))


class DAFormerHead(nn.Module):
    """Per-level MLP embedding, upsample to the stride-4 level, SepASPP fusion, dropout, 1x1 classifier."""

    def __init__(
        self, in_dims: tuple[int, ...], num_classes: int, embed_dim: int = 256, channels: int = 256,
        dilations: tuple[int, ...] = (1, 6, 12, 18), dropout: float = 0.1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.embed_layers = nn.ModuleDict({str(i): MLP(c, embed_dim) for i, c in enumerate(in_dims)})
        self.fuse_layer = SepASPP(embed_dim * len(in_dims), channels, tuple(dilations))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, maps: list[Tensor]) -> tuple[Tensor, Tensor]:  # -> logits (B, C, h, w), features (B, F, h, w)
        size = maps[0].shape[-2:]
        x = [upsample(self.embed_layers[str(i)](m), size) for i, m in enumerate(maps)]  # 4 x (B, E, h, w)
        feats = self.fuse_layer(torch.cat(x, dim=1))
        return self.conv_seg(self.dropout(feats)), feats


class SegFormerHead(nn.Module):
    """All-MLP decoder: per-level linear embedding, upsample, concat (deepest first), 1x1 conv-BN-ReLU, classifier."""

    def __init__(self, in_dims: tuple[int, ...], num_classes: int, embed_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(MLP(c, embed_dim) for c in in_dims)
        self.linear_fuse = ConvModule(embed_dim * len(in_dims), embed_dim, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, maps: list[Tensor]) -> tuple[Tensor, Tensor]:
        size = maps[0].shape[-2:]
        x = [upsample(lin(m), size) for lin, m in zip(self.linear_c, maps)]
        feats = self.linear_fuse(torch.cat(x[::-1], dim=1))  # SegFormer's order: c4, c3, c2, c1
        return self.linear_pred(self.dropout(feats)), feats


class MiTSegmenter(SegmentationModel):
    """Normalize -> MiT encoder (``backbone``) -> decoder (``decode_head``); ``{"logits", "features"}`` at stride 4.

    LayerNorm parameters of the encoder get no weight decay (DAFormer's ``paramwise_cfg``: ``norm`` decay_mult 0).
    """

    output_stride = 4
    head_names = ("decode_head",)

    def __init__(self, encoder: str, head: str, num_classes: int = 19, drop_path_rate: float = 0.1, **head_kw) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder_name, self.head_type = encoder, head
        self.normalize = Normalize()
        self.backbone = mit(encoder, drop_path_rate)
        dims = self.backbone.embed_dims
        if head == "daformer":
            self.decode_head: nn.Module = DAFormerHead(dims, num_classes, **head_kw)
            self.feature_dim = self.decode_head.conv_seg.in_channels
            self.classifier_prefixes = ("decode_head.conv_seg.",)
        elif head == "segformer":
            self.decode_head = SegFormerHead(dims, num_classes, **head_kw)
            self.feature_dim = self.decode_head.linear_pred.in_channels
            self.classifier_prefixes = ("decode_head.linear_pred.",)
        else:
            raise ValueError(f"head must be daformer or segformer, got {head!r}")
        init_weights(self.decode_head)  # kaiming convs, unit BatchNorm (mmcv's ConvModule init)
        classifier = self.decode_head.conv_seg if head == "daformer" else self.decode_head.linear_pred
        nn.init.normal_(classifier.weight, 0.0, 0.01)  # mmseg's BaseDecodeHead
        nn.init.zeros_(classifier.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # (B, 3, H, W) in [0, 1]
        maps = self.backbone(self.normalize(x))
        logits, feats = self.decode_head(maps)  # (B, C | F, ceil(H/4), ceil(W/4))
        return {"logits": logits, "features": feats, "encoder": maps[-1]}

    def encode(self, x: Tensor) -> Tensor:
        """The encoder's deepest map (B, 512, ceil(H/32), ceil(W/32)), without the decoder."""
        return self.backbone(self.normalize(x))[-1]

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """backbone (lr), backbone LayerNorms (lr, weight decay 0), decode_head (lr * head_lr_mult)."""
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "backbone_norm": [], "head": []}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("decode_head."):
                groups["head"].append(p)
            else:
                groups["backbone_norm" if "norm" in name else "backbone"].append(p)
        out = [
            {"name": "backbone", "params": groups["backbone"], "lr": lr},
            {"name": "backbone_norm", "params": groups["backbone_norm"], "lr": lr, "weight_decay": 0.0},
            {"name": "head", "params": groups["head"], "lr": lr * head_lr_mult},
        ]
        return [g for g in out if g["params"]]


def _register(head: str, variant: str) -> None:
    encoder = f"mit_{variant}"
    embed = 768 if head == "segformer" and variant not in ("b0", "b1") else 256

    def build(num_classes: int = 19, **kw) -> MiTSegmenter:
        kw.setdefault("embed_dim", embed)
        return MiTSegmenter(encoder, head, num_classes=num_classes, **kw)

    build.__name__ = build.__qualname__ = f"{head}_mit{variant}"
    build.__doc__ = f"{head.capitalize()} decoder on the {encoder} encoder (output stride 4)."
    register_model(build)


for _variant in [n.split("_")[1] for n in MIT_SPECS]:
    _register("daformer", _variant)
    _register("segformer", _variant)
