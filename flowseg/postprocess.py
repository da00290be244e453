"""The class and mask stages of segmentation, from the network's maps to labelled instances.

:func:`segment_maps` estimates each image's cell type from the class probabilities of its
foreground pixels, clusters all images of one size at once (:func:`cluster_maps`), applies the
per-class cell-probability threshold, min size and flow-error threshold to each instance
(:func:`filter_instances`), and assembles one :class:`SegmentResult` per image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from flowseg.config import SegmentConfig, check_int
from flowseg.flows import fill_holes, flow_error, flows_to_labels
from flowseg.io.instances import drop_edge_instances, relabel_consecutive
from flowseg.rescale import check_scales

__all__ = ["ClassValues", "SegmentResult", "cluster_config", "cluster_maps", "filter_instances",
           "image_min_sizes", "instance_classes", "segment_maps"]


@dataclass(frozen=True)
class SegmentResult:
    """The segmentation of one image.

    Attributes
    ----------
    labels : (H, W) ndarray of int32
        0 = background, 1..N = instances.
    cell_types : tuple of str, length N
        ``cell_types[i]`` is the cell type of instance ``i + 1``.
    class_probs : (N, K) ndarray of float32
        Mean class probability over each instance's pixels (K = ``len(class_names)``).
    scores : (N,) ndarray of float32
        Confidence of each instance: mean cell probability over its pixels times its
        winning class probability.
    image_cell_type : str
        The type with the highest ``image_class_probs`` (a soft vote of the instances'
        pixels; from the foreground pixels' class probabilities when there is no instance).
    image_class_probs : (K,) ndarray of float32
        Area-weighted mean of the instances' class probabilities.
    class_names : tuple of str
        The model's cell types, in class-index order.
    flows : (2, H, W) ndarray of float32 or None
        Predicted unit flows (dy, dx), when asked for.
    cellprob : (H, W) ndarray of float32 or None
        Predicted cell-probability logits, when asked for.
    scale : float
        Resize factor the image was segmented at (given, from ``diameter``, or estimated).
    diameter : float or None
        The cell diameter in the image's pixels that ``scale`` corresponds to: the model's
        training diameter / ``scale`` (None for a model that records no diameter).
    """

    labels: np.ndarray
    cell_types: tuple[str, ...]
    class_probs: np.ndarray
    scores: np.ndarray
    image_cell_type: str
    image_class_probs: np.ndarray
    class_names: tuple[str, ...]
    flows: np.ndarray | None = None
    cellprob: np.ndarray | None = None
    scale: float = 1.0
    diameter: float | None = None

    @property
    def n_instances(self) -> int:
        """Number of instances N."""
        return len(self.cell_types)


# ----------------------------------------------------------------------------- class stage
def _image_class_from_pixels(cellprob: torch.Tensor, class_probs: torch.Tensor,
                             threshold: float) -> torch.Tensor:
    """(K,) mean class probability over the foreground pixels (cellprob > threshold).

    Falls back to a cell-probability-weighted mean over all pixels when nothing is foreground.
    """
    fg = (cellprob > threshold).float()
    weight = fg if fg.sum() > 0 else torch.sigmoid(cellprob)
    return (class_probs * weight).sum((1, 2)) / weight.sum().clamp_min(1e-12)


@dataclass(frozen=True)
class _InstanceStats:
    class_probs: np.ndarray  # (N, K)
    scores: np.ndarray       # (N,)
    areas: np.ndarray        # (N,)


def _instance_stats(labels: np.ndarray, cellprob: np.ndarray, class_probs: np.ndarray) -> _InstanceStats:
    """Per-instance mean class probabilities, confidence and area (vectorised with bincount)."""
    n = int(labels.max())
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    denom = np.maximum(areas, 1)
    probs = np.stack([np.bincount(flat, weights=c.ravel(), minlength=n + 1)[1:] / denom
                      for c in class_probs], axis=1) if n else np.zeros((0, len(class_probs)))
    fg = 1.0 / (1.0 + np.exp(-cellprob.astype(np.float64)))
    mean_fg = np.bincount(flat, weights=fg.ravel(), minlength=n + 1)[1:] / denom
    scores = mean_fg * (probs.max(axis=1) if n else 0.0)
    return _InstanceStats(probs.astype(np.float32), np.asarray(scores, np.float32), areas)


def _result(labels: np.ndarray, maps: torch.Tensor, class_names: tuple[str, ...],
            fallback_probs: torch.Tensor, return_maps: bool) -> SegmentResult:
    maps = maps.cpu()
    cellprob = maps[2].numpy()
    class_probs = torch.softmax(maps[3:], dim=0).numpy()
    stats = _instance_stats(labels, cellprob, class_probs)
    types = tuple(class_names[k] for k in stats.class_probs.argmax(axis=1)) if len(stats.areas) else ()
    if len(stats.areas):
        image_probs = (stats.class_probs * stats.areas[:, None]).sum(0) / stats.areas.sum()
    else:
        image_probs = fallback_probs.cpu().numpy()
    image_type = class_names[int(image_probs.argmax())]  # a soft vote over the cells' pixels
    return SegmentResult(
        labels=labels, cell_types=types, class_probs=stats.class_probs, scores=stats.scores,
        image_cell_type=image_type, image_class_probs=np.asarray(image_probs, np.float32),
        class_names=class_names,
        flows=maps[:2].numpy().copy() if return_maps else None,
        cellprob=cellprob.copy() if return_maps else None)


# ----------------------------------------------------------------------------- mask stage
@dataclass(frozen=True)
class ClassValues:
    """The post-processing values of every class, as arrays indexed by class.

    Attributes
    ----------
    cellprob_threshold, flow_threshold : (K,) ndarray of float64
    min_size : (K,) ndarray of int64
    """

    cellprob_threshold: np.ndarray
    flow_threshold: np.ndarray
    min_size: np.ndarray

    @classmethod
    def of(cls, config: SegmentConfig, class_names: Sequence[str]) -> ClassValues:
        """``config.for_class(name)``'s values for each of ``class_names``."""
        per = [config.for_class(name) for name in class_names]
        return cls(np.array([c.cellprob_threshold for c in per], np.float64),
                   np.array([c.flow_threshold for c in per], np.float64),
                   np.array([c.min_size for c in per], np.int64))

    def at_scale(self, scale: float) -> ClassValues:
        """These values for maps predicted at ``scale`` and resized back to the image: sizes
        count the pixels of the network's view (:func:`image_min_sizes`); the other values are
        per pixel and stay."""
        if scale == 1.0:
            return self
        return dataclasses.replace(self, min_size=image_min_sizes(self.min_size, scale))


def image_min_sizes(min_sizes: Sequence[int] | np.ndarray, scale: float) -> np.ndarray:
    """Minimum sizes counted in the network's pixels, as pixels of an image whose maps were
    predicted at ``scale``: ``min_size / scale**2``, rounded.

    Returns
    -------
    (K,) ndarray of int64
    """
    return np.rint(np.asarray(min_sizes, np.float64) / float(scale) ** 2).astype(np.int64)


def cluster_config(config: SegmentConfig, cellprob_threshold: float) -> SegmentConfig:
    """The config of the clustering stage: no size or flow-error filter (applied afterwards)."""
    return dataclasses.replace(config, per_class={}, cellprob_threshold=float(cellprob_threshold),
                               min_size=0, flow_threshold=0.0)


def cluster_maps(maps: Sequence[torch.Tensor], configs: Sequence[SegmentConfig], *,
                 batch_size: int = 8) -> list[np.ndarray]:
    """``flows_to_labels`` over all images, batched by image size.

    Parameters
    ----------
    maps : sequence of (3 + K, H, W) tensors
        From :func:`predict_maps`.
    configs : sequence of SegmentConfig
        One per image.

    Returns
    -------
    list of (H, W) ndarray of int32
    """
    labels: list[np.ndarray | None] = [None] * len(maps)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(maps):
        by_shape.setdefault(tuple(m.shape[-2:]), []).append(i)
    for idx in by_shape.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            out = flows_to_labels(torch.stack([maps[i][:2] for i in chunk]),
                                  torch.stack([maps[i][2] for i in chunk]),
                                  config=[configs[i] for i in chunk])
            for i, lab in zip(chunk, np.asarray(out)):
                labels[i] = lab.astype(np.int32, copy=False)
    return labels


def instance_classes(labels: np.ndarray, class_probs: np.ndarray) -> np.ndarray:
    """(N + 1,) class index of each id 0..N: argmax of its mean class probability (id 0: 0).

    Parameters
    ----------
    labels : (H, W) ndarray of int
    class_probs : (K, H, W) ndarray of float
    """
    n = int(labels.max())
    flat = labels.ravel()
    sums = np.stack([np.bincount(flat, weights=c.ravel(), minlength=n + 1) for c in class_probs])
    classes = sums.argmax(axis=0)
    classes[0] = 0
    return classes


def filter_instances(labels: np.ndarray, flows: np.ndarray, cellprob: np.ndarray,
                     classes: np.ndarray, values: ClassValues, *, cluster_threshold: float,
                     fill: bool = True) -> np.ndarray:
    """Filter each instance with the values of its class (vectorised, no loop over instances).

    Instances whose class cell-probability threshold is above ``cluster_threshold`` (the one
    they were clustered with) lose their pixels at or below it (holes this leaves inside one
    instance are filled again when ``fill``); then instances smaller than their class's
    ``min_size``, or whose flow error exceeds their class's ``flow_threshold`` (when > 0), are
    dropped; ids are renumbered 1..N.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Clustered instances, 0 = background.
    flows : (2, H, W) ndarray or tensor of float32
        Predicted unit flows; the flow error is computed on their device.
    cellprob : (H, W) ndarray of float32
        Cell-probability logits.
    classes : (N + 1,) ndarray of int
        Class index of each id 0..N (``classes[0]`` unused).
    values : ClassValues
    cluster_threshold : float
        Cell-probability threshold ``labels`` were clustered with.
    fill : bool
        Fill holes left by the trimming (``SegmentConfig.fill_holes``).

    Returns
    -------
    labels : (H, W) ndarray of int32
    """
    threshold = values.cellprob_threshold[classes]
    trim = threshold > cluster_threshold
    trim[0] = False
    if trim.any():
        below = trim[labels] & (cellprob <= threshold[labels])
        labels = np.where(below, 0, labels)
        if fill:
            labels = fill_holes(labels[None])[0]
    n = len(classes) - 1
    area = np.bincount(labels.ravel(), minlength=n + 1)
    drop = area < values.min_size[classes]
    flow_threshold = values.flow_threshold[classes]
    check = ~drop & (flow_threshold > 0) & (area > 0)
    check[0] = False
    if check.any():
        err = np.full(n + 1, np.nan)
        kept = np.where(check[labels], labels, 0)
        err[1:int(kept.max()) + 1] = flow_error(flows, kept)
        drop |= check & (err > flow_threshold)
    drop[0] = False
    return relabel_consecutive(np.where(drop[labels], 0, labels))


@dataclass(frozen=True)
class _Decisions:
    labels: list[np.ndarray]
    pixel_probs: list[torch.Tensor]  # (K,) per image: class probabilities of its foreground


def _decide(maps: Sequence[torch.Tensor], class_names: tuple[str, ...], config: SegmentConfig,
            batch_size: int, scales: Sequence[float]) -> _Decisions:
    """Classes, clustering and per-class filtering of every image (see :func:`segment_maps`)."""
    values = ClassValues.of(config, class_names)
    pixel_probs = [_image_class_from_pixels(m[2], torch.softmax(m[3:], 0), config.cellprob_threshold)
                   for m in maps]
    image_class = [int(p.argmax()) for p in pixel_probs]
    if config.class_source == "image":
        thresholds = [values.cellprob_threshold[k] for k in image_class]
    else:
        thresholds = [values.cellprob_threshold.min()] * len(maps)
    clustered = cluster_maps(maps, [cluster_config(config, t) for t in thresholds],
                             batch_size=batch_size)
    labels = []
    for lab, m, k, t, f in zip(clustered, maps, image_class, thresholds, scales):
        host = m.cpu()
        if config.class_source == "image":
            classes = np.full(int(lab.max()) + 1, k)
        else:
            classes = instance_classes(lab, torch.softmax(host[3:], 0).numpy())
        lab = filter_instances(lab, m[:2], host[2].numpy(), classes, values.at_scale(f),
                               cluster_threshold=t, fill=config.fill_holes)
        labels.append(drop_edge_instances(lab) if config.exclude_on_edges else lab)
    return _Decisions(labels, pixel_probs)


def segment_maps(maps: Sequence[torch.Tensor], class_names: Sequence[str], *,
                 config: SegmentConfig, batch_size: int = 8,
                 return_maps: bool = False,
                 scales: float | Sequence[float] | None = None) -> list[SegmentResult]:
    """Turn network maps into results: the post-processing half of :func:`segment`.

    Each image's cell type is estimated from its foreground pixels' class probabilities. With
    ``config.class_source == "image"`` the image is clustered and every instance filtered with
    that type's values (``config.for_class``); with ``"instance"`` the image is clustered with
    the lowest cell-probability threshold over the classes and each instance is then filtered
    (:func:`filter_instances`) with the values of its own type (highest mean class probability
    over its pixels). Running the network once (:func:`predict_maps`) and this many times is
    how thresholds are tuned (:mod:`flowseg.tuning`).

    Parameters
    ----------
    maps : sequence of (3 + K, H, W) tensors
        From :func:`predict_maps`.
    class_names : sequence of str, length K
    config : SegmentConfig
    batch_size : int
        Images per flow-following batch.
    return_maps : bool
        Keep flows and cell-probability logits in the results.
    scales : float or sequence of float, optional
        The ``scale`` the maps were predicted at (:func:`predict_maps`), one or one per image;
        ``None``: 1. ``min_size`` counts pixels at the network's view, so an image
        predicted at scale ``s`` keeps instances of at least ``min_size / s**2`` of its own
        pixels (:meth:`ClassValues.at_scale`).

    Returns
    -------
    list of SegmentResult
    """
    if not isinstance(config, SegmentConfig):
        raise TypeError(f"config: expected a SegmentConfig, got {type(config).__name__}")
    check_int("batch_size", batch_size, minimum=1)
    class_names = tuple(class_names)
    for i, m in enumerate(maps):
        if m.ndim != 3 or m.shape[0] != 3 + len(class_names):
            raise ValueError(f"maps[{i}]: expected shape (3 + {len(class_names)}, H, W), "
                             f"got {tuple(m.shape)}")
    decisions = _decide(maps, class_names, config, batch_size,
                        check_scales(1.0 if scales is None else scales, len(maps)))
    return [_result(lab, m, class_names, p, return_maps)
            for lab, m, p in zip(decisions.labels, maps, decisions.pixel_probs)]
