"""Competition ``submission.csv``: predicted instances as RLE rows, written and read back.

The file has the header ``id,predicted`` and one row per predicted instance; ``predicted`` is
the competition RLE (:mod:`flowseg.io.rle`). An image without instances has one row with an
empty ``predicted``. Predicted instances of one image must not overlap (the competition
rejects such files), so a submission is equivalent to one label image per id.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from flowseg.errors import InputError
from flowseg.io.atomic import atomic_path
from flowseg.io.csvfile import open_csv
from flowseg.io.rle import rle_decode_indices
from flowseg.metrics import check_labels

__all__ = ["SUBMISSION_COLUMNS", "label_rles", "read_submission", "write_submission"]

SUBMISSION_COLUMNS = ("id", "predicted")


def _check_image_id(image_id: object, seen: set[str]) -> str:
    if not isinstance(image_id, str) or not image_id.strip():
        raise ValueError(f"image_id: expected a non-empty string, got {image_id!r}")
    if image_id != image_id.strip() or any(c in image_id for c in ',"\r\n'):
        raise ValueError(f"image_id: expected no surrounding spaces, commas, quotes or line "
                         f"breaks, got {image_id!r}")
    if image_id in seen:
        raise ValueError(f"image_id: expected each id once, got {image_id!r} twice")
    seen.add(image_id)
    return image_id


def label_rles(labels: np.ndarray) -> dict[int, str]:
    """Run-length encode every instance of a label image in one pass.

    Equivalent to ``{k: rle_encode(labels == k)}`` for each label ``k > 0``, without one
    full-image comparison per instance.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 = background.

    Returns
    -------
    rles : dict of int to str
        Competition RLE (1-based ``start length`` pairs, row-major) per label, in increasing
        label order.
    """
    flat = labels.ravel()
    if flat.size == 0:
        return {}
    starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
    lengths = np.diff(np.append(starts, flat.size))
    run_labels = flat[starts]
    keep = run_labels > 0
    starts, lengths, run_labels = starts[keep], lengths[keep], run_labels[keep]
    order = np.argsort(run_labels, kind="stable")  # by label, runs of a label stay in order
    pairs = np.stack([starts[order] + 1, lengths[order]], axis=1)
    ids, first = np.unique(run_labels[order], return_index=True)
    bounds = np.append(first, order.size)
    return {int(k): " ".join(map(str, pairs[a:b].ravel().tolist()))
            for k, a, b in zip(ids, bounds[:-1], bounds[1:])}


def write_submission(path: str | os.PathLike, items: Iterable[tuple[str, np.ndarray]]) -> int:
    """Write predicted label images as a competition ``submission.csv``.

    Parameters
    ----------
    path : path-like
        Output file, written atomically (nothing is left behind on error).
    items : iterable of (str, (H, W) ndarray of int)
        ``(image_id, labels)`` per image; 0 = background. Each instance becomes one row, in
        increasing label order; an image without instances becomes one row with an empty
        ``predicted``.

    Returns
    -------
    n_rows : int
        Number of data rows written.

    Raises
    ------
    TypeError
        Labels that are not an integer (or bool) array.
    ValueError
        Labels that are not 2-D or negative; an empty, repeated or comma-holding image id.
    """
    seen: set[str] = set()
    n_rows = 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        handle.write(",".join(SUBMISSION_COLUMNS) + "\n")
        for image_id, labels in items:
            image_id = _check_image_id(image_id, seen)
            rles = label_rles(check_labels(labels, f"labels of id {image_id}")) or {0: ""}
            handle.writelines(f"{image_id},{rle}\n" for rle in rles.values())
            n_rows += len(rles)
    return n_rows


def _check_header(header: list[str], path: Path) -> None:
    if tuple(header) != SUBMISSION_COLUMNS:
        got = ",".join(header) if header else "an empty file"
        raise InputError(f"submission {path}: expected the header {','.join(SUBMISSION_COLUMNS)!r}, "
                         f"got {got!r}")


class _LabelPainter:
    """Accumulates the instances of one id into a flat label image, refusing overlaps."""

    def __init__(self, shape: tuple[int, int]):
        self.shape = (int(shape[0]), int(shape[1]))
        self.flat = np.zeros(self.shape[0] * self.shape[1], np.int32)
        self.lines: list[int] = []  # file line of label k at position k - 1

    def add(self, indices: np.ndarray, line: int, where: str) -> None:
        taken = self.flat[indices]
        taken = taken[taken > 0]
        if taken.size:
            other = sorted({self.lines[k - 1] for k in np.unique(taken).tolist()})
            raise InputError(f"{where}: the instance overlaps the instance(s) on line(s) "
                             f"{', '.join(map(str, other))} ({taken.size} pixels); "
                             "predicted instances must not overlap")
        self.lines.append(line)
        self.flat[indices] = len(self.lines)

    def labels(self) -> np.ndarray:
        return self.flat.reshape(self.shape)


def read_submission(path: str | os.PathLike,
                    shapes: Mapping[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """Read a competition ``submission.csv`` into one label image per id.

    Parameters
    ----------
    path : path-like
    shapes : mapping of str to (int, int)
        ``(height, width)`` of each image id that may appear (the ground truth's images).

    Returns
    -------
    labels : dict of str to (H, W) ndarray of int32
        Per id of the file, in order of first appearance; label ``k`` is the ``k``-th
        non-empty row of that id. Ids of ``shapes`` absent from the file are absent here.

    Raises
    ------
    InputError
        Missing, empty or non-UTF-8 file, a header other than ``id,predicted``, a row without
        two fields, an id not in ``shapes``, a malformed RLE, or overlapping instances of one
        id. Messages name the
        file, the line (header = line 1) and the id.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"submission {path}: no such file")
    painters: dict[str, _LabelPainter] = {}
    with open_csv(path, "submission") as reader:
        _check_header(reader.header, path)
        for row in reader:  # blank lines skipped
            _read_row(row, reader.line_num, path, shapes, painters)
    return {image_id: painter.labels() for image_id, painter in painters.items()}


def _read_row(row: list[str], line: int, path: Path, shapes: Mapping[str, tuple[int, int]],
              painters: dict[str, _LabelPainter]) -> None:
    """Decode one data row into the painter of its id."""
    if len(row) != 2:
        raise InputError(f"submission {path} line {line}: expected 2 fields (id,predicted), "
                         f"got {len(row)}")
    image_id, rle = row[0].strip(), row[1].strip()
    where = f"submission {path} line {line} (id {image_id})"
    if image_id not in shapes:
        raise InputError(f"{where}: id not in the ground truth")
    indices = rle_decode_indices(rle, shapes[image_id], name=where)
    if image_id not in painters:
        painters[image_id] = _LabelPainter(shapes[image_id])
    if indices.size:
        painters[image_id].add(indices, line, where)
