"""Atomic file writes: a failed write never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "leftover_temporaries"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is left untouched.

    Examples
    --------
    >>> with atomic_path("out.csv") as tmp:          # doctest: +SKIP
    ...     tmp.write_text("a,b\\n")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _temporary_affixes(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs get normal permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _temporary_affixes(path: Path) -> tuple[str, str]:
    """Prefix and suffix of :func:`atomic_path`'s temporary files for ``path``:
    ``.<name>.<random>.tmp<suffix>`` beside it."""
    return f".{path.name}.", ".tmp" + path.suffix


def leftover_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files of :func:`atomic_path` writes of ``path`` still beside it: only a writer
    killed before it finished leaves one (sorted)."""
    path = Path(path)
    prefix, suffix = _temporary_affixes(path)
    pattern = f"{glob.escape(prefix)}*{glob.escape(suffix)}"
    return sorted(p for p in path.parent.glob(pattern) if p.is_file())
