"""Local pretrained weights: .pth/.safetensors, wrapper prefixes, class-count changes, clear errors, weights_only."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from udaseg.models import build_model
from udaseg.models.deeplabv2 import DeepLabV2
from udaseg.models.pretrained import load_pretrained


def small(num_classes=19):
    torch.manual_seed(num_classes)
    return build_model("compact", num_classes=num_classes, width=8, feature_dim=16)


def assert_same_backbone(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if not k.startswith("classifier."):
            torch.testing.assert_close(sa[k], sb[k], msg=k)


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "ddp"])
def test_pth_round_trip(tmp_path, wrap):
    src = small()
    sd = src.state_dict()
    obj = {
        "raw": sd,
        "state_dict": {"state_dict": sd, "meta": {"epoch": 3}},
        "model": {"model": sd, "iteration": 7},
        "ddp": {"state_dict": {"module." + k: v for k, v in sd.items()}},
    }[wrap]
    torch.save(obj, tmp_path / "w.pth")
    dst = build_model("compact", num_classes=19, width=8, feature_dim=16, pretrained=tmp_path / "w.pth")
    for k, v in sd.items():
        torch.testing.assert_close(dst.state_dict()[k], v, msg=k)


def test_safetensors_with_prefix_and_new_class_count(tmp_path):
    src = small(19)
    save_file({"backbone." + k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    dst = small(5)
    init_cls = dst.classifier.weight.clone()
    report = load_pretrained(dst, tmp_path / "w.safetensors")
    assert set(report.skipped) == {"classifier.weight", "classifier.bias"}
    assert not report.unexpected
    torch.testing.assert_close(dst.classifier.weight, init_cls)  # left at its initialisation
    assert_same_backbone(src, dst)


def test_missing_and_unexpected_keys_are_reported(tmp_path, caplog):
    sd = small().state_dict()
    sd.pop("stem.0.0.weight")
    sd["fc.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "w.pth")
    with caplog.at_level(logging.WARNING, logger="udaseg.models.pretrained"):
        report = load_pretrained(small(), tmp_path / "w.pth")
    assert report.missing == ["stem.0.0.weight"] and report.unexpected == ["fc.weight"]
    assert "stem.0.0.weight" in caplog.text and "fc.weight" in caplog.text
    with pytest.raises(ValueError, match="missing"):
        load_pretrained(small(), tmp_path / "w.pth", strict=True)


def test_not_a_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("hello, I am not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        load_pretrained(small(), bad)
    bad_st = tmp_path / "w.safetensors"
    bad_st.write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="w.safetensors"):
        load_pretrained(small(), bad_st)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_pretrained(small(), tmp_path / "absent.pth")


def test_file_without_state_dict_or_matching_keys(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(ValueError, match="no state dict"):
        load_pretrained(small(), tmp_path / "meta.pth")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no tensor matches"):
        load_pretrained(small(), tmp_path / "other.pth")


def test_other_architecture_shape_mismatch_is_an_error(tmp_path):
    torch.save(build_model("compact", width=16).state_dict(), tmp_path / "w16.pth")
    with pytest.raises(ValueError, match="shapes differ"):
        load_pretrained(small(), tmp_path / "w16.pth")


def test_pickled_objects_are_refused(tmp_path):
    """weights_only=True: a pickle that would build an arbitrary object is rejected, not executed."""

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"state_dict": small().state_dict(), "x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="evil.pth"):
        load_pretrained(small(), tmp_path / "evil.pth")


def test_torch_load_called_with_weights_only(tmp_path, monkeypatch):
    torch.save(small().state_dict(), tmp_path / "w.pt")
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_pretrained(small(), tmp_path / "w.pt")
    assert calls == [True]


def test_advent_deeplab_layout_is_renamed(tmp_path):
    """AdvEnt/DACS name the ASPP layer5.conv2d_list; it loads into classifier.convs."""
    src = DeepLabV2(num_classes=3, layers=(1, 1, 1, 1))  # the key layout of deeplabv2_r101, few blocks
    sd = {k.replace("classifier.convs.", "layer5.conv2d_list."): v for k, v in src.state_dict().items()}
    torch.save(sd, tmp_path / "advent.pth")
    dst = DeepLabV2(num_classes=3, layers=(1, 1, 1, 1))
    report = load_pretrained(dst, tmp_path / "advent.pth")
    assert not report.missing and not report.unexpected
    torch.testing.assert_close(dst.classifier.convs[2].weight, src.classifier.convs[2].weight)
