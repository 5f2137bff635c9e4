import os
import pickle

import pytest
import torch

from udaseg.checkpoint import CheckpointError, export_safetensors, load_checkpoint, load_model, save_checkpoint
from udaseg.models import build_model


def make_ckpt(path, name="compact", classes=19):
    model = build_model(name, num_classes=classes)
    payload = {
        "model": model.state_dict(),
        "teacher": model.state_dict(),
        "iteration": 3,
        "model_spec": {"name": name, "num_classes": classes, "kwargs": {}},
        "config": {"a": 1},
    }
    save_checkpoint(path, payload)
    return model


def test_atomic_write_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "last.pt"
    save_checkpoint(path, {"x": torch.arange(3)})
    save_checkpoint(path, {"x": torch.arange(4)})
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(4))
    assert os.listdir(path.parent) == ["last.pt"]


def test_load_model_roundtrip_and_safetensors(tmp_path):
    model = make_ckpt(tmp_path / "m.pt")
    loaded, info = load_model(tmp_path / "m.pt")
    x = torch.rand(1, 3, 33, 47)
    model.eval()
    assert torch.equal(model(x)["logits"], loaded(x)["logits"])
    assert info["iteration"] == 3 and info["weights"] == "teacher"
    export_safetensors(tmp_path / "m.pt", tmp_path / "m.safetensors")
    from_st, _ = load_model(tmp_path / "m.safetensors")
    assert torch.equal(model(x)["logits"], from_st(x)["logits"])


def test_mismatch_errors_name_both_sides(tmp_path):
    make_ckpt(tmp_path / "m.pt", classes=16)
    with pytest.raises(CheckpointError, match="16 classes, expected 19"):
        load_model(tmp_path / "m.pt", expect_classes=19)
    with pytest.raises(CheckpointError, match="architecture is 'compact', expected 'deeplabv2_r101'"):
        load_model(tmp_path / "m.pt", expect_name="deeplabv2_r101")


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path)


def test_garbage_and_missing(tmp_path):
    (tmp_path / "g.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="g.pt: not a readable"):
        load_checkpoint(tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    save_checkpoint(tmp_path / "nospec.pt", {"model": {}})
    with pytest.raises(CheckpointError, match="no model_spec"):
        load_model(tmp_path / "nospec.pt")
