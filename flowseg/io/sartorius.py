"""The Sartorius competition ``train.csv`` ground truth (submissions: :mod:`flowseg.io.submission`).

``train.csv`` has one row per instance with (at least) the columns ``id, annotation, width,
height, cell_type``; ``annotation`` is the competition RLE (:mod:`flowseg.io.rle`). Rows of one
image share ``id``, ``width``, ``height`` and ``cell_type``. Instances may overlap; they are kept
as they are in :meth:`SartoriusAnnotation.instance_indices` and resolved by the rule of
:mod:`flowseg.io.instances` (smallest instance on top) in :meth:`SartoriusAnnotation.labels`.
A row that repeats an earlier row of its id exactly (same annotation) is one instance listed
twice, not a second cell: it is dropped, with a logged warning that counts such rows.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowseg.errors import InputError
from flowseg.io.csvfile import open_csv
from flowseg.io.instances import paint_instances
from flowseg.io.rle import rle_decode_indices, rle_runs, runs_to_indices

__all__ = ["SartoriusAnnotation", "check_image_shape", "read_train_csv"]

REQUIRED_COLUMNS = ("id", "annotation", "width", "height", "cell_type")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SartoriusAnnotation:
    """All annotation rows of one image of ``train.csv``.

    Attributes
    ----------
    id : str
        Image id (the PNG is ``<id>.png``).
    cell_type : str
        Cell type of the image (one per image).
    shape : (int, int)
        ``(height, width)`` from the csv.
    rles : tuple of str
        One RLE per instance, in file order. Validated when read.
    runs : tuple of (R_i, 2) ndarray of int64
        The parsed runs of each RLE (:func:`flowseg.io.rle.rle_runs`), kept by
        :func:`read_train_csv` so that no RLE is parsed twice; empty: parse ``rles`` when used.
    """

    id: str
    cell_type: str
    shape: tuple[int, int]
    rles: tuple[str, ...]
    runs: tuple[np.ndarray, ...] = field(default=(), repr=False, compare=False)

    def instance_indices(self) -> list[np.ndarray]:
        """Flat row-major pixel indices of each instance, overlaps kept.

        Returns
        -------
        indices : list of (K_i,) ndarray of int64
            Sorted, one per row of ``rles``.
        """
        if len(self.runs) == len(self.rles):
            return [runs_to_indices(r) for r in self.runs]
        return [rle_decode_indices(rle, self.shape, name=f"id {self.id} instance {i + 1}")
                for i, rle in enumerate(self.rles)]

    def masks(self) -> np.ndarray:
        """Instance masks, overlaps kept.

        Returns
        -------
        masks : (N, H, W) ndarray of bool
        """
        masks = np.zeros((len(self.rles), self.shape[0] * self.shape[1]), dtype=bool)
        for i, idx in enumerate(self.instance_indices()):
            masks[i, idx] = True
        return masks.reshape(len(self.rles), *self.shape)

    def labels(self, *, fill_holes: bool = False) -> np.ndarray:
        """Label image; a pixel of several instances goes to the smallest one.

        Parameters
        ----------
        fill_holes : bool, optional
            Fill the holes enclosed by each instance first.

        Returns
        -------
        labels : (H, W) ndarray of int32
            Label ``k`` is ``rles[k - 1]``; a fully covered instance leaves a gap in the ids.
        """
        return paint_instances(self.instance_indices(), self.shape, fill_holes=fill_holes)


def check_image_shape(annotation: SartoriusAnnotation, image: np.ndarray) -> None:
    """Raise InputError unless ``image`` is ``(H, W)`` or ``(C, H, W)`` with the csv's size.

    Parameters
    ----------
    annotation : SartoriusAnnotation
    image : (H, W) or (C, H, W) ndarray
    """
    got = tuple(np.shape(image)[-2:])
    if np.ndim(image) not in (2, 3) or got != annotation.shape:
        raise InputError(f"image of id {annotation.id}: expected height x width "
                         f"{annotation.shape[0]} x {annotation.shape[1]} (from train.csv), "
                         f"got image shape {np.shape(image)}")


def _positive_int(text: str, column: str, where: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {column} must be an integer, got {text!r}") from None
    if value < 1:
        raise InputError(f"{where}: {column} must be positive, got {value}")
    return value


def _check_columns(header: list[str], path: Path) -> None:
    if not header:
        raise InputError(f"{path}: empty file; expected a csv with a header of at least "
                         f"{', '.join(REQUIRED_COLUMNS)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; expected at least "
                         f"{', '.join(REQUIRED_COLUMNS)}, got {header}")


def read_train_csv(path: str | os.PathLike) -> dict[str, SartoriusAnnotation]:
    """Read and validate a competition ``train.csv``.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    annotations : dict of str to SartoriusAnnotation
        Keyed by image id, in order of first appearance. Exact duplicate rows (same id and
        annotation) are kept once (a warning is logged with their count).

    Raises
    ------
    InputError
        Missing, empty or non-UTF-8 file, missing columns, a non-integer or non-positive
        width/height, width/height or cell_type differing between rows of one id, an empty id or
        cell type, an empty or malformed RLE. Messages name the file, the line (header = line
        1) and the id.
    """
    path = Path(path)
    rows: dict[str, dict] = {}
    duplicates: list[str] = []
    with open_csv(path, "train.csv") as reader:
        _check_columns(reader.header, path)
        for row in reader.records():
            where = f"{path.name} line {reader.line_num} (id {row['id']})"
            if not _add_row(rows, row, where):
                duplicates.append(where)
    if duplicates:
        log.warning("%s: dropped %d exact duplicate row(s) (same id and annotation as an earlier "
                    "row; scored once), e.g. %s", path, len(duplicates), duplicates[0])
    return {image_id: SartoriusAnnotation(image_id, r["cell_type"], r["shape"], tuple(r["rles"]),
                                          tuple(r["runs"]))
            for image_id, r in rows.items()}


def _add_row(rows: dict[str, dict], row: dict, where: str) -> bool:
    """Validate one csv row and append it to its image's entry of ``rows``.

    Returns False, adding nothing, when the row repeats an earlier row of its id exactly (same
    annotation up to spacing): one instance annotated twice is still one cell.
    """
    image_id, cell_type = (row["id"] or "").strip(), (row["cell_type"] or "").strip()
    if not image_id:
        raise InputError(f"{where}: empty id")
    if not cell_type:
        raise InputError(f"{where}: empty cell_type")
    shape = (_positive_int(row["height"], "height", where), _positive_int(row["width"], "width", where))
    rle = " ".join((row["annotation"] or "").split())
    if not rle:
        raise InputError(f"{where}: empty annotation (an instance needs at least one pixel)")
    entry = rows.setdefault(image_id, {"cell_type": cell_type, "shape": shape, "rles": [],
                                       "runs": [], "seen": set()})
    if entry["shape"] != shape:
        raise InputError(f"{where}: height x width {shape[0]} x {shape[1]} differs from "
                         f"{entry['shape'][0]} x {entry['shape'][1]} on an earlier row of this id")
    if entry["cell_type"] != cell_type:
        raise InputError(f"{where}: cell_type {cell_type!r} differs from {entry['cell_type']!r} "
                         "on an earlier row of this id (one cell type per image)")
    if rle in entry["seen"]:
        return False
    entry["runs"].append(rle_runs(rle, shape, name=where))  # validate now: errors name the line
    entry["rles"].append(rle)
    entry["seen"].add(rle)
    return True
