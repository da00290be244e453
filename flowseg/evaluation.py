"""Scoring a data set: pairing truth with predictions, per-image results, per-cell-type summary.

Pure logic behind the ``evaluate`` program (no file access): the program reads the files
(:mod:`flowseg.io`) into :class:`TruthImage` objects and a mapping of predicted label images,
and writes what :func:`per_image_table` and :meth:`EvaluationSummary.to_json` return.

The data flows one way: ``TruthImage`` + prediction -> :class:`ImageResult` (one per image)
-> :func:`summarize` -> :class:`EvaluationSummary`. A per-image quantity (for example a
predicted cell type) becomes a field of :class:`ImageResult`, a column of
:func:`per_image_table` and, where it aggregates, a field of :class:`EvaluationSummary`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from flowseg.errors import InputError, some_names
from flowseg.metrics import IOU_THRESHOLDS, ImageScore, Truth, image_score

__all__ = ["EvaluationSummary", "GroupSummary", "ImageResult", "TruthImage", "cell_type_confusion",
           "check_prediction_ids", "format_confusion_table", "format_summary_table",
           "per_image_table", "score_image", "score_images", "summarize"]

logger = logging.getLogger(__name__)

#: How many ids a log line or error message lists before "and N more".
_MAX_IDS_SHOWN = 10


@dataclass(frozen=True)
class TruthImage:
    """Ground truth of one image.

    Attributes
    ----------
    id : str
        Image id (Sartorius id, or the file stem in a Cellpose-style folder).
    cell_type : str
        True cell type of the image.
    shape : (int, int)
        ``(height, width)``.
    instances : (H, W) ndarray of int, or list of (K_i,) ndarray of int64
        A label image, or flat pixel indices per instance (overlaps allowed, each scored as
        its own mask); see :func:`flowseg.metrics.iou_matrix`.
    """

    id: str
    cell_type: str
    shape: tuple[int, int]
    instances: Truth


@dataclass(frozen=True)
class ImageResult:
    """The metric of one image.

    Attributes
    ----------
    id, cell_type : str
        From the :class:`TruthImage`.
    has_prediction : bool
        False when no prediction was given (scored as an empty prediction).
    score : ImageScore
        Score, counts per threshold, instance numbers.
    pred_cell_type : str or None
        Predicted cell type of the image, when the predictions come with one.
    """

    id: str
    cell_type: str
    has_prediction: bool
    score: ImageScore
    pred_cell_type: str | None = None


@dataclass(frozen=True)
class GroupSummary:
    """Aggregates over a group of images (all images, or one cell type).

    Attributes
    ----------
    n_images, n_true, n_pred : int
        Images, true and predicted instances.
    mean_ap : float
        Mean image score (the competition score of the group).
    per_threshold : (T,) ndarray of float64
        Mean over images of the score at each threshold.
    """

    n_images: int
    n_true: int
    n_pred: int
    mean_ap: float
    per_threshold: np.ndarray


@dataclass(frozen=True)
class EvaluationSummary:
    """Summary of a data set.

    Attributes
    ----------
    thresholds : (T,) ndarray of float64
    overall : GroupSummary
    per_class : dict of str to GroupSummary
        By true cell type, sorted by name.
    missing_predictions : tuple of str
        Ids that had no prediction (scored as empty predictions).
    confusion : dict of str to dict of str to int, or None
        ``confusion[true][predicted]``: images of true cell type ``true`` predicted as
        ``predicted``, over the images with a predicted type; rows are the true types,
        columns the union of true and predicted types, both sorted. None when no image has a
        predicted type.
    """

    thresholds: np.ndarray
    overall: GroupSummary
    per_class: dict[str, GroupSummary]
    missing_predictions: tuple[str, ...]
    confusion: dict[str, dict[str, int]] | None = None

    @property
    def type_accuracy(self) -> float | None:
        """Fraction of images with a predicted type whose type is right (None without types)."""
        if self.confusion is None:
            return None
        total = sum(sum(row.values()) for row in self.confusion.values())
        return sum(row.get(t, 0) for t, row in self.confusion.items()) / total

    def to_json(self) -> dict:
        """JSON-ready dict: ``mean_ap``, ``per_class`` (cell type -> mean AP), ``n_images``, ..."""
        def by_threshold(values: np.ndarray) -> dict[str, float]:
            return {f"{t:.2f}": float(v) for t, v in zip(self.thresholds, values)}

        return {
            "mean_ap": self.overall.mean_ap,
            "per_class": {c: g.mean_ap for c, g in self.per_class.items()},
            "n_images": self.overall.n_images,
            "n_images_per_class": {c: g.n_images for c, g in self.per_class.items()},
            "n_true": self.overall.n_true,
            "n_pred": self.overall.n_pred,
            "thresholds": [float(t) for t in self.thresholds],
            "per_threshold": by_threshold(self.overall.per_threshold),
            "per_class_per_threshold": {c: by_threshold(g.per_threshold)
                                        for c, g in self.per_class.items()},
            "missing_predictions": list(self.missing_predictions),
            "cell_type_confusion": self.confusion,
            "cell_type_accuracy": self.type_accuracy,
        }


def _some(ids: Iterable[str]) -> str:
    return some_names(ids, limit=_MAX_IDS_SHOWN)


def check_prediction_ids(truth_ids: Iterable[str], pred_ids: Iterable[str], *,
                         source: str = "predictions") -> list[str]:
    """Pair predictions with truth by id.

    Parameters
    ----------
    truth_ids, pred_ids : iterable of str
    source : str, optional
        What the predictions are, for the error message (e.g. the folder).

    Returns
    -------
    missing : list of str
        Truth ids without a prediction, in truth order; logged as a warning.

    Raises
    ------
    InputError
        A prediction for an id that is not in the truth.
    """
    truth_ids, pred_ids = list(truth_ids), set(pred_ids)
    extra = sorted(pred_ids - set(truth_ids))
    if extra:
        raise InputError(f"{source}: prediction(s) for {len(extra)} id(s) not in the truth: "
                         f"{_some(extra)}")
    missing = [i for i in truth_ids if i not in pred_ids]
    if missing:
        logger.warning("%d truth image(s) have no prediction and score as empty predictions: %s",
                       len(missing), _some(missing))
    return missing


def score_image(truth: TruthImage, pred: np.ndarray | None, *,
                thresholds: np.ndarray = IOU_THRESHOLDS,
                pred_cell_type: str | None = None) -> ImageResult:
    """Score one image; ``pred=None`` (no prediction) scores as an empty prediction.

    Parameters
    ----------
    truth : TruthImage
    pred : (H, W) ndarray of int, or None
    thresholds : (T,) array_like of float, optional
    pred_cell_type : str, optional
        The image's predicted cell type, kept in the result.

    Returns
    -------
    ImageResult

    Raises
    ------
    InputError
        ``pred`` of another shape than the truth (the message names the id and both shapes).
    """
    has_prediction = pred is not None
    if pred is None:
        pred = np.zeros(truth.shape, np.int32)
    if tuple(pred.shape) != tuple(truth.shape):
        raise InputError(f"id {truth.id}: prediction of shape {tuple(pred.shape)} does not match "
                         f"the truth's shape {tuple(truth.shape)}")
    return ImageResult(truth.id, truth.cell_type, has_prediction,
                       image_score(truth.instances, pred, thresholds=thresholds), pred_cell_type)


def score_images(truths: Iterable[TruthImage], preds: Mapping[str, np.ndarray], *,
                 thresholds: np.ndarray = IOU_THRESHOLDS,
                 progress: Callable[[Iterable], Iterable] | None = None,
                 pred_cell_types: Mapping[str, str] | None = None) -> list[ImageResult]:
    """Score every truth image against its prediction.

    Parameters
    ----------
    truths : iterable of TruthImage
        May be a generator (images loaded one at a time).
    preds : mapping of str to (H, W) ndarray of int
        Predicted label image per id; may load on access. Ids absent score as empty
        predictions (check them first with :func:`check_prediction_ids`).
    thresholds : (T,) array_like of float, optional
    progress : callable, optional
        Wraps the iterable of truths (e.g. ``tqdm``).
    pred_cell_types : mapping of str to str, optional
        Predicted cell type per id (ids absent get none).

    Returns
    -------
    results : list of ImageResult
        In the order of ``truths``.
    """
    wrapped = progress(truths) if progress is not None else truths
    types = pred_cell_types or {}
    return [score_image(t, preds.get(t.id), thresholds=thresholds, pred_cell_type=types.get(t.id))
            for t in wrapped]


def cell_type_confusion(results: Iterable[ImageResult]) -> dict[str, dict[str, int]] | None:
    """``confusion[true][predicted]`` image counts over results with a predicted type.

    Returns
    -------
    dict of str to dict of str to int, or None
        Rows: true types; columns: union of true and predicted types (both sorted, zeros
        included). None when no result has a predicted type.
    """
    typed = [r for r in results if r.pred_cell_type is not None]
    if not typed:
        return None
    rows = sorted({r.cell_type for r in typed})
    cols = sorted(set(rows) | {r.pred_cell_type for r in typed})
    confusion = {t: dict.fromkeys(cols, 0) for t in rows}
    for r in typed:
        confusion[r.cell_type][r.pred_cell_type] += 1
    return confusion


def _group(results: list[ImageResult]) -> GroupSummary:
    return GroupSummary(
        n_images=len(results),
        n_true=sum(r.score.n_true for r in results),
        n_pred=sum(r.score.n_pred for r in results),
        mean_ap=float(np.mean([r.score.score for r in results])),
        per_threshold=np.mean([r.score.scores for r in results], axis=0))


def summarize(results: Iterable[ImageResult]) -> EvaluationSummary:
    """Aggregate per-image results overall and per true cell type.

    Parameters
    ----------
    results : iterable of ImageResult
        At least one; all scored with the same thresholds.

    Returns
    -------
    EvaluationSummary
    """
    results = list(results)
    if not results:
        raise ValueError("results: expected at least one image result, got none")
    thresholds = results[0].score.thresholds
    if any(not np.array_equal(r.score.thresholds, thresholds) for r in results):
        raise ValueError("results: expected every image scored with the same thresholds")
    classes = sorted({r.cell_type for r in results})
    return EvaluationSummary(
        thresholds=thresholds,
        overall=_group(results),
        per_class={c: _group([r for r in results if r.cell_type == c]) for c in classes},
        missing_predictions=tuple(r.id for r in results if not r.has_prediction),
        confusion=cell_type_confusion(results))


def per_image_table(results: Iterable[ImageResult]) -> tuple[list[str], list[list]]:
    """Rows of ``per_image.csv``.

    Returns
    -------
    columns : list of str
        ``id, cell_type, pred_cell_type, n_true, n_pred, score``, then ``tp@0.50 ...``,
        ``fp@...``, ``fn@...``; ``pred_cell_type`` is empty when unknown.
    rows : list of list
        One per result, values in column order.
    """
    results = list(results)
    thresholds = results[0].score.thresholds if results else IOU_THRESHOLDS
    columns = ["id", "cell_type", "pred_cell_type", "n_true", "n_pred", "score"] + [
        f"{kind}@{t:.2f}" for kind in ("tp", "fp", "fn") for t in thresholds]
    rows = [[r.id, r.cell_type, r.pred_cell_type or "", r.score.n_true, r.score.n_pred, f"{r.score.score:.6f}",
             *r.score.tp.tolist(), *r.score.fp.tolist(), *r.score.fn.tolist()]
            for r in results]
    return columns, rows


def format_summary_table(summary: EvaluationSummary) -> str:
    """Plain-text table: one line per cell type and one for all images.

    Columns: cell type, images, true and predicted instances, mean AP, then the mean score
    at each threshold.
    """
    head = (f"{'cell type':<12} {'images':>6} {'true':>7} {'pred':>7} {'mAP':>6} "
            + " ".join(f"{t:>5.2f}" for t in summary.thresholds))

    def line(name: str, g: GroupSummary) -> str:
        return (f"{name:<12} {g.n_images:>6} {g.n_true:>7} {g.n_pred:>7} {g.mean_ap:>6.4f} "
                + " ".join(f"{v:>5.3f}" for v in g.per_threshold))

    body = [line(c, g) for c, g in summary.per_class.items()]
    return "\n".join([head, *body, "-" * len(head), line("all", summary.overall)])


def format_confusion_table(confusion: Mapping[str, Mapping[str, int]]) -> str:
    """Plain-text confusion table: one row per true cell type, one column per predicted type."""
    cols = list(next(iter(confusion.values())))
    width = max(8, *(len(c) + 1 for c in cols))
    head = f"{'true/pred':<12}" + "".join(f"{c:>{width}}" for c in cols)
    body = [f"{t:<12}" + "".join(f"{row[c]:>{width}}" for c in cols) for t, row in confusion.items()]
    return "\n".join([head, *body])
