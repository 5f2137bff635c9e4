"""Mix Transformer (MiT) encoders ``mit_b0`` ... ``mit_b5``: the SegFormer backbone (Xie et al., NeurIPS 2021).

Four stages; stage ``i`` is an overlapping patch embedding (a strided conv + LayerNorm: 7x7 stride 4, then 3x3
stride 2) followed by ``depths[i]`` transformer blocks and a LayerNorm. A block is::

    x = x + drop_path(attn(norm1(x)))    # efficient self-attention: keys/values from a map shrunk sr_ratio times
    x = x + drop_path(mlp(norm2(x)))     # Mix-FFN: fc1 -> depthwise 3x3 conv -> GELU -> fc2 (mlp_ratio 4)

Attention goes through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels where available, one
op in ONNX). Hyper-parameters per variant follow the SegFormer release (NVlabs/SegFormer
``mmseg/models/backbones/mix_transformer.py``, copied by DAFormer): qkv bias, LayerNorm eps 1e-6 in the blocks and
stage norms (1e-5 in the patch embedding and the reduction norm), stochastic depth rising linearly to 0.1.

Module names are the official ones (``patch_embed1.proj``, ``block1.0.attn.q``, ``attn.kv``, ``attn.sr``,
``mlp.dwconv.dwconv``, ``norm1`` ...), so ImageNet ``mit_b*.pth`` files load without renaming; the Hugging Face
layout is converted in ``udaseg.models.pretrained``.

Sizes: stage ``i`` has ``ceil(H / 4 / 2^i)`` rows (``i`` = 0..3). A stage map must cover one spatial-reduction
window (8, 4, 2 cells in stages 1-3), so inputs need ``H, W >= MIN_INPUT_SIZE`` (29) pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class MiTSpec:
    """Hyper-parameters of one MiT variant (per stage)."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


# SegFormer paper, Table 6 / the official configs: B0 is narrow, B1-B5 share widths and differ in depth.
MIT_SPECS = {
    "mit_b0": MiTSpec((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTSpec((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": MiTSpec((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": MiTSpec((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": MiTSpec((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": MiTSpec((64, 128, 320, 512), (3, 6, 40, 3)),
}
MIN_INPUT_SIZE = 29  # ceil(29 / 4) = 8 = the stage-1 reduction window


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability ``p`` in training, scale the rest."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:  # (B, ...) -> (B, ...)
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows (kernel > stride) + LayerNorm: ``(B, C, H, W) -> (B, h*w, D)``."""

    def __init__(self, cin: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)  # (B, D, h, w), h = ceil(H / stride)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w  # (B, h*w, D)


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from the map shrunk by a ``sr x sr`` stride-``sr`` conv.

    Cost ``N * N / sr^2`` instead of ``N^2``; ``sr = 1`` is plain attention. Scale 1/sqrt(head dim).
    """

    def __init__(self, dim: int, heads: int, sr_ratio: int, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads, self.sr_ratio, self.attn_drop = heads, sr_ratio, attn_drop
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # keys then values, one matrix (the official layout)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:  # (B, N, D) with N = h * w -> (B, N, D)
        b, n, d = x.shape
        q = self.q(x).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, heads, N, d/heads)
        if self.sr_ratio > 1:
            r = self.sr(x.transpose(1, 2).reshape(b, d, h, w))  # (B, D, h/sr, w/sr), floor as in the original
            x = self.norm(r.flatten(2).transpose(1, 2))  # (B, M, D)
        kv = self.kv(x).reshape(b, -1, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (2, B, heads, M, .)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], dropout_p=drop)  # (B, heads, N, d/heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DWConv(nn.Module):
    """Depthwise 3x3 conv on tokens: ``(B, h*w, C) -> (B, h*w, C)`` (the "Mix" of Mix-FFN: positional information)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """fc1 -> depthwise 3x3 conv -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:  # (B, N, D) -> (B, N, D)
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class Block(nn.Module):
    """Pre-norm transformer block: efficient self-attention and Mix-FFN, each a residual with stochastic depth."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientSelfAttention(dim, heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:  # (B, N, D) -> (B, N, D)
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MixVisionTransformer(nn.Module):
    """MiT encoder: ``(B, 3, H, W)`` normalised image -> four maps at strides 4, 8, 16, 32 with ``embed_dims``.

    Args:
        spec: the variant's hyper-parameters (``MIT_SPECS[name]``).
        drop_path_rate: stochastic depth of the last block; block ``k`` of ``n`` gets ``rate * k / (n - 1)``.
    """

    def __init__(self, spec: MiTSpec, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        self.spec = spec
        self.embed_dims = spec.embed_dims
        n = sum(spec.depths)
        rates = [drop_path_rate * k / max(n - 1, 1) for k in range(n)]  # torch.linspace(0, rate, n), in Python
        cin, start = 3, 0
        for i, (dim, depth) in enumerate(zip(spec.embed_dims, spec.depths), start=1):
            kernel, stride = (7, 4) if i == 1 else (3, 2)
            setattr(self, f"patch_embed{i}", OverlapPatchEmbed(cin, dim, kernel, stride))
            blocks = [
                Block(dim, spec.num_heads[i - 1], spec.sr_ratios[i - 1], spec.mlp_ratio, rates[start + j])
                for j in range(depth)
            ]
            setattr(self, f"block{i}", nn.ModuleList(blocks))
            setattr(self, f"norm{i}", nn.LayerNorm(dim, eps=1e-6))
            cin, start = dim, start + depth
        self.apply(_init_mit)

    def forward(self, x: Tensor) -> list[Tensor]:  # (B, 3, H, W) -> [(B, D_i, ceil(H / 2^(i+2)), ...)] * 4
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"MiT encoders need inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} pixels (the stage-1 map "
                f"must cover one 8x8 spatial-reduction window); got {tuple(x.shape[-2:])}"
            )
        outs = []
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)  # (B, h*w, D)
            for blk in getattr(self, f"block{i}"):
                x = blk(x, h, w)
            x = getattr(self, f"norm{i}")(x)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)  # (B, D, h, w)
            outs.append(x)
        return outs


def _init_mit(m: nn.Module) -> None:
    """The SegFormer initialisation: truncated-normal linears (std 0.02), fan-out normal convs, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def mit(name: str, drop_path_rate: float = 0.1) -> MixVisionTransformer:
    """The MiT encoder ``name`` (``mit_b0`` ... ``mit_b5``)."""
    if name not in MIT_SPECS:
        raise KeyError(f"unknown MiT variant {name!r}; one of {', '.join(MIT_SPECS)}")
    return MixVisionTransformer(MIT_SPECS[name], drop_path_rate)
