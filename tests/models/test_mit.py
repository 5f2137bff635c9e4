"""MiT encoders and the DAFormer / SegFormer decoders: registry, contract, attention, parameter counts, groups.

Forward/backward tests use mit_b0 on 64x64-ish inputs; larger variants are built on the meta device (no memory).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_models import check_output

from udaseg.models import build_model, list_models
from udaseg.models.daformer import SegFormerHead
from udaseg.models.mit import MIN_INPUT_SIZE, MIT_SPECS, DropPath, EfficientSelfAttention

VARIANTS = [f"b{i}" for i in range(6)]


def test_registered_names():
    names = set(list_models())
    assert {f"daformer_mit{v}" for v in VARIANTS} <= names
    assert {f"segformer_mit{v}" for v in VARIANTS} <= names


def test_variant_hyper_parameters():
    """SegFormer release: B0 narrow, B1-B5 share widths (64, 128, 320, 512) and differ in depth."""
    assert MIT_SPECS["mit_b0"].embed_dims == (32, 64, 160, 256)
    depths = {n: s.depths for n, s in MIT_SPECS.items()}
    assert depths == {
        "mit_b0": (2, 2, 2, 2), "mit_b1": (2, 2, 2, 2), "mit_b2": (3, 4, 6, 3),
        "mit_b3": (3, 4, 18, 3), "mit_b4": (3, 8, 27, 3), "mit_b5": (3, 6, 40, 3),
    }  # fmt: skip
    for spec in MIT_SPECS.values():
        assert spec.num_heads == (1, 2, 5, 8) and spec.sr_ratios == (8, 4, 2, 1) and spec.mlp_ratio == 4


@pytest.mark.parametrize("variant, millions", list(zip(VARIANTS, [3.8, 13.7, 27.5, 47.3, 64.1, 84.7])))
def test_segformer_parameter_counts_match_the_paper(variant, millions):
    """SegFormer paper, Table 1: B0-B5 parameters with the ADE20K head (150 classes)."""
    with torch.device("meta"):
        model = build_model(f"segformer_mit{variant}", num_classes=150)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - millions) < 0.06


def test_daformer_parameter_count():
    """DAFormer (MiT-B5 + context-aware fusion, 19 classes): 85.2 M."""
    with torch.device("meta"):
        model = build_model("daformer_mitb5")
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 85.2) < 0.05


@pytest.mark.parametrize("head", ["daformer", "segformer"])
@pytest.mark.parametrize("size", [(65, 97), (MIN_INPUT_SIZE, 40)])
def test_forward_backward_contract(head, size):
    torch.manual_seed(0)
    model = build_model(f"{head}_mitb0", num_classes=5)
    assert model.output_stride == 4 and model.num_classes == 5 and model.feature_dim == 256
    check_output(model.eval(), size, batch=1)
    out = check_output(model.train(), size)
    out["logits"].sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad


def test_features_are_the_fused_decoder_output():
    torch.manual_seed(0)
    model = build_model("daformer_mitb0", num_classes=3).eval()
    seen = {}
    model.decode_head.fuse_layer.register_forward_hook(lambda m, i, o: seen.setdefault("fused", o))
    out = model(torch.rand(1, 3, 64, 64))
    torch.testing.assert_close(out["features"], seen["fused"])
    torch.testing.assert_close(out["logits"], model.decode_head.conv_seg(seen["fused"]))  # eval: no dropout


def test_too_small_input_is_a_clear_error():
    model = build_model("segformer_mitb0").eval()
    with pytest.raises(ValueError, match="at least 29x29"):
        model(torch.rand(1, 3, 28, 64))


def test_attention_matches_the_explicit_formula():
    """SDPA == softmax(q k^T / sqrt(d)) v with keys/values from the sr-reduced, normalised map (the official code)."""
    torch.manual_seed(0)
    dim, heads, sr, h, w = 64, 2, 4, 9, 13
    attn = EfficientSelfAttention(dim, heads, sr).eval()
    x = torch.randn(2, h * w, dim)
    b, n, d = x.shape
    q = attn.q(x).reshape(b, n, heads, d // heads).permute(0, 2, 1, 3)
    r = attn.sr(x.permute(0, 2, 1).reshape(b, d, h, w)).reshape(b, d, -1).permute(0, 2, 1)
    kv = attn.kv(attn.norm(r)).reshape(b, -1, 2, heads, d // heads).permute(2, 0, 3, 1, 4)
    a = (q @ kv[0].transpose(-2, -1) * (d // heads) ** -0.5).softmax(-1)
    ref = attn.proj((a @ kv[1]).transpose(1, 2).reshape(b, n, d))
    assert r.shape[1] == (h // sr) * (w // sr)  # floor, as the official strided conv
    torch.testing.assert_close(attn(x, h, w), ref, atol=1e-5, rtol=1e-5)


def test_drop_path():
    torch.manual_seed(0)
    dp = DropPath(0.5)
    x = torch.ones(4000, 3)
    y = dp.train()(x)
    kept = y[:, 0] != 0
    assert 0.4 < kept.float().mean() < 0.6  # whole samples dropped ...
    assert torch.all(y[kept] == 2.0) and torch.all(y[~kept] == 0)  # ... the others scaled by 1 / keep
    assert dp.eval()(x) is x
    model = build_model("daformer_mitb0")
    rates = [blk.drop_path.p for i in range(1, 5) for blk in getattr(model.backbone, f"block{i}")]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)


def test_param_groups_head_ten_times_and_no_decay_on_norms():
    model = build_model("daformer_mitb0")
    groups = {g["name"]: g for g in model.param_groups(6e-5)}
    assert set(groups) == {"backbone", "backbone_norm", "head"}
    assert groups["head"]["lr"] == pytest.approx(6e-4) and groups["backbone"]["lr"] == 6e-5
    assert groups["backbone_norm"]["weight_decay"] == 0.0 and "weight_decay" not in groups["backbone"]
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for _ in model.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("norm" in names[id(p)] for p in groups["backbone_norm"]["params"])
    assert {id(p) for p in model.decode_head.parameters()} == {id(p) for p in groups["head"]["params"]}
    opt = torch.optim.AdamW(model.param_groups(6e-5), weight_decay=0.01)  # the group's 0 wins over the default
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.01, 0.01]


def test_segformer_embed_dims_per_variant():
    with torch.device("meta"):
        assert build_model("segformer_mitb1").feature_dim == 256
        assert build_model("segformer_mitb2").feature_dim == 768
        assert build_model("daformer_mitb5").feature_dim == 256
        assert build_model("segformer_mitb0", embed_dim=128).feature_dim == 128


def test_output_size_is_ceil_of_stride_4():
    model = build_model("segformer_mitb0").eval()
    with torch.no_grad():
        for h, w in [(33, 47), (64, 96)]:
            out = model(torch.rand(1, 3, h, w))["logits"]
            assert out.shape[-2:] == (math.ceil(h / 4), math.ceil(w / 4))


def test_channels_last_matches():
    torch.manual_seed(0)
    model = build_model("segformer_mitb0", num_classes=4).eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)["logits"]
        cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))["logits"]
    torch.testing.assert_close(cl, ref, atol=1e-4, rtol=1e-4)


def test_segformer_head_fuses_the_deepest_level_first():
    """SegFormer and Hugging Face fuse [c4, c3, c2, c1]: the channel order their linear_fuse weights expect."""
    torch.manual_seed(0)
    head = SegFormerHead((8, 16, 24, 32), num_classes=3, embed_dim=4).eval()
    maps = [torch.randn(1, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate((8, 16, 24, 32))]
    emb = [F.interpolate(head.linear_c[i](m), size=(16, 16), mode="bilinear") for i, m in enumerate(maps)]
    with torch.no_grad():
        logits, feats = head(maps)
        torch.testing.assert_close(feats, head.linear_fuse(torch.cat([emb[3], emb[2], emb[1], emb[0]], dim=1)))
        torch.testing.assert_close(logits, head.linear_pred(feats))
