"""Z-stacks: segment every plane in 2-D, then link the cells of neighbouring planes.

:func:`stitch_planes` is cellpose's ``stitch3D`` (``--stitch_threshold``): going up the stack,
each cell of a plane takes the id of the cell of the plane below it that it overlaps best with
an IoU of at least ``threshold`` (each cell below passes its id to one cell above at most,
the one it overlaps best); a cell with no such partner starts a new id. So a cell keeps its id
through the planes it spans.

flowseg offers no full 3-D flows (cellpose's ``do_3D``, flows along Z from the three
orthogonal views): its networks are trained on 2-D images, and planes are segmented
independently before they are linked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DEFAULT_STITCH_THRESHOLD", "StackResult", "normalize_once", "segment_stack",
           "shared_scales", "stack_result", "stitch_planes"]

#: IoU a cell needs with a cell of the plane below to take its id (cellpose's ``stitch3D``
#: default).
DEFAULT_STITCH_THRESHOLD = 0.25


@dataclass(frozen=True)
class StackResult:
    """The segmentation of a z-stack, cells linked across planes.

    Attributes
    ----------
    labels : (Z, H, W) ndarray of int32
        0 = background, 1..N = cells (one id through all the planes a cell spans).
    cell_types : tuple of str, length N
        Each cell's type: the area-weighted majority of its plane instances' types.
    scores : (N,) ndarray of float32
        Area-weighted mean of its plane instances' scores.
    image_cell_type : str
        Area-weighted majority over all cells.
    class_names : tuple of str
    planes : tuple of SegmentResult
        Each plane's own result (plane-local ids).
    flows : (Z, 2, H, W) ndarray of float32 or None
        When the planes kept their maps.
    cellprob : (Z, H, W) ndarray of float32 or None
    """

    labels: np.ndarray
    cell_types: tuple[str, ...]
    scores: np.ndarray
    image_cell_type: str
    class_names: tuple[str, ...]
    planes: tuple
    flows: np.ndarray | None = None
    cellprob: np.ndarray | None = None

    @property
    def n_instances(self) -> int:
        """Number of cells N."""
        return len(self.cell_types)

    @property
    def scale(self) -> float:
        """Median over the planes of the resize factor each was segmented at."""
        return float(np.median([p.scale for p in self.planes]))

    @property
    def diameter(self) -> float | None:
        """Median over the planes of ``SegmentResult.diameter`` (None when the model records
        no diameter)."""
        values = [p.diameter for p in self.planes if p.diameter is not None]
        return float(np.median(values)) if values else None


def check_stitch_threshold(threshold: object) -> float:
    """``threshold`` as a float when it is a number in [0, 1]; else a TypeError / ValueError."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"stitch_threshold: expected a number in [0, 1], got {threshold!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"stitch_threshold: expected an IoU in [0, 1] (0: planes not linked), "
                         f"got {threshold}")
    return float(threshold)


def _iou(upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """(n_upper, n_lower) IoU of the ids 1.. of two planes."""
    nu, nl = int(upper.max(initial=0)), int(lower.max(initial=0))
    overlap = np.bincount(upper.ravel().astype(np.int64) * (nl + 1) + lower.ravel(),
                          minlength=(nu + 1) * (nl + 1)).reshape(nu + 1, nl + 1)
    union = overlap.sum(1, keepdims=True) + overlap.sum(0, keepdims=True) - overlap
    return (overlap / np.maximum(union, 1))[1:, 1:]


def stitch_planes(labels: np.ndarray, *, threshold: float = DEFAULT_STITCH_THRESHOLD) -> np.ndarray:
    """Link the 2-D labels of consecutive planes into 3-D cells (cellpose's ``stitch3D``).

    Parameters
    ----------
    labels : (Z, H, W) ndarray of int
        Each plane labelled on its own (ids 1..n_z).
    threshold : float
        Least IoU for a link, in [0, 1]; ``0`` links nothing (every plane's cells get ids of
        their own).

    Returns
    -------
    (Z, H, W) ndarray of int32
        Ids 1..N in order of first appearance going up the stack.
    """
    threshold = check_stitch_threshold(threshold)
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected a (Z, H, W) integer stack, got shape {labels.shape} "
                         f"{labels.dtype}")
    out = np.zeros(labels.shape, np.int32)
    out[0] = labels[0]
    top = int(labels[0].max(initial=0))
    for z in range(1, len(labels)):
        n = int(labels[z].max(initial=0))
        ids = np.zeros(n + 1, np.int32)
        iou = _iou(labels[z], out[z - 1]) if threshold > 0 else np.zeros((n, 0))
        if iou.size:
            iou[iou < threshold] = 0.0
            iou[iou < iou.max(axis=0, keepdims=True)] = 0.0  # each lower cell: its best upper one
            ids[1:] = iou.argmax(axis=1) + 1
            unmatched = np.flatnonzero(iou.max(axis=1) == 0) + 1
        else:
            unmatched = np.arange(1, n + 1)
        ids[unmatched] = np.arange(top + 1, top + 1 + len(unmatched))
        top += len(unmatched)
        out[z] = ids[labels[z]]
    return out


def stack_result(planes: Sequence, *, stitch_threshold: float = DEFAULT_STITCH_THRESHOLD
                 ) -> StackResult:
    """Link the per-plane results of a stack (:func:`stitch_planes`) into one result.

    Parameters
    ----------
    planes : sequence of SegmentResult
        One per plane, in order, all of one image size and model.
    stitch_threshold : float

    Returns
    -------
    StackResult
    """
    if not planes:
        raise ValueError("planes: expected at least one plane result")
    class_names = tuple(planes[0].class_names)
    local = np.stack([p.labels for p in planes])
    labels = stitch_planes(local, threshold=stitch_threshold)
    n = int(labels.max(initial=0))
    votes = np.zeros((n + 1, len(class_names)))
    score_sum, area_sum = np.zeros(n + 1), np.zeros(n + 1)
    index = {name: k for k, name in enumerate(class_names)}
    for z, plane in enumerate(planes):
        if not plane.n_instances:
            continue
        area = np.bincount(plane.labels.ravel(), minlength=plane.n_instances + 1)[1:]
        target = np.zeros(plane.n_instances + 1, np.int64)
        target[local[z].ravel()] = labels[z].ravel()
        types = np.array([index[t] for t in plane.cell_types])
        np.add.at(votes, (target[1:], types), area)
        np.add.at(score_sum, target[1:], area * plane.scores)
        np.add.at(area_sum, target[1:], area)
    cell_types = tuple(class_names[k] for k in votes[1:].argmax(axis=1))
    totals = votes[1:].sum(axis=0)
    image_type = (class_names[int(totals.argmax())] if n else planes[0].image_cell_type)
    maps = all(p.flows is not None for p in planes)
    return StackResult(
        labels=labels, cell_types=cell_types,
        scores=(score_sum[1:] / np.maximum(area_sum[1:], 1)).astype(np.float32),
        image_cell_type=image_type, class_names=class_names, planes=tuple(planes),
        flows=np.stack([p.flows for p in planes]) if maps else None,
        cellprob=np.stack([p.cellprob for p in planes]) if maps else None)


def normalize_once(planes: Sequence[np.ndarray], options: Mapping[str, Any]
                   ) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The planes percentile-normalised (as ``options["predict"]`` says), and ``options`` with a
    ``predict`` that normalises no more: the shared size estimate (:func:`shared_scales`) and
    ``segment`` then use the same normalised planes instead of normalising each plane twice.

    Returns
    -------
    planes : list of (C, H, W) float32 ndarray
    options : dict
        A copy of ``options``; ``predict`` has ``normalize=None``.
    """
    import dataclasses

    from flowseg.data.normalize import normalize_images
    from flowseg.predict import check_predict

    predict = check_predict(options.get("predict"))
    planes = normalize_images(planes, percentiles=predict.normalize)
    return planes, {**options, "predict": dataclasses.replace(predict, normalize=None)}


def shared_scales(planes: Sequence[np.ndarray], model, groups: Sequence[int],
                  options: Mapping[str, Any]) -> float | list[float] | None:
    """``options["scale"]`` for :func:`flowseg.segment`: as given; else, without a
    ``diameter``, one estimated scale per group of planes (one per stack, see
    :func:`flowseg.api.choose_scales`); else None (``segment`` sets it from ``diameter``).

    Parameters
    ----------
    planes : sequence of (H, W) or (C, H, W) ndarray
    model : Model or list of Model
    groups : sequence of int
        One id per plane: the stack it belongs to.
    options : mapping
        ``segment``'s keyword options (``scale``, ``diameter``, ``predict`` are read).
    """
    from flowseg.predict import check_model
    from flowseg.scales import choose_scales

    if options.get("scale") is not None or options.get("diameter") is not None:
        return options.get("scale")
    scales, _ = choose_scales(planes, check_model(model), groups=groups,
                              predict=options.get("predict"))
    return scales


def segment_stack(stack: np.ndarray, model, *,
                  stitch_threshold: float = DEFAULT_STITCH_THRESHOLD, **options) -> StackResult:
    """Segment each plane of a z-stack and link the cells across planes.

    Parameters
    ----------
    stack : (Z, H, W) or (Z, C, H, W) ndarray
        The planes (read a file with :func:`flowseg.io.images.read_image_stack`).
    model : Model
    stitch_threshold : float
        See :func:`stitch_planes`.
    **options
        Passed to :func:`flowseg.segment` (``config``, ``predict``, ``return_maps``, ...). Without
        ``scale`` or ``diameter``, all planes share one scale, from the median of their
        estimated cell sizes (:func:`flowseg.api.choose_scales` with ``groups``).

    Returns
    -------
    StackResult
    """
    from flowseg.api import segment
    from flowseg.predict import PREDICT_FIELDS, check_predict

    check_stitch_threshold(stitch_threshold)
    legacy = {k: options.pop(k) for k in PREDICT_FIELDS if k in options}
    options["predict"] = check_predict(options.get("predict"), legacy, caller="segment_stack")
    if not isinstance(stack, np.ndarray) or stack.ndim not in (3, 4):
        raise ValueError(f"stack: expected a (Z, H, W) or (Z, C, H, W) array, got "
                         f"{getattr(stack, 'shape', type(stack).__name__)}")
    planes, options = normalize_once(list(stack), options)
    options["scale"] = shared_scales(planes, model, [0] * len(planes), options)
    planes = segment(planes, model, **options)
    return stack_result(planes, stitch_threshold=stitch_threshold)
