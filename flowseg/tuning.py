"""Per-class post-processing values tuned on validation images (pure logic, no files).

The network runs once over the validation images (:func:`flowseg.api.predict_maps`); every
trial then costs post-processing only, and most of that is shared between trials:

1. for each candidate cell-probability threshold, all images are clustered once
   (:func:`flowseg.api.cluster_maps`, no size or flow-error filter);
2. per clustered image the instance areas, flow errors and the IoU matrix against the truth
   are computed once;
3. each (flow threshold, min size) pair keeps a subset of the predicted instances, i.e. of the
   IoU matrix's columns, and is scored with the competition metric from that sub-matrix.

This gives the score of every image under every grid point (:func:`grid_scores`), exactly as
:func:`flowseg.api.segment_maps` with ``class_source="image"`` would produce it for an image
of that class. :func:`tune` takes the best single global set (:func:`best_global`), then per
true cell type the grid point with the best mean score over that type's images when it beats
the global set there by more than ``min_gain`` (:func:`best_per_class`); the before / after
scores it reports are computed with :func:`flowseg.api.segment_maps` itself, with the config's
own ``class_source``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from flowseg.config import ClassThresholds, SegmentConfig
from flowseg.flows import flow_error
from flowseg.metrics import IOU_THRESHOLDS, Truth, image_score, iou_matrix, match_counts
from flowseg.postprocess import cluster_config, cluster_maps, image_min_sizes, segment_maps
from flowseg.rescale import check_scale

__all__ = ["DEFAULT_MIN_GAIN", "ClassTuning", "TuningData", "TuningGrid", "TuningResult", "best_global",
           "best_per_class", "grid_scores", "score_config", "tune"]

log = logging.getLogger(__name__)

#: Mean score a class's own values must gain over the global values on its validation images.
#: 0: any gain (ties keep the global values); raise it when a class has few validation images.
DEFAULT_MIN_GAIN = 0.0


def _check_values(name: str, values: Iterable, *, kind: type, minimum: float | None) -> tuple:
    values = tuple(values)
    if not values:
        raise ValueError(f"{name}: expected at least one value, got none")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int) \
                or not np.isfinite(v):
            raise TypeError(f"{name}: expected finite {kind.__name__} values, got {values!r}")
        if minimum is not None and v < minimum:
            raise ValueError(f"{name}: expected values >= {minimum}, got {values!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name}: expected distinct values, got {values!r}")
    return tuple(sorted(kind(v) for v in values))


@dataclass(frozen=True)
class TuningGrid:
    """Candidate values searched for every class (all combinations).

    Attributes
    ----------
    cellprob_thresholds : tuple of float
        Cell-probability logit thresholds (each costs one clustering of the images).
    flow_thresholds : tuple of float
        Flow-error thresholds; ``0`` disables the check.
    min_sizes : tuple of int
        Minimum instance sizes in pixels (up to 300: large cells, such as Sartorius astrocytes
        of ~700 px, chose 150, above the old grid's top value 100).
    min_flows : tuple of float
        ``SegmentConfig.min_flow`` values (one for all classes: it shapes the clustering); the
        whole grid is searched at each. Empty (the default): keep the config's value.
    """

    cellprob_thresholds: tuple[float, ...] = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
    flow_thresholds: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.2)
    min_sizes: tuple[int, ...] = (0, 10, 15, 25, 40, 60, 100, 150, 200, 300)
    min_flows: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cellprob_thresholds", _check_values(
            "cellprob_thresholds", self.cellprob_thresholds, kind=float, minimum=None))
        object.__setattr__(self, "flow_thresholds", _check_values(
            "flow_thresholds", self.flow_thresholds, kind=float, minimum=0.0))
        object.__setattr__(self, "min_sizes", _check_values(
            "min_sizes", self.min_sizes, kind=int, minimum=0))
        if self.min_flows:
            object.__setattr__(self, "min_flows", _check_values(
                "min_flows", self.min_flows, kind=float, minimum=0.0))
        else:
            object.__setattr__(self, "min_flows", ())

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_cellprob, n_flow, n_min_size)``."""
        return len(self.cellprob_thresholds), len(self.flow_thresholds), len(self.min_sizes)

    def values(self, index: tuple[int, int, int]) -> ClassThresholds:
        """The values at a grid index ``(i_cellprob, i_flow, i_min_size)``."""
        i, j, k = index
        return ClassThresholds(self.cellprob_thresholds[i], self.flow_thresholds[j], self.min_sizes[k])

    def index_of(self, values: ClassThresholds) -> tuple[int, int, int] | None:
        """Grid index of ``values`` (all three set), or None when they are not on the grid."""
        try:
            return (self.cellprob_thresholds.index(values.cellprob_threshold),
                    self.flow_thresholds.index(values.flow_threshold),
                    self.min_sizes.index(values.min_size))
        except ValueError:
            return None


@dataclass(frozen=True)
class TuningData:
    """Cached network output of the validation images with their truth.

    Attributes
    ----------
    maps : list of (3 + K, H, W) tensor
        From :func:`flowseg.api.predict_maps`.
    truths : list of (H, W) ndarray of int, or list of lists of flat pixel indices
        True instances per image (see :func:`flowseg.metrics.iou_matrix`).
    cell_types : tuple of str
        True cell type per image.
    class_names : tuple of str, length K
    scale : float
        The ``scale`` the maps were predicted at: min sizes are tuned in the network's pixels,
        converted to the image's as :func:`flowseg.api.segment_maps` applies them
        (:func:`flowseg.api.image_min_sizes`).
    """

    maps: list[torch.Tensor]
    truths: list[Truth]
    cell_types: tuple[str, ...]
    class_names: tuple[str, ...]
    scale: float = 1.0

    def __post_init__(self) -> None:
        n = len(self.maps)
        if not n:
            raise ValueError("maps: expected at least one image, got none")
        if len(self.truths) != n or len(self.cell_types) != n:
            raise ValueError(f"truths, cell_types: expected {n} each (one per map), got "
                             f"{len(self.truths)} and {len(self.cell_types)}")
        for i, m in enumerate(self.maps):
            if m.ndim != 3 or m.shape[0] != 3 + len(self.class_names):
                raise ValueError(f"maps[{i}]: expected shape (3 + {len(self.class_names)}, H, W), "
                                 f"got {tuple(m.shape)}")
        check_scale(self.scale)


def _ratio_mean(tp: np.ndarray, n_true: int, n_pred: int) -> float:
    total = n_true + n_pred - tp
    return float(np.where(total > 0, tp / np.maximum(total, 1), 1.0).mean())


def _subset_scores(iou: np.ndarray, area: np.ndarray, err: np.ndarray, grid: TuningGrid,
                   min_sizes: np.ndarray) -> np.ndarray:
    """(n_flow, n_min_size) scores of one clustered image under each filter pair
    (``min_sizes``: the grid's, in the image's pixels)."""
    out = np.empty(grid.shape[1:])
    for j, ft in enumerate(grid.flow_thresholds):
        flow_ok = np.ones(area.shape, bool) if ft == 0 else err <= ft
        previous = None
        for k, ms in enumerate(min_sizes):
            keep = flow_ok & (area >= ms)
            if previous is not None and np.array_equal(keep, previous[0]):
                out[j, k] = previous[1]
                continue
            tp = match_counts(iou[:, keep], IOU_THRESHOLDS).tp
            out[j, k] = _ratio_mean(tp, iou.shape[0], int(keep.sum()))
            previous = (keep, out[j, k])
    return out


def grid_scores(data: TuningData, grid: TuningGrid, *, config: SegmentConfig,
                batch_size: int = 8, progress: Callable[[Iterable], Iterable] | None = None
                ) -> np.ndarray:
    """The competition score of every image under every grid point.

    An image is clustered at each cell-probability threshold of the grid (with ``config``'s
    other settings: ``niter``, ``fill_holes``), then filtered with each (flow threshold,
    min size) pair, as :func:`flowseg.api.segment_maps` does with ``class_source="image"``.

    Returns
    -------
    scores : (n_images, n_cellprob, n_flow, n_min_size) ndarray of float64
    """
    scores = np.empty((len(data.maps), *grid.shape))
    min_sizes = image_min_sizes(grid.min_sizes, data.scale)   # as segment_maps applies them
    thresholds = grid.cellprob_thresholds
    for i, t in enumerate(progress(thresholds) if progress else thresholds):
        labels = cluster_maps(data.maps, [cluster_config(config, t)] * len(data.maps),
                              batch_size=batch_size)
        for b, (lab, m, truth) in enumerate(zip(labels, data.maps, data.truths)):
            n = int(lab.max())
            area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
            err = flow_error(m[:2], lab) if n else np.zeros(0)
            scores[b, i] = _subset_scores(iou_matrix(truth, lab), area, err, grid, min_sizes)
    return scores


def _best_index(mean: np.ndarray, grid: TuningGrid, current: ClassThresholds) -> tuple[int, int, int]:
    """Grid index of the highest mean; the current values win a tie."""
    best = np.unravel_index(int(np.argmax(mean)), mean.shape)
    here = grid.index_of(current)
    if here is not None and mean[here] >= mean[best]:
        return here
    return tuple(int(v) for v in best)


def _resolved(config: SegmentConfig, cell_type: str | None) -> ClassThresholds:
    c = config.for_class(cell_type)
    return ClassThresholds(c.cellprob_threshold, c.flow_threshold, c.min_size)


def best_global(scores: np.ndarray, grid: TuningGrid, *, config: SegmentConfig) -> ClassThresholds:
    """The single grid point with the best mean score over all images (``config``'s global
    values win a tie)."""
    return grid.values(_best_index(scores.mean(0), grid, _resolved(config, None)))


def best_per_class(scores: np.ndarray, data: TuningData, grid: TuningGrid, *,
                   fallback: ClassThresholds, min_gain: float = 0.0) -> dict[str, ClassThresholds]:
    """Per class of ``data.class_names`` with validation images: its best grid point.

    A class keeps ``fallback`` (normally :func:`best_global`'s values) unless its own best
    point beats ``fallback`` on its images by more than ``min_gain``: with few images per class
    the per-class maximum partly fits noise, and the shared values are the safer estimate.

    Returns
    -------
    dict of str to ClassThresholds
        Classes without images are left out.
    """
    types = np.array(data.cell_types)
    out = {}
    for name in data.class_names:
        mask = types == name
        if not mask.any():
            continue
        mean = scores[mask].mean(0)
        best = _best_index(mean, grid, fallback)
        here = grid.index_of(fallback)
        keep = here is not None and mean[best] - mean[here] <= min_gain
        out[name] = fallback if keep else grid.values(best)
    return out


def score_config(data: TuningData, config: SegmentConfig, *, batch_size: int = 8) -> np.ndarray:
    """(n_images,) competition score of each image segmented with ``config`` (exact path)."""
    results = segment_maps(data.maps, data.class_names, config=config, batch_size=batch_size,
                           scales=data.scale)
    return np.array([image_score(t, r.labels).score for t, r in zip(data.truths, results)])


@dataclass(frozen=True)
class ClassTuning:
    """Tuning outcome of one cell type.

    Attributes
    ----------
    cell_type : str
    n_images : int
        Validation images of this true type.
    before, after : float
        Mean score of those images with the input config and with the tuned one.
    values : ClassThresholds
        The tuned values.
    own : bool
        True when the class has values of its own, False when it uses the global ones.
    """

    cell_type: str
    n_images: int
    before: float
    after: float
    values: ClassThresholds
    own: bool


@dataclass(frozen=True)
class TuningResult:
    """Outcome of :func:`tune`.

    Attributes
    ----------
    config : SegmentConfig
        The input config with the best global values and the tuned ``per_class`` values.
    per_class : dict of str to ClassTuning
        By cell type (types of the images, in ``class_names`` order; others under their name).
    before, after : float
        Mean score over all images with the input and the tuned config.
    global_values : ClassThresholds
        The best single set of values for all classes (the tuned config's global values).
    n_trials : int
        Grid points scored per image (over all ``min_flows``).
    seconds : float
        Wall time of the search and the scoring (the network is not included).
    """

    config: SegmentConfig
    per_class: dict[str, ClassTuning]
    before: float
    after: float
    global_values: ClassThresholds
    n_trials: int
    seconds: float


def _class_means(scores: np.ndarray, cell_types: Sequence[str]) -> dict[str, tuple[int, float]]:
    types = np.array(cell_types)
    return {t: (int((types == t).sum()), float(scores[types == t].mean()))
            for t in dict.fromkeys(cell_types)}


def tune(data: TuningData, *, config: SegmentConfig, grid: TuningGrid = TuningGrid(),
         min_gain: float = DEFAULT_MIN_GAIN, batch_size: int = 8,
         progress: Callable[[Iterable], Iterable] | None = None) -> TuningResult:
    """Tune per-class cellprob threshold, flow threshold and min size on validation maps.

    The best single set of values over all images (:func:`best_global`) becomes the config's
    global values; each class with validation images gets its own best values when they beat
    the global ones on its images by more than ``min_gain`` (:func:`best_per_class`), else the
    global ones. With ``grid.min_flows`` this is done at each ``min_flow`` and the one whose
    tuned config scores best over all images is kept.

    Parameters
    ----------
    data : TuningData
        Cached maps of the validation images with their truth and true cell types.
    config : SegmentConfig
        Starting config (its other settings and ``class_source`` are kept).
    grid : TuningGrid
    min_gain : float
        Mean score a class's own values must gain over the global ones on its images.
    batch_size : int
        Images per flow-following batch.
    progress : callable, optional
        Wraps the iterable of cell-probability thresholds (e.g. ``tqdm``).

    Returns
    -------
    TuningResult
    """
    if not isinstance(min_gain, (int, float)) or isinstance(min_gain, bool) or not min_gain >= 0:
        raise ValueError(f"min_gain: expected a number >= 0, got {min_gain!r}")
    t0 = time.perf_counter()
    candidates = []  # (score after, tuned config, global values) per min_flow
    for min_flow in grid.min_flows or (config.min_flow,):
        start = dataclasses.replace(config, min_flow=min_flow)
        tuned, glob = _tune_values(data, start, grid, min_gain, batch_size, progress)
        after = score_config(data, tuned, batch_size=batch_size) if grid.min_flows else None
        candidates.append((after, tuned, glob))
    if grid.min_flows:  # the first (smallest) min_flow wins ties
        _, tuned, glob = max(candidates, key=lambda c: c[0].mean())
    else:
        _, tuned, glob = candidates[0]
    before = score_config(data, config, batch_size=batch_size)
    after = score_config(data, tuned, batch_size=batch_size)
    b, a = _class_means(before, data.cell_types), _class_means(after, data.cell_types)
    per_class = {t: ClassTuning(t, b[t][0], b[t][1], a[t][1], _resolved(tuned, t),
                                t in tuned.per_class and _resolved(tuned, t) != glob)
                 for t in b}
    seconds = time.perf_counter() - t0
    n_trials = int(np.prod(grid.shape)) * max(1, len(grid.min_flows))
    log.info("tuned %d classes over %d images x %d grid points in %.1f s: %.4f -> %.4f "
             "(min_flow %g)", len(per_class), len(data.maps), n_trials, seconds, before.mean(),
             after.mean(), tuned.min_flow)
    return TuningResult(tuned, per_class, float(before.mean()), float(after.mean()), glob,
                        n_trials, seconds)


def _tune_values(data: TuningData, config: SegmentConfig, grid: TuningGrid, min_gain: float,
                 batch_size: int, progress) -> tuple[SegmentConfig, ClassThresholds]:
    """``config`` with the grid's best global and per-class values (its min_flow kept)."""
    scores = grid_scores(data, grid, config=config, batch_size=batch_size, progress=progress)
    glob = best_global(scores, grid, config=config)
    tuned_values = best_per_class(scores, data, grid, fallback=glob, min_gain=min_gain)
    tuned = dataclasses.replace(config, cellprob_threshold=glob.cellprob_threshold,
                                flow_threshold=glob.flow_threshold, min_size=glob.min_size,
                                per_class={**config.per_class, **tuned_values})
    return tuned, glob
