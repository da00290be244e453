"""Exceptions for problems with user input (files, formats), reported by the programs as one line."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["InputError", "one_line", "some_names"]


class InputError(ValueError):
    """A user-supplied file or value is missing, unreadable or malformed.

    The message names the input (file, image id, row) and what was expected.
    """


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message.

    Parameters
    ----------
    exc : BaseException

    Returns
    -------
    str
        ``"Type: first line"``, or ``"Type"`` when the message is empty.

    Examples
    --------
    >>> one_line(ValueError("bad value\\nmore detail"))
    'ValueError: bad value'
    """
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def some_names(names: Iterable[str], *, limit: int = 10) -> str:
    """The first ``limit`` of ``names`` for a message, then how many more there are.

    Examples
    --------
    >>> some_names(["a.tif", "b.tif", "c.tif"], limit=2)
    'a.tif, b.tif and 1 more'
    """
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
