"""Reading CSV files whose every failure is one line naming the file and the line.

:func:`open_csv` decodes the file line by line as UTF-8 (a leading byte-order mark is dropped),
so a byte that is not UTF-8 is reported with its exact line, and gives the header separately:
an empty file has the header ``[]`` (for the caller to name what it expected), never an
exception from a closed file.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from flowseg.errors import InputError

__all__ = ["CsvReader", "open_csv"]


def _label(what: str, path: Path) -> str:
    return f"{what} {path}".strip()


def _decoded_lines(raw_lines: Iterable[bytes], label: str) -> Iterator[str]:
    """UTF-8 text of each line; InputError naming the line at the first byte that is not."""
    for number, raw in enumerate(raw_lines, start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{label} line {number}: not UTF-8 text (byte {raw[exc.start]:#04x} "
                             f"at column {exc.start + 1}); expected a UTF-8 CSV file") from None


class CsvReader:
    """The rows of an open CSV file (see :func:`open_csv`).

    Attributes
    ----------
    header : list of str
        The first row, each name stripped; ``[]`` for an empty file.
    line_num : int
        File line on which the last row returned ends (the header is line 1).
    """

    def __init__(self, raw_lines: Iterable[bytes], label: str):
        self._label = label
        self._reader = csv.reader(_decoded_lines(raw_lines, label))
        self.header = [name.strip() for name in self._next() or []]

    @property
    def line_num(self) -> int:
        return self._reader.line_num

    def _next(self) -> list[str] | None:
        try:
            return next(self._reader, None)
        except csv.Error as exc:
            raise InputError(f"{self._label} line {self._reader.line_num}: malformed CSV "
                             f"({exc})") from None

    def __iter__(self) -> Iterator[list[str]]:
        """The data rows, blank lines skipped."""
        while (row := self._next()) is not None:
            if row:
                yield row

    def records(self) -> Iterator[dict[str, str]]:
        """The data rows as ``{column: value}`` (missing trailing fields are ``""``)."""
        for row in self:
            yield {name: row[i] if i < len(row) else "" for i, name in enumerate(self.header)}


@contextlib.contextmanager
def open_csv(path: str | os.PathLike, what: str = "") -> Iterator[CsvReader]:
    """Open a UTF-8 CSV file for reading.

    Parameters
    ----------
    path : path-like
    what : str
        What the file is, for messages (e.g. ``"submission"``): ``"<what> <path> line N: ..."``.

    Yields
    ------
    CsvReader
        Its ``header`` is read; iterate it for the data rows.

    Raises
    ------
    InputError
        The file cannot be opened, a line is not UTF-8, or the CSV is malformed (the message
        names the file and the line).
    """
    path = Path(path)
    label = _label(what, path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {label}: {exc.strerror or exc}") from None
    with handle:
        yield CsvReader(handle, label)
