"""Every file udaseg writes goes through here: atomic, cleaned up on failure, one clear line on an OS error.

    with atomic_write(path) as f:        # binary file object; the file appears whole at `path` or not at all
        torch.save(payload, f)
    write_json(path, {"miou": float("nan")})   # NaN/inf become null: the file is always valid JSON
    write_text(path, "...")

A write that fails (disk full, permission denied, a folder that cannot be made) removes its temporary file and
raises `WriteError` naming the path and the cause, so a CLI prints one line instead of a traceback and the
previous version of the file, if any, is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class UserError(Exception):
    """A mistake a user can fix (a flag, a file, a key): the CLIs print its message alone and exit with code 2."""


class WriteError(UserError, OSError):
    """A file could not be written (disk full, no permission, ...): the message names the path and the cause."""


_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "the path is a folder",
}


def describe_os_error(e: OSError) -> str:
    """'no space left on the device' style text for an OSError (its strerror where we have no better words)."""
    return _REASONS.get(e.errno or -1, e.strerror or type(e).__name__)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success fsync and rename it over `path`, on any failure remove it.

    A reader sees the old file or the new one, never half of one. OS errors become `WriteError` naming `path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError as e:  # a part of the parent path is a file: say that, not "File exists"
            raise WriteError(f"cannot write {path}: {_REASONS[errno.ENOTDIR]}") from e
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the rename below must not overtake the data on a crash
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if isinstance(e, WriteError):
            raise
        raise WriteError(f"cannot write {path}: {describe_os_error(e)}") from e
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def finite_json(value: Any) -> Any:
    """`value` with every NaN/inf float replaced by None (JSON has no NaN), recursively through dicts and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def json_text(value: Any, indent: int | None = 2) -> str:
    """Strict JSON (NaN/inf -> null, `allow_nan=False` as a guard) with a trailing newline."""
    return json.dumps(finite_json(value), indent=indent, allow_nan=False, default=str) + "\n"


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> Path:
    return write_text(path, json_text(value, indent))
