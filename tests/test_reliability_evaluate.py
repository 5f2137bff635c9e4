"""Issue 12, case 7 through `python -m udaseg.evaluate`: a user's mistake or an OS error is one line and exit code 2,
found before any computation where it can be, and nothing half-written is left behind."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from udaseg.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from udaseg.evaluate import main
from udaseg.models import build_model


@pytest.fixture
def checkpoint(tmp_path):
    model = build_model("compact", num_classes=19, width=8)
    path = tmp_path / "c.pt"
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "teacher": model.state_dict(),
            "iteration": 1,
            "model_spec": {"name": "compact", "num_classes": 19, "kwargs": {"width": 8}},
        },
    )
    return path


@pytest.fixture
def no_evaluation(monkeypatch):
    """Dataset and evaluation replaced: these tests are about the errors around them."""
    import udaseg.data
    import udaseg.evaluate as E

    calls = []
    monkeypatch.setattr(udaseg.data, "build_dataset", lambda *a, **k: calls.append("data") or [], raising=False)

    def fake_evaluate(*a, **k):
        calls.append("evaluate")
        return {
            "miou": float("nan"),
            "per_class": {"road": None},
            "protocol": 19,
            "pixel_acc": float("nan"),
            "images": 0,
        }

    monkeypatch.setattr(E, "evaluate", fake_evaluate)
    return calls


def one_line_error(capsys, *expected):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize("content, why", [(b"every text file is not a checkpoint", "not a readable udaseg checkpoint"),
                                           (b'{"json": 1}', "not a readable udaseg checkpoint"),
                                           (b"", "empty file (0 bytes)")])  # fmt: skip
def test_a_file_that_is_no_checkpoint(tmp_path, capsys, no_evaluation, content, why):
    (tmp_path / "last.pt").write_bytes(content)
    assert main(["--checkpoint", str(tmp_path / "last.pt"), "--dataset", "synthetic"]) == 2
    one_line_error(capsys, str(tmp_path / "last.pt"), why)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "last.pt")


def test_an_unwritable_output_is_refused_before_computing(tmp_path, capsys, checkpoint, no_evaluation):
    (tmp_path / "file").write_text("a file where a folder is expected")
    out = tmp_path / "file" / "r.json"
    assert main(["--checkpoint", str(checkpoint), "--dataset", "synthetic", "--output", str(out)]) == 2
    one_line_error(capsys, f"--output {out}: cannot write there")
    assert no_evaluation == []  # nothing computed, nothing lost


def test_a_full_disk_leaves_no_temporary_file(tmp_path, capsys, checkpoint, no_evaluation, monkeypatch):
    import os

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    out = tmp_path / "res" / "r.json"
    assert main(["--checkpoint", str(checkpoint), "--dataset", "synthetic", "--output", str(out)]) == 2
    one_line_error(capsys, f"cannot write {out}: no space left on the device")
    assert list((tmp_path / "res").iterdir()) == []


def test_the_result_is_strict_json(tmp_path, capsys, checkpoint, no_evaluation):
    out = tmp_path / "r.json"
    assert main(["--checkpoint", str(checkpoint), "--dataset", "synthetic", "--output", str(out)]) == 0
    result = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{out} holds {c}"))
    assert result["miou"] is None and result["iteration"] == 1


def test_a_checkpoint_write_that_fails_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"x": torch.arange(3)})
    real = torch.save

    def disk_full(obj, f, *a, **k):
        f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="no space left"):
        save_checkpoint(path, {"x": torch.arange(4)})
    monkeypatch.setattr(torch, "save", real)
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(3)) and [p.name for p in tmp_path.iterdir()] == [
        "last.pt"
    ]


def test_a_split_without_labels_is_refused_not_a_silent_nan(tmp_path, capsys, checkpoint):
    """Issue 12 case 3 through evaluate: Cityscapes images without gtFine/ are refused, naming the missing folder."""
    import shutil

    from tests.data.data_fixtures import make_cityscapes

    make_cityscapes(tmp_path / "cs", split="val")
    shutil.rmtree(tmp_path / "cs" / "gtFine")
    assert (
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--dataset",
                f"cityscapes:{tmp_path / 'cs'}",
                "--device",
                "cpu",
                "--output",
                str(tmp_path / "r.json"),
            ]
        )
        == 2
    )
    one_line_error(capsys, "has no labels", "gtFine")
    assert not (tmp_path / "r.json").exists()
