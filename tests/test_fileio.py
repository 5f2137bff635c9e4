"""udaseg.fileio (atomic writes, strict JSON) and udaseg.cli (one error path for the command line tools)."""

from __future__ import annotations

import errno
import json
import os

import pytest

from udaseg.cli import EXIT_USER_ERROR, run_cli
from udaseg.config import ConfigError
from udaseg.fileio import UserError, WriteError, atomic_write, write_json, write_text


def test_write_json_has_no_nan(tmp_path):
    path = write_json(tmp_path / "a.json", {"miou": float("nan"), "per_class": [1.5, float("inf")], "n": 3})
    text = path.read_text()
    assert json.loads(text) == {"miou": None, "per_class": [1.5, None], "n": 3}
    assert "NaN" not in text and "Infinity" not in text


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("the writer failed")
    assert path.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_disk_full_is_one_clear_error_naming_the_path(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match=r"cannot write .*big\.bin: no space left on the device"):
        with atomic_write(tmp_path / "big.bin") as f:
            f.write(b"x" * 1000)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert os.listdir(tmp_path) == []  # no .tmp left behind


def test_parent_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(WriteError, match="a part of the path is a file"):
        write_json(tmp_path / "f" / "sub" / "x.json", {})


@pytest.mark.parametrize(
    "error, expect",
    [
        (UserError("--flag: expected a number"), "error: --flag: expected a number"),
        (ConfigError("train.iters: must be >= 0"), "error: train.iters: must be >= 0"),
        (FileNotFoundError(errno.ENOENT, "No such file", "model.pt"), "error: model.pt: no such file or folder"),
    ],
)
def test_run_cli_user_errors_are_one_line_exit_2(capsys, error, expect):
    def main(argv):
        raise error

    assert run_cli(main, []) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith(expect) and "Traceback" not in err and err.count("\n") == 1


def test_run_cli_debug_keeps_the_traceback_and_bugs_are_not_hidden():
    def main(argv):
        assert "--debug" not in argv
        raise UserError("bad")

    with pytest.raises(UserError):
        run_cli(main, ["--debug"])

    def buggy(argv):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        run_cli(buggy, [])


def test_run_cli_passes_the_exit_code():
    assert run_cli(lambda argv: 3, ["x"]) == 3
    assert run_cli(lambda argv: None, []) == 0
