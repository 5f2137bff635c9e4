"""One error path for every command line tool: a user's mistake or an OS error is one line and exit code 2.

    def main(argv=None) -> int:
        return run_cli(_main, argv)      # _main(argv) -> int does the work and raises on errors

`UserError` (and its subclasses, `ConfigError`, `CheckpointError`, data errors, ...), `FileNotFoundError`,
`PermissionError` and other `OSError`s print `error: <message>` on stderr and return 2; `--debug` anywhere in
argv (or UDASEG_DEBUG=1) re-raises them with the traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from udaseg.fileio import UserError, describe_os_error

EXIT_USER_ERROR = 2


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that are a user's mistake or the OS's answer, never a bug of ours."""
    from udaseg.checkpoint import CheckpointError
    from udaseg.config import ConfigError

    return (UserError, ConfigError, CheckpointError, OSError)


def format_user_error(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, UserError) and e.filename is not None:
        return f"{e.filename}: {describe_os_error(e)}"
    return str(e) or type(e).__name__


def run_cli(fn: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Call fn(argv without --debug); map user and OS errors to one line on stderr and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("UDASEG_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        return int(fn(args) or 0)
    except user_error_types() as e:
        if debug:
            raise
        print(f"error: {format_user_error(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
