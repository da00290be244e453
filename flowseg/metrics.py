"""The Sartorius competition metric: IoU matrix, one-to-one matching, mean score over thresholds.

For one image and one IoU threshold ``t`` a predicted instance and a true instance *match*
when their IoU is strictly greater than ``t``; matches are one-to-one. With ``TP`` the number
of matches, ``FP`` the unmatched predictions and ``FN`` the unmatched true instances, the
score at ``t`` is ``TP / (TP + FP + FN)`` (``1`` when the image has neither true nor
predicted instances). The image score is the mean over ``IOU_THRESHOLDS``
(0.50, 0.55, ..., 0.95) and the data set score the mean over images.

True instances may overlap (Sartorius ``train.csv``): pass them as a list of flat pixel
indices and each one is scored as its own mask, overlaps included. Predictions are a label
image, so they never overlap.

Pure numpy/scipy; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Union

import numpy as np
import scipy.optimize
import scipy.sparse

__all__ = ["IOU_THRESHOLDS", "ImageScore", "MatchCounts", "check_labels", "image_score",
           "iou_matrix", "match_counts", "mean_score"]

#: IoU thresholds of the competition: exactly 0.50, 0.55, ..., 0.95 (rounded, no float drift).
IOU_THRESHOLDS: np.ndarray = np.round(np.arange(10) * 0.05 + 0.5, 2)
IOU_THRESHOLDS.flags.writeable = False

#: True instances: a label image, or one array of flat row-major pixel indices per instance.
Truth = Union[np.ndarray, Sequence[np.ndarray]]

#: Label images whose largest label exceeds this multiple of their pixel count are compacted
#: with ``np.unique`` before counting (label ids index count arrays directly otherwise).
_MAX_ID_FACTOR = 4
#: Contingency tables up to this many cells are counted densely (``np.bincount``), larger
#: ones sparsely (``scipy.sparse``).
_MAX_DENSE_TABLE = 2**22


class MatchCounts(NamedTuple):
    """Counts of a one-to-one matching, one entry per threshold.

    Attributes
    ----------
    tp, fp, fn : (T,) ndarray of int64
        Matched pairs, unmatched predictions, unmatched true instances.
    """

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray


@dataclass(frozen=True)
class ImageScore:
    """The metric for one image.

    Attributes
    ----------
    score : float
        Mean over thresholds of ``TP / (TP + FP + FN)``.
    tp, fp, fn : (T,) ndarray of int64
        Counts per threshold.
    n_true, n_pred : int
        Number of true and predicted instances.
    thresholds : (T,) ndarray of float64
        The IoU thresholds the counts refer to.
    """

    score: float
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    n_true: int
    n_pred: int
    thresholds: np.ndarray

    @property
    def scores(self) -> np.ndarray:
        """(T,) ndarray of float64: ``TP / (TP + FP + FN)`` per threshold (1 when all are 0)."""
        return _ratio(self.tp, self.fp, self.fn)


# --------------------------------------------------------------------------- validation


def check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Validate a label image: a (H, W) numpy array of non-negative integers (or bool).

    Parameters
    ----------
    labels : (H, W) ndarray of int
    name : str, optional
        What the labels are, for the message (e.g. ``"pred"``, ``"labels of id 0a6ecc5fe78a"``).

    Returns
    -------
    labels : (H, W) ndarray of int
        ``labels`` itself.

    Raises
    ------
    TypeError
        Not a numpy array, or not an integer (or bool) dtype.
    ValueError
        Not 2-D, or a negative label.
    """
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array of int labels, got {type(labels).__name__}")
    if labels.ndim != 2:
        raise ValueError(f"{name}: expected a (H, W) label image, got shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise TypeError(f"{name}: expected an integer label image, got dtype {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError(f"{name}: expected labels >= 0, got minimum {labels.min()}")
    return labels


def _check_instances(name: str, instances: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    checked = []
    for i, indices in enumerate(instances):
        indices = np.asarray(indices)
        if indices.ndim != 1:
            raise ValueError(f"{name}[{i}]: expected a 1-D array of flat pixel indices, "
                             f"got shape {indices.shape}")
        if indices.size and indices.dtype.kind not in "iu":
            raise TypeError(f"{name}[{i}]: expected integer pixel indices, got dtype {indices.dtype}")
        if indices.size and (indices.min() < 0 or indices.max() >= size):
            raise ValueError(f"{name}[{i}]: expected flat pixel indices in [0, {size}), "
                             f"got range [{indices.min()}, {indices.max()}]")
        checked.append(indices.astype(np.int64, copy=False))
    return checked


def _check_thresholds(thresholds: np.ndarray) -> np.ndarray:
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or thresholds.size == 0:
        raise ValueError(f"thresholds: expected a non-empty 1-D array, got shape {thresholds.shape}")
    if not np.all((thresholds >= 0) & (thresholds < 1)):
        raise ValueError(f"thresholds: expected values in [0, 1), got {thresholds.tolist()}")
    return thresholds


def _check_iou(iou: np.ndarray) -> np.ndarray:
    iou = np.asarray(iou)
    if iou.ndim != 2:
        raise ValueError(f"iou: expected a (n_true, n_pred) matrix, got shape {iou.shape}")
    if iou.dtype.kind != "f":
        raise TypeError(f"iou: expected a float matrix, got dtype {iou.dtype}")
    return iou


# --------------------------------------------------------------------------- IoU


@dataclass(frozen=True)
class _Overlaps:
    """The non-zero entries of an (n_true, n_pred) IoU matrix."""

    rows: np.ndarray
    cols: np.ndarray
    iou: np.ndarray
    n_true: int
    n_pred: int

    def dense(self) -> np.ndarray:
        iou = np.zeros((self.n_true, self.n_pred), dtype=np.float64)
        iou[self.rows, self.cols] = self.iou
        return iou


def _small_ids(flat: np.ndarray) -> tuple[np.ndarray, int]:
    """Flat labels as ids in [0, n) with 0 kept as background; large ids are compacted.

    Small ids keep their integer dtype (no copy); uint64 and bool become intp.
    """
    top = int(flat.max()) if flat.size else 0
    if top <= _MAX_ID_FACTOR * flat.size + 1:
        if flat.dtype.kind == "b" or flat.dtype == np.uint64:
            flat = flat.astype(np.intp)
        return flat, top + 1
    values, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.intp)
    if values[0] != 0:  # no background pixel: keep id 0 free
        return inverse + 1, values.size + 1
    return inverse, values.size


def _cooccurrence(a: np.ndarray, b: np.ndarray, na: int,
                  nb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero entries (a_id, b_id, count) of the contingency table of paired ids."""
    if na * nb <= _MAX_DENSE_TABLE:
        key = np.multiply(a, nb, dtype=np.intp)
        key += b
        table = np.bincount(key, minlength=na * nb)
        nonzero = np.flatnonzero(table)
        return nonzero // nb, nonzero % nb, table[nonzero]
    table = scipy.sparse.coo_matrix((np.ones(a.size, np.int64), (a, b)), shape=(na, nb))
    table.sum_duplicates()
    return table.row.astype(np.intp), table.col.astype(np.intp), table.data


def _instance_pixels(truth: Sequence[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (instance number 1..n per pixel, flat pixel index, n) of listed true instances."""
    instances = _check_instances("truth", truth, size)
    areas = np.array([len(ix) for ix in instances], dtype=np.intp)
    rows = np.repeat(np.arange(1, len(instances) + 1, dtype=np.intp), areas)
    pixels = np.concatenate(instances) if instances else np.zeros(0, np.intp)
    keys = rows * size + pixels
    if np.any(keys[1:] <= keys[:-1]):  # not sorted within instances: sort to find repeats
        keys = np.sort(keys)
    repeated = np.flatnonzero(keys[1:] == keys[:-1])
    if repeated.size:
        row = int(keys[repeated[0]] // size) - 1
        raise ValueError(f"truth[{row}]: expected distinct flat pixel indices, got duplicates")
    return rows, pixels, len(instances)


def _check_same_shape(truth: Truth, pred: np.ndarray) -> None:
    if isinstance(truth, np.ndarray) and truth.shape != pred.shape:
        raise ValueError(f"truth and pred: expected the same shape, got truth {truth.shape} "
                         f"and pred {pred.shape}")


def _overlaps(truth: Truth, pred: np.ndarray) -> _Overlaps:
    """IoU of every overlapping (true, predicted) pair, from one contingency table."""
    check_labels(pred, "pred")
    _check_same_shape(truth, pred)
    pred_ids, n_pred_ids = _small_ids(pred.ravel())
    if isinstance(truth, np.ndarray):
        check_labels(truth, "truth")
        true_ids, n_true_ids = _small_ids(truth.ravel())
        r, c, n = _cooccurrence(true_ids, pred_ids, n_true_ids, n_pred_ids)
        pred_area = np.bincount(c, weights=n, minlength=n_pred_ids)
    else:  # listed instances may overlap: pair each instance's own pixels
        true_ids, pixels, n_instances = _instance_pixels(truth, pred.size)
        n_true_ids = n_instances + 1
        r, c, n = _cooccurrence(true_ids, pred_ids[pixels], n_true_ids, n_pred_ids)
        pred_area = np.bincount(pred_ids, minlength=n_pred_ids)
    true_area = np.bincount(r, weights=n, minlength=n_true_ids)
    true_index, n_true = _present(true_area)
    pred_index, n_pred = _present(pred_area)
    both = (r > 0) & (c > 0)
    r, c, n = r[both], c[both], n[both]
    iou = n / (true_area[r] + pred_area[c] - n)
    return _Overlaps(true_index[r], pred_index[c], iou, n_true, n_pred)


def _present(area: np.ndarray) -> tuple[np.ndarray, int]:
    """Map ids 1.. with a non-zero area to rows 0..n-1 (others to -1); return the map and n."""
    present = np.flatnonzero(area[1:]) + 1
    index = np.full(area.size, -1, dtype=np.intp)
    index[present] = np.arange(present.size)
    return index, int(present.size)


def iou_matrix(truth: Truth, pred: np.ndarray) -> np.ndarray:
    """Intersection over union of every true instance with every predicted instance.

    Parameters
    ----------
    truth : (H, W) ndarray of int, or sequence of (K_i,) ndarray of int
        True instances: a label image (0 = background; rows in increasing label order), or
        one array of distinct flat row-major pixel indices per instance (rows in list order;
        instances may overlap and each is scored as its own mask; an instance without
        pixels gets no row).
    pred : (H, W) ndarray of int
        Predicted label image (0 = background; columns in increasing label order).

    Returns
    -------
    iou : (n_true, n_pred) ndarray of float64
        Labels absent from an image get no row or column.

    Raises
    ------
    TypeError
        Float labels or pixel indices.
    ValueError
        Shapes differ, negative labels, pixel indices outside the image or repeated.
    """
    return _overlaps(truth, pred).dense()


# --------------------------------------------------------------------------- matching


def _max_matching(rows: np.ndarray, cols: np.ndarray) -> int:
    """Size of a maximum one-to-one matching of the candidate pairs ``(rows[i], cols[i])``."""
    if rows.size == 0:
        return 0
    unique_rows, row_index = np.unique(rows, return_inverse=True)
    unique_cols, col_index = np.unique(cols, return_inverse=True)
    # A star needs no assignment: with t >= 0.5 and disjoint predictions each true instance
    # has one candidate at most, so every prediction with a candidate gets one match.
    if unique_rows.size == rows.size or unique_cols.size == cols.size:
        return int(min(unique_rows.size, unique_cols.size))
    candidates = np.zeros((unique_rows.size, unique_cols.size), dtype=bool)
    candidates[row_index, col_index] = True
    r, c = scipy.optimize.linear_sum_assignment(candidates, maximize=True)
    return int(candidates[r, c].sum())


def _match_counts(overlaps: _Overlaps, thresholds: np.ndarray) -> MatchCounts:
    tp = np.array([_max_matching(overlaps.rows[overlaps.iou > t], overlaps.cols[overlaps.iou > t])
                   for t in thresholds], dtype=np.int64)
    return MatchCounts(tp=tp, fp=overlaps.n_pred - tp, fn=overlaps.n_true - tp)


def match_counts(iou: np.ndarray, thresholds: np.ndarray = IOU_THRESHOLDS) -> MatchCounts:
    """Count one-to-one matches with IoU strictly above each threshold.

    Parameters
    ----------
    iou : (n_true, n_pred) ndarray of float
        As returned by :func:`iou_matrix`.
    thresholds : (T,) array_like of float, optional
        IoU thresholds in [0, 1); default :data:`IOU_THRESHOLDS`.

    Returns
    -------
    MatchCounts
        ``(tp, fp, fn)``, each a (T,) ndarray of int64. The matching is a maximum one-to-one
        matching, so overlapping true instances that both exceed ``t`` with one prediction
        count one true positive and one false negative.
    """
    iou = _check_iou(iou)
    thresholds = _check_thresholds(thresholds)
    rows, cols = np.nonzero(iou)
    return _match_counts(_Overlaps(rows, cols, iou[rows, cols], *iou.shape), thresholds)


def _ratio(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    total = tp + fp + fn
    return np.where(total > 0, tp / np.maximum(total, 1), 1.0)


def image_score(truth: Truth, pred: np.ndarray, *,
                thresholds: np.ndarray = IOU_THRESHOLDS) -> ImageScore:
    """Score one image with the competition metric.

    Parameters
    ----------
    truth : (H, W) ndarray of int, or sequence of (K_i,) ndarray of int
        True instances, as in :func:`iou_matrix`.
    pred : (H, W) ndarray of int
        Predicted label image.
    thresholds : (T,) array_like of float, optional
        IoU thresholds; default :data:`IOU_THRESHOLDS`.

    Returns
    -------
    ImageScore
        ``score`` is 1.0 when both are empty, 0.0 when exactly one is.
    """
    thresholds = _check_thresholds(thresholds)
    overlaps = _overlaps(truth, pred)
    counts = _match_counts(overlaps, thresholds)
    return ImageScore(score=float(_ratio(*counts).mean()), tp=counts.tp, fp=counts.fp,
                      fn=counts.fn, n_true=overlaps.n_true, n_pred=overlaps.n_pred,
                      thresholds=thresholds)


def mean_score(truths: Sequence[Truth], preds: Sequence[np.ndarray], *,
               thresholds: np.ndarray = IOU_THRESHOLDS) -> float:
    """Mean of :func:`image_score` over images (the competition's data set score).

    Parameters
    ----------
    truths : sequence of truth
        One entry per image, each as in :func:`iou_matrix`.
    preds : sequence of (H, W) ndarray of int
        Predicted label images, in the same order.
    thresholds : (T,) array_like of float, optional
        IoU thresholds; default :data:`IOU_THRESHOLDS`.

    Returns
    -------
    float
    """
    if len(truths) != len(preds):
        raise ValueError(f"truths and preds: expected the same number of images, "
                         f"got {len(truths)} and {len(preds)}")
    if len(truths) == 0:
        raise ValueError("truths: expected at least one image, got none")
    return float(np.mean([image_score(t, p, thresholds=thresholds).score
                          for t, p in zip(truths, preds)]))
