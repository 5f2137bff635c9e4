"""MiT weights from the files users have: official ``mit_b*.pth``, Hugging Face ``segformer``, mmseg/DAFormer.

State dicts are fabricated with the published key names and shapes (tests/models/mit_keys.py); nothing is downloaded.
"""

from __future__ import annotations

import logging

import pytest
import torch
from mit_keys import fabricate, hf_shapes, official_shapes, official_to_hf
from safetensors.torch import save_file

from udaseg.cli import run_cli
from udaseg.models import build_model
from udaseg.models.pretrained import PretrainedError, convert_mit, load_pretrained


@pytest.fixture(scope="module")
def official_b0():
    return fabricate(official_shapes("mit_b0"))


def _model(name="segformer_mitb0", num_classes=19):
    torch.manual_seed(1)
    return build_model(name, num_classes=num_classes)


def test_official_layout_loads_every_encoder_tensor(tmp_path, official_b0, caplog):
    torch.save(official_b0, tmp_path / "mit_b0.pth")
    model = _model()
    with caplog.at_level(logging.WARNING, logger="udaseg.models.pretrained"):
        report = load_pretrained(model, tmp_path / "mit_b0.pth")
    sd = model.state_dict()
    for k, v in official_b0.items():
        if not k.startswith("head."):
            torch.testing.assert_close(sd["backbone." + k], v, msg=k)
    assert sorted(report.unexpected) == ["head.bias", "head.weight"]  # the ImageNet classifier
    assert report.missing and all(k.startswith("decode_head.") for k in report.missing)  # trained from scratch
    assert len(report.loaded) == len(official_b0) - 2
    assert "head.weight" in caplog.text and "decode_head.linear_c.0.proj.weight" in caplog.text


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_hugging_face_layout_equals_the_official_one(tmp_path, official_b0, fmt):
    """Same weights in both layouts -> identical models; key + value become the official kv (keys first)."""
    hf = official_to_hf(official_b0, "mit_b0")
    assert set(hf) == set(hf_shapes("mit_b0"))
    if fmt == "pth":
        torch.save(hf, tmp_path / "pytorch_model.bin")
        path = tmp_path / "pytorch_model.bin"
    else:
        save_file({k: v.contiguous() for k, v in hf.items()}, str(tmp_path / "model.safetensors"))
        path = tmp_path / "model.safetensors"
    torch.save(official_b0, tmp_path / "mit_b0.pth")
    a, b = _model(), _model()
    load_pretrained(a, tmp_path / "mit_b0.pth")
    report = load_pretrained(b, path)
    assert sorted(report.unexpected) == ["classifier.bias", "classifier.weight"]
    kv = b.backbone.block2[1].attn.kv.weight
    key = hf["segformer.encoder.block.1.1.attention.self.key.weight"]
    value = hf["segformer.encoder.block.1.1.attention.self.value.weight"]
    torch.testing.assert_close(kv, torch.cat([key, value]))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        torch.testing.assert_close(va, vb, msg=ka)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x)["logits"], b.eval()(x)["logits"])


@pytest.mark.parametrize("wrap", ["state_dict", "ddp", "mmseg", "daformer"])
def test_wrapped_checkpoints(tmp_path, official_b0, wrap):
    """mmcv 'state_dict', DDP 'module.', an mmseg segmentor ('backbone.'), a DAFormer UDA run ('model.backbone.')."""
    enc = {k: v for k, v in official_b0.items() if not k.startswith("head.")}
    obj = {
        "state_dict": {"state_dict": official_b0, "meta": {"epoch": 1}},
        "ddp": {"module." + k: v for k, v in official_b0.items()},
        "mmseg": {"state_dict": {"backbone." + k: v for k, v in enc.items()}},
        "daformer": {"state_dict": {**{f"{m}.backbone.{k}": v for m in ("model", "ema_model", "imnet_model")
                                       for k, v in enc.items()}}},
    }[wrap]  # fmt: skip
    torch.save(obj, tmp_path / "w.pth")
    model = _model()
    report = load_pretrained(model, tmp_path / "w.pth")
    assert len(report.loaded) == len(enc)
    torch.testing.assert_close(model.backbone.block3[0].mlp.dwconv.dwconv.weight,
                               official_b0["block3.0.mlp.dwconv.dwconv.weight"])  # fmt: skip
    if wrap == "daformer":  # the student ("model.") is loaded; the teacher and ImageNet copies are reported
        assert all(k.startswith(("ema_model.", "imnet_model.")) for k in report.unexpected)


def test_full_segmentor_round_trip_and_class_count_change(tmp_path):
    """A udaseg/mmseg DAFormer state dict loads decoder and all; another class count skips only the classifier."""
    src = _model("daformer_mitb0", num_classes=19)
    torch.save({"state_dict": {"model." + k: v for k, v in src.state_dict().items()}}, tmp_path / "daformer.pth")
    same = _model("daformer_mitb0", num_classes=19)
    report = load_pretrained(same, tmp_path / "daformer.pth")
    assert not report.missing and not report.unexpected and not report.skipped
    other = _model("daformer_mitb0", num_classes=7)
    report = load_pretrained(other, tmp_path / "daformer.pth")
    assert sorted(report.skipped) == ["decode_head.conv_seg.bias", "decode_head.conv_seg.weight"]
    torch.testing.assert_close(other.decode_head.fuse_layer.bottleneck.conv.weight,
                               src.decode_head.fuse_layer.bottleneck.conv.weight)  # fmt: skip


def test_hugging_face_semantic_segmentation_head(tmp_path, official_b0):
    """SegformerForSemanticSegmentation: decode_head.linear_fuse/batch_norm/classifier -> segformer_mit* names."""
    src = _model("segformer_mitb0", num_classes=19)
    head = {k[len("decode_head.") :]: v for k, v in src.state_dict().items() if k.startswith("decode_head.")}
    hf_head = {}
    for k, v in head.items():
        k = k.replace("linear_fuse.conv.", "linear_fuse.").replace("linear_fuse.bn.", "batch_norm.")
        hf_head["decode_head." + k.replace("linear_pred.", "classifier.")] = v
    assert "decode_head.batch_norm.running_var" in hf_head and "decode_head.classifier.weight" in hf_head
    hf = {**{k: v for k, v in official_to_hf(official_b0, "mit_b0").items() if not k.startswith("classifier.")},
          **hf_head}  # fmt: skip
    torch.save(hf, tmp_path / "hf_seg.bin")
    dst = _model("segformer_mitb0", num_classes=19)
    report = load_pretrained(dst, tmp_path / "hf_seg.bin")
    assert not report.missing and not report.unexpected
    torch.testing.assert_close(dst.decode_head.linear_fuse.bn.running_var, src.decode_head.linear_fuse.bn.running_var)


def test_other_variant_is_refused_naming_both(tmp_path):
    torch.save(fabricate(official_shapes("mit_b1")), tmp_path / "mit_b1.pth")
    with pytest.raises(PretrainedError, match=r"\(mit_b1\).*model's encoder is mit_b0.*model.name: segformer_mitb1"):
        load_pretrained(_model(), tmp_path / "mit_b1.pth")
    with torch.device("meta"):
        b2 = build_model("daformer_mitb2")  # same widths as mit_b1, deeper: refused for its depths
    with pytest.raises(PretrainedError, match=r"depths \(2, 2, 2, 2\) \(mit_b1\).*mit_b2"):
        load_pretrained(b2, tmp_path / "mit_b1.pth")
    odd = {k: v for k, v in fabricate(official_shapes("mit_b0")).items() if not k.startswith("block4.1.")}
    torch.save(odd, tmp_path / "odd.pth")  # one block short: no released variant
    with pytest.raises(PretrainedError, match=r"depths \(2, 2, 2, 1\) \(no released variant\)"):
        load_pretrained(_model(), tmp_path / "odd.pth")


def test_shape_mismatch_names_the_file_key(tmp_path, official_b0):
    hf = official_to_hf(official_b0, "mit_b0")
    hf["segformer.encoder.block.0.1.mlp.dense1.weight"] = torch.zeros(64, 32)  # should be (128, 32)
    torch.save(hf, tmp_path / "bad.bin")
    with pytest.raises(PretrainedError, match=r"backbone.block1.1.mlp.fc1.weight \(file: "
                                              r"segformer.encoder.block.0.1.mlp.dense1.weight\)"):  # fmt: skip
        load_pretrained(_model(), tmp_path / "bad.bin")


def test_larger_variant_key_sets_match_by_name_and_shape():
    """mit_b5 (3, 6, 40, 3) and mit_b2: every published key maps onto the model with its shape (meta tensors)."""
    for variant, model_name in [("mit_b5", "daformer_mitb5"), ("mit_b2", "segformer_mitb2")]:
        with torch.device("meta"):
            own = {k: tuple(v.shape) for k, v in build_model(model_name).state_dict().items()}
            for shapes in (official_shapes(variant), hf_shapes(variant)):
                sd, origin = convert_mit({k: torch.empty(s) for k, s in shapes.items()})
                mapped = {k: tuple(v.shape) for k, v in sd.items() if k.startswith("backbone.")}
                assert mapped == {k: s for k, s in own.items() if k.startswith("backbone.")}
                assert set(sd) - set(mapped) <= {"head.weight", "head.bias", "classifier.weight", "classifier.bias"}
        assert len(official_shapes(variant)) - 2 == len(mapped)


def test_pretrained_flag_error_is_one_line_in_the_cli(tmp_path, capsys):
    torch.save(fabricate(official_shapes("mit_b1")), tmp_path / "mit_b1.pth")

    def main(argv):
        build_model("segformer_mitb0", pretrained=tmp_path / "mit_b1.pth")

    assert run_cli(main, []) == 2
    assert "error:" in capsys.readouterr().err


def test_weights_only_is_used(tmp_path, official_b0, monkeypatch):
    torch.save(official_b0, tmp_path / "w.pth")
    calls, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw.get("weights_only")) or real(*a, **kw))
    load_pretrained(_model(), tmp_path / "w.pth")
    assert calls == [True]
