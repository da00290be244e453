"""What every program shares: logging set-up and turning user errors into one-line messages."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from flowseg.errors import InputError

__all__ = ["HelpFormatter", "VersionAction", "run_main", "setup_logging", "version_text"]

#: Loggers of Dask, shown with --verbose only.
_DASK_LOGGERS = ("distributed", "dask")

#: Exceptions that mean "the user's input is wrong": printed as one line, exit code 2.
USER_ERRORS = (InputError, ValueError, TypeError, FileNotFoundError, FileExistsError,
               PermissionError, IsADirectoryError, NotADirectoryError)


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Configure the root logger for a program run: INFO, WARNING when ``quiet``, DEBUG when
    ``verbose``. Dask's own loggers show errors only, unless ``verbose``."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", force=True)
    for name in _DASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` shows each option's default (unless its help names it, or it is None or
    False) and keeps the description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def version_text() -> str:
    """Versions of flowseg, Python, torch and CUDA (and the GPU torch sees, if any)."""
    import platform

    import torch

    import flowseg

    cuda = torch.version.cuda or "none (CPU build of torch)"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"flowseg {flowseg.__version__}\npython {platform.python_version()}\n"
            f"torch {torch.__version__}\nCUDA {cuda}\nGPU {gpu}")


class VersionAction(argparse.Action):
    """``--version``: print :func:`version_text` and exit (torch is imported only then)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="print the versions of flowseg, python, torch and CUDA and exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


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
