"""Key names and shapes of published MiT weight files, written out from the layouts (not from udaseg's modules).

- official SegFormer ImageNet ``mit_b*.pth`` (NVlabs/SegFormer ``mix_transformer.py``): ``patch_embed1.proj``,
  ``block1.0.attn.q`` / ``attn.kv`` / ``attn.sr`` / ``attn.norm``, ``mlp.fc1`` / ``mlp.dwconv.dwconv`` / ``mlp.fc2``,
  ``norm1``, and the ImageNet classifier ``head``;
- Hugging Face ``SegformerForImageClassification`` (``nvidia/mit-b0``): ``segformer.encoder.patch_embeddings.0``,
  ``block.0.0.attention.self.query`` / ``key`` / ``value`` / ``sr`` / ``layer_norm``, ``attention.output.dense``,
  ``mlp.dense1`` / ``dwconv.dwconv`` / ``dense2``, ``layer_norm_1``, ``encoder.layer_norm.0``, ``classifier``.
"""

from __future__ import annotations

import torch

SPECS = {  # (embed dims, depths) from the SegFormer release
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}
SR_RATIOS = (8, 4, 2, 1)


def _lin(shapes: dict, name: str, out: int, cin: int) -> None:
    shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (out, cin), (out,)


def _norm(shapes: dict, name: str, dim: int) -> None:
    shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (dim,), (dim,)


def _conv(shapes: dict, name: str, out: int, cin: int, k: int) -> None:
    shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (out, cin, k, k), (out,)


def official_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of an official ``mit_bX.pth`` (ImageNet-1k head included)."""
    dims, depths = SPECS[variant]
    shapes: dict[str, tuple[int, ...]] = {}
    cin = 3
    for i, (d, depth, sr) in enumerate(zip(dims, depths, SR_RATIOS), start=1):
        _conv(shapes, f"patch_embed{i}.proj", d, cin, 7 if i == 1 else 3)
        _norm(shapes, f"patch_embed{i}.norm", d)
        for j in range(depth):
            b = f"block{i}.{j}"
            _norm(shapes, f"{b}.norm1", d)
            _lin(shapes, f"{b}.attn.q", d, d)
            _lin(shapes, f"{b}.attn.kv", 2 * d, d)
            _lin(shapes, f"{b}.attn.proj", d, d)
            if sr > 1:
                _conv(shapes, f"{b}.attn.sr", d, d, sr)
                _norm(shapes, f"{b}.attn.norm", d)
            _norm(shapes, f"{b}.norm2", d)
            _lin(shapes, f"{b}.mlp.fc1", 4 * d, d)
            _conv(shapes, f"{b}.mlp.dwconv.dwconv", 4 * d, 1, 3)
            _lin(shapes, f"{b}.mlp.fc2", d, 4 * d)
        _norm(shapes, f"norm{i}", d)
        cin = d
    _lin(shapes, "head", 1000, dims[-1])
    return shapes


def hf_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a Hugging Face ``SegformerForImageClassification`` file."""
    dims, depths = SPECS[variant]
    shapes: dict[str, tuple[int, ...]] = {}
    e = "segformer.encoder"
    cin = 3
    for i, (d, depth, sr) in enumerate(zip(dims, depths, SR_RATIOS)):
        _conv(shapes, f"{e}.patch_embeddings.{i}.proj", d, cin, 7 if i == 0 else 3)
        _norm(shapes, f"{e}.patch_embeddings.{i}.layer_norm", d)
        for j in range(depth):
            b = f"{e}.block.{i}.{j}"
            _norm(shapes, f"{b}.layer_norm_1", d)
            for part in ("query", "key", "value"):
                _lin(shapes, f"{b}.attention.self.{part}", d, d)
            if sr > 1:
                _conv(shapes, f"{b}.attention.self.sr", d, d, sr)
                _norm(shapes, f"{b}.attention.self.layer_norm", d)
            _lin(shapes, f"{b}.attention.output.dense", d, d)
            _norm(shapes, f"{b}.layer_norm_2", d)
            _lin(shapes, f"{b}.mlp.dense1", 4 * d, d)
            _conv(shapes, f"{b}.mlp.dwconv.dwconv", 4 * d, 1, 3)
            _lin(shapes, f"{b}.mlp.dense2", d, 4 * d)
        _norm(shapes, f"{e}.layer_norm.{i}", d)
        cin = d
    _lin(shapes, "classifier", 1000, dims[-1])
    return shapes


def fabricate(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes (small values, so a model built from them stays finite)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: 0.05 * torch.randn(s, generator=gen) for k, s in shapes.items()}


def official_to_hf(sd: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """The same weights under Hugging Face names (``kv`` split into ``key`` and ``value``)."""
    to_hf = {hf_to_official(k): k for k in hf_shapes(variant) if not k.endswith(HF_KV_PARTS)}
    out = {}
    for k, v in sd.items():
        if ".attn.kv." in k:
            block, param = k.split(".attn.kv.")
            stage, j = block[len("block") :].split(".")
            base = f"segformer.encoder.block.{int(stage) - 1}.{j}.attention.self"
            d = v.shape[0] // 2
            out[f"{base}.key.{param}"], out[f"{base}.value.{param}"] = v[:d], v[d:]
        else:
            out[to_hf[k]] = v
    return out


HF_KV_PARTS = tuple(f".attention.self.{p}.{w}" for p in ("key", "value") for w in ("weight", "bias"))


def hf_to_official(k: str) -> str:
    """Hugging Face key -> official key, written out rule by rule for the test (independent of udaseg's regexes)."""
    parts = k.split(".")
    if parts[0] == "classifier":
        return "head." + parts[1]
    parts = parts[2:]  # drop segformer.encoder
    if parts[0] == "patch_embeddings":
        sub = {"proj": "proj", "layer_norm": "norm"}[parts[2]]
        return f"patch_embed{int(parts[1]) + 1}.{sub}.{parts[3]}"
    if parts[0] == "layer_norm":
        return f"norm{int(parts[1]) + 1}.{parts[2]}"
    stage, j, rest = int(parts[1]) + 1, parts[2], ".".join(parts[3:])
    table = {
        "layer_norm_1": "norm1", "layer_norm_2": "norm2", "attention.self.query": "attn.q",
        "attention.self.sr": "attn.sr", "attention.self.layer_norm": "attn.norm", "attention.output.dense": "attn.proj",
        "mlp.dense1": "mlp.fc1", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv", "mlp.dense2": "mlp.fc2",
    }  # fmt: skip
    module, param = rest.rsplit(".", 1)
    return f"block{stage}.{j}.{table[module]}.{param}"
