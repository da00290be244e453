"""What every program shares: logging set-up and turning user errors into one-line messages."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

from flowseg.errors import InputError

__all__ = ["run_main", "setup_logging"]

#: Exceptions that mean "the user's input is wrong": printed as one line, exit code 2.
USER_ERRORS = (InputError, ValueError, TypeError, FileNotFoundError, FileExistsError,
               PermissionError, IsADirectoryError, NotADirectoryError)


def setup_logging(quiet: bool = False) -> None:
    """Configure the root logger for a program run (INFO, or WARNING when quiet)."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s: %(message)s", force=True)


def run_main(prog: str, main: Callable[[Sequence[str] | None], int],
             argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; a user error becomes ``prog: error: message`` on stderr and exit 2.

    Set the environment variable ``FLOWSEG_DEBUG=1`` to see the full traceback instead.
    """
    import os

    try:
        return main(argv)
    except USER_ERRORS as exc:
        if os.environ.get("FLOWSEG_DEBUG"):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
