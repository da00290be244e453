"""Exceptions for problems with user input (files, formats), reported by the programs as one line."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """A user-supplied file or value is missing, unreadable or malformed.

    The message names the input (file, image id, row) and what was expected.
    """
