"""Damaged copies of good files, as a crash, a full disk or a bad copy leaves them."""

from pathlib import Path

#: Kinds of damage :func:`damage` does.
DAMAGE = ("truncated", "garbled")


def damage(path: Path, how: str) -> Path:
    """Damage the file at ``path`` in place: cut off its last 40 % (``"truncated"``) or
    overwrite the second half of its bytes, where the compressed pixels lie (``"garbled"``)."""
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[:int(len(data) * 0.6)]
    elif how == "garbled":
        half = len(data) // 2
        data[half:] = b"\x55" * (len(data) - half)
    else:
        raise ValueError(f"how: expected one of {DAMAGE}, got {how!r}")
    path.write_bytes(bytes(data))
    return path
