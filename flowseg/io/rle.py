"""The competition run-length encoding (pure codec, no file access).

An encoded mask is a string of space-separated ``start length`` pairs. ``start`` is 1-based and
counts pixels over the image flattened **row-major** (left to right, then top to bottom); each
pair marks ``length`` consecutive foreground pixels. Runs are listed in increasing order and do
not overlap. The empty string is the empty mask.

Examples
--------
>>> import numpy as np
>>> rle_decode("2 3 9 1", (3, 4)).astype(int)
array([[0, 1, 1, 1],
       [0, 0, 0, 0],
       [1, 0, 0, 0]])
>>> rle_encode(np.array([[0, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]]))
'2 3 9 1'
"""

from __future__ import annotations

import re

import numpy as np

from flowseg.errors import InputError

__all__ = ["rle_decode", "rle_decode_indices", "rle_encode", "rle_runs", "runs_to_indices"]


def _check_shape(shape: tuple[int, int], name: str) -> tuple[int, int]:
    """Return ``shape`` as two positive ints, or raise naming ``name``."""
    try:
        height, width = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"{name}: shape must be two integers (height, width), got {shape!r}") from None
    if height < 1 or width < 1:
        raise InputError(f"{name}: shape must be positive (height, width), got {shape!r}")
    return height, width


_DIGITS_AND_SPACES = re.compile(r"[0-9\s]*")


def _parse_integers(rle: str, name: str) -> np.ndarray:
    """Split ``rle`` into a 1-D int64 array, or raise naming the first bad token."""
    if not isinstance(rle, str):
        raise InputError(f"{name}: RLE must be a string, got {type(rle).__name__}")
    tokens = rle.split()
    # Plain decimal digits only: rejects '1.5', '-3', '+3', '1e3', 'nan' (one C-speed check).
    if not _DIGITS_AND_SPACES.fullmatch(rle):
        first = next(i for i, t in enumerate(tokens) if not (t.isascii() and t.isdigit()))
        raise InputError(f"{name}: RLE must contain only non-negative integers, "
                         f"token {first + 1} is {tokens[first]!r}")
    if any(len(t) > 18 for t in tokens):
        raise InputError(f"{name}: RLE contains an integer with more than 18 digits")
    return np.array(tokens, dtype=np.int64) if tokens else np.zeros(0, dtype=np.int64)


def _check_runs(starts: np.ndarray, lengths: np.ndarray, n_pixels: int, name: str) -> None:
    """Raise naming ``name`` and the first offending pair unless the runs are valid."""
    def fail(mask: np.ndarray, problem: str) -> None:
        if mask.any():
            i = int(np.argmax(mask))
            raise InputError(f"{name}: RLE pair {i + 1} ({starts[i]} {lengths[i]}): {problem}")

    fail(starts < 1, "start must be >= 1 (starts are 1-based)")
    fail(lengths < 1, "length must be >= 1")
    ends = starts + lengths - 1  # last pixel of each run, 1-based
    fail(ends > n_pixels, f"run ends past the last pixel of the image ({n_pixels} pixels)")
    later = np.zeros(starts.shape, dtype=bool)
    later[1:] = starts[1:] <= starts[:-1]
    fail(later, "starts must be strictly increasing")
    overlap = np.zeros(starts.shape, dtype=bool)
    overlap[1:] = starts[1:] <= ends[:-1]
    fail(overlap, "run overlaps the previous run")


def rle_runs(rle: str, shape: tuple[int, int], *, name: str = "annotation") -> np.ndarray:
    """Parse and validate an RLE string into its runs (the compact form of a decoded mask).

    Parameters
    ----------
    rle, shape, name : see :func:`rle_decode_indices`.

    Returns
    -------
    runs : (R, 2) ndarray of int64
        ``(first flat 0-based index, length)`` per run, in increasing order, non-overlapping.

    Raises
    ------
    InputError
        See :func:`rle_decode_indices`.
    """
    height, width = _check_shape(shape, name)
    values = _parse_integers(rle, name)
    if values.size % 2:
        raise InputError(f"{name}: RLE must hold an even number of integers "
                         f"(start length pairs), got {values.size}")
    starts, lengths = values[0::2], values[1::2]
    _check_runs(starts, lengths, height * width, name)
    return np.stack([starts - 1, lengths], axis=1).astype(np.int64, copy=False)


def runs_to_indices(runs: np.ndarray) -> np.ndarray:
    """``(R, 2)`` runs from :func:`rle_runs` -> ``(K,)`` int64 sorted flat pixel indices."""
    if len(runs) == 0:
        return np.zeros(0, dtype=np.int64)
    starts, lengths = runs[:, 0], runs[:, 1]
    # Offset of each run's first pixel, minus the number of pixels in earlier runs.
    run_offset = starts - (np.cumsum(lengths) - lengths)
    return np.repeat(run_offset, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def rle_decode_indices(rle: str, shape: tuple[int, int], *, name: str = "annotation") -> np.ndarray:
    """Decode an RLE string into the flat (row-major, 0-based) indices of its pixels.

    Parameters
    ----------
    rle : str
        Space-separated 1-based ``start length`` pairs; ``""`` is the empty mask.
    shape : (int, int)
        Image ``(height, width)``.
    name : str, optional
        What the RLE is, for error messages (e.g. ``"train.csv line 17 (id 0a6ecc5fe78a)"``).

    Returns
    -------
    indices : (K,) ndarray of int64
        Sorted flat indices into the image raveled in C order, ``K`` = foreground pixel count.

    Raises
    ------
    InputError
        Odd number of integers, non-integer tokens, non-positive starts or lengths, starts
        not strictly increasing, overlapping runs, or runs past the end of the image.
    """
    return runs_to_indices(rle_runs(rle, shape, name=name))


def rle_decode(rle: str, shape: tuple[int, int], *, name: str = "annotation") -> np.ndarray:
    """Decode an RLE string into a boolean mask.

    Parameters
    ----------
    rle : str
        Space-separated 1-based ``start length`` pairs over the row-major flattened image.
    shape : (int, int)
        Image ``(height, width)``.
    name : str, optional
        What the RLE is, for error messages.

    Returns
    -------
    mask : (H, W) ndarray of bool

    Raises
    ------
    InputError
        See :func:`rle_decode_indices`.
    """
    indices = rle_decode_indices(rle, shape, name=name)
    mask = np.zeros(int(shape[0]) * int(shape[1]), dtype=bool)
    mask[indices] = True
    return mask.reshape(int(shape[0]), int(shape[1]))


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask as 1-based ``start length`` pairs over its row-major flattening.

    Parameters
    ----------
    mask : (H, W) array_like of bool or int
        Foreground where non-zero.

    Returns
    -------
    rle : str
        ``""`` for an empty mask.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    flat = np.concatenate([[False], mask.ravel() != 0, [False]])
    changes = np.flatnonzero(flat[1:] != flat[:-1])  # 0-based: run starts and one-past-ends
    starts, ends = changes[0::2], changes[1::2]
    pairs = np.stack([starts + 1, ends - starts], axis=1).ravel()
    return " ".join(map(str, pairs.tolist()))
