"""The Python API: ``load_model`` and ``segment`` (numpy in, result objects out).

``segment`` runs in three batched stages, after choosing each image's resize factor
(:func:`choose_scales`: given, from a cell diameter, or estimated by the model's size model):

1. network: every image is cut into equal tiles (or kept whole with ``tile=None``); tiles of all
   images share network batches; optional flip test-time augmentation; tiles are blended back;
2. classes: each image's cell type is first estimated from the class probabilities of its
   foreground pixels;
3. masks (:func:`segment_maps`): ``flows_to_labels`` clusters all images of one size at once
   (cell-probability threshold of the image's type, or the lowest over the types with
   ``SegmentConfig.class_source == "instance"``), then :func:`filter_instances` applies the
   per-class cell-probability threshold, min size and flow-error threshold to each instance
   (of its image's type, or of its own); last, per-instance cell type (highest mean class
   probability over the instance), class probabilities and confidence, and the image type
   (highest area-weighted mean class probability over the instances: a soft vote).

:func:`predict_maps` and :func:`segment_maps` are the two halves of :func:`segment`; tuning
(:mod:`flowseg.tuning`) runs the first once and the second many times.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowseg.config import CLASS_FIELDS, SegmentConfig, check_int
from flowseg.data.normalize import check_percentiles, normalize_image
from flowseg.device import autocast, preferred_memory_format, resolve_device, resolve_precision
from flowseg.flows import fill_holes, flow_error, flows_to_labels
from flowseg.io.instances import drop_edge_instances, relabel_consecutive
from flowseg.model.checkpoint import Model
from flowseg.model.checkpoint import load_model as _load_checkpoint
from flowseg.rescale import check_scale, resize_stack, scaled_shape
from flowseg.size import SIZE_MODEL_KEY, SizeModel, scale_for_diameter
from flowseg.tiling import TileGrid, split_tiles, stitch_tiles, tile_grid

__all__ = ["DEFAULT_TILE", "NORMALIZE", "ClassValues", "SegmentResult", "check_image",
           "check_model", "check_tile", "choose_scales", "cluster_config", "cluster_maps",
           "filter_instances", "image_min_sizes", "image_styles", "instance_classes", "load_model", "model_size",
           "predict_maps", "segment", "segment_maps", "warn_dropped_tuning"]

log = logging.getLogger(__name__)

#: Default network tile side in pixels (images larger than this are tiled with overlap).
DEFAULT_TILE = 256
#: Fraction of a tile shared with its neighbour.
TILE_OVERLAP = 0.1
#: Default percentiles of each image mapped to 0 and 1 before the network (as in training).
NORMALIZE = (1.0, 99.0)


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


def load_model(path: str | Path | Sequence[str | Path] | None = None, *,
               device: str | torch.device = "auto") -> Model:
    """Load a flowseg checkpoint onto ``device`` (``"auto"``: CUDA if available).

    ``path=None`` loads the default model shipped inside the package; a list of paths loads
    an ensemble of their networks (:func:`flowseg.model.ensemble.ensemble`: maps averaged,
    the first file's thresholds until the ensemble is tuned).
    """
    if path is None:
        from flowseg.model.pretrained import default_model_path

        path = default_model_path()
    device = resolve_device(device)
    if isinstance(path, (list, tuple)):
        from flowseg.model.ensemble import ensemble

        return ensemble([_load_checkpoint(p, device=device) for p in path],
                        names=[str(p) for p in path])
    return _load_checkpoint(path, device=device)


# ----------------------------------------------------------------------------- input checks
def check_model(model: object) -> Model:
    """``model`` if it is a loaded :class:`~flowseg.model.checkpoint.Model` (a list of them: their
    ensemble, :func:`flowseg.model.ensemble.ensemble`), else a TypeError that says how to get
    one (a path is not loaded here: loading is :func:`load_model`'s job, once, not on every
    call)."""
    if isinstance(model, Model):
        return model
    if isinstance(model, (list, tuple)) and model and all(isinstance(m, Model) for m in model):
        from flowseg.model.ensemble import ensemble

        return ensemble(model)
    if isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model: expected a loaded flowseg Model, got the path {str(model)!r}; "
                        f"load it once first: model = flowseg.load_model({str(model)!r})")
    raise TypeError(f"model: expected a loaded flowseg Model (flowseg.load_model(path), or "
                    f"flowseg.load_model() for the shipped default), got "
                    f"{type(model).__name__} {model!r:.40}")


def check_tile(tile: object, *, size_multiple: int) -> int | None:
    """The network tile side to use: ``None`` (whole images) for ``tile`` None or 0.

    Parameters
    ----------
    tile : int or None
        0 or None: whole images (untiled); else the side of the square tiles in pixels, a
        positive multiple of ``size_multiple``.
    size_multiple : int
        The model's :attr:`~flowseg.config.ModelConfig.size_multiple` (``2 ** poolings``).

    Returns
    -------
    int or None

    Raises
    ------
    TypeError
        ``tile`` is not an int (bool is not).
    ValueError
        A negative ``tile``, or one that is not a multiple of ``size_multiple``; the message
        names the allowed sizes.
    """
    if tile is None:
        return None
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)):
        raise TypeError(f"tile: expected an int (0 or None: whole images, untiled), "
                        f"got {type(tile).__name__} {tile!r}")
    if tile == 0:
        return None
    if tile < 0 or tile % size_multiple:
        below = max(size_multiple, int(tile) // size_multiple * size_multiple)
        example = f"{DEFAULT_TILE}" if tile < 0 else f"{below} or {below + size_multiple}"
        allowed = "a positive tile side in pixels" if size_multiple == 1 else (
            f"a tile side in pixels that is a positive multiple of {size_multiple} (this model "
            f"halves the image size {size_multiple.bit_length() - 1} times)")
        raise ValueError(f"tile: expected 0 (whole images, untiled) or {allowed}, e.g. {example}; "
                         f"got {tile}")
    return int(tile)


def check_image(image: object, in_channels: int, name: str) -> np.ndarray:
    """``image`` if it is an ``(H, W)`` or ``(C, H, W)`` array with the model's channels.

    Parameters
    ----------
    image : ndarray
    in_channels : int
        The model's input channels C (an ``(H, W)`` image has 1).
    name : str
        How messages name the image (``"images[2]"``, a file path).

    Raises
    ------
    TypeError
        Not a numpy array.
    ValueError
        Not 2-D or 3-D, or another number of channels (e.g. an RGB image or a z-stack for a
        1-channel model).
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(image).__name__}")
    channels = 1 if image.ndim == 2 else (image.shape[0] if image.ndim == 3 else None)
    if channels is None:
        raise ValueError(f"{name}: expected shape (H, W) or (C, H, W), got {image.shape}")
    if channels != in_channels:
        raise ValueError(f"{name}: the model takes {in_channels} channel(s), got an image of "
                         f"shape {image.shape} ({channels} channels: colour, a z-stack or a "
                         "time series?)")
    return image


def _check_images(images: Sequence[np.ndarray], in_channels: int) -> list[np.ndarray]:
    if isinstance(images, (np.ndarray, torch.Tensor)):
        raise TypeError("images: expected a list of arrays (H, W) or (C, H, W); got a single "
                        f"{type(images).__name__} of shape {tuple(images.shape)} — wrap one image "
                        "in a list: segment([image], model)")
    if images is None or isinstance(images, (str, os.PathLike)) \
            or not isinstance(images, Iterable):
        raise TypeError(f"images: expected a list of arrays (H, W) or (C, H, W) (read files with "
                        f"flowseg.io.images.read_image), got {type(images).__name__} "
                        f"{images!r:.40}")
    return [check_image(image, in_channels, f"images[{i}]") for i, image in enumerate(images)]


# ----------------------------------------------------------------------------- network stage
def _forward(model: Model, x: torch.Tensor, *, tta: bool, dtype: torch.dtype) -> torch.Tensor:
    """Network output (B, 3 + K, h, w) float32: unit flows (dy, dx), cellprob logit, class logits.

    The network runs under autocast to ``dtype``. With ``tta`` the outputs of the four flips are
    averaged (flow components un-flipped).
    """
    flips = [(), (-1,), (-2,), (-2, -1)] if tta else [()]
    layout = preferred_memory_format(x.device, dtype)
    total = None
    for dims in flips:
        xin = (x.flip(dims) if dims else x).contiguous(memory_format=layout)
        with autocast(x.device, dtype):
            out = model.net(xin)
        maps = torch.cat([out.flows / model.flow_scale, out.cellprob[:, None], out.class_logits], 1).float()
        if dims:
            maps = maps.flip(dims)
            if -2 in dims:
                maps[:, 0] = -maps[:, 0]
            if -1 in dims:
                maps[:, 1] = -maps[:, 1]
        total = maps if total is None else total + maps
    return (total / len(flips)).float()


def _set_layout(model: Model, device: torch.device, dtype: torch.dtype) -> None:
    """Put the network's weights in the memory layout its inputs will have. Only the layout
    changes, but the kernels (and so the last bits of bf16 results) follow it: every pass sets
    it, so that a first call computes what later calls do."""
    model.net.to(memory_format=preferred_memory_format(device, dtype))


def _group_medians(values: np.ndarray, groups: Sequence[int] | None) -> np.ndarray:
    """Each value replaced by the median of its group's (``groups``: one id per value; None:
    every value its own group)."""
    if groups is None:
        return values
    groups = np.asarray(groups)
    if groups.shape != values.shape:
        raise ValueError(f"groups: expected one id per image ({len(values)}), got {groups.shape}")
    out = np.empty_like(values)
    for g in np.unique(groups):
        out[groups == g] = np.median(values[groups == g])
    return out


def _check_scales(scale: float | Sequence[float], n: int) -> list[float]:
    """One checked resize factor per image from one factor or a sequence of ``n``."""
    if isinstance(scale, (list, tuple, np.ndarray)):
        if len(scale) != n:
            raise ValueError(f"scale: expected one factor or one per image ({n}), got {len(scale)}")
        return [check_scale(s, f"scale[{i}]") for i, s in enumerate(scale)]
    return [check_scale(scale)] * n


def predict_maps(images: Sequence[np.ndarray], model: Model, *, batch_size: int = 8,
                 tile: int | None = DEFAULT_TILE, tta: bool = False,
                 scale: float | Sequence[float] = 1.0, precision: str = "auto",
                 normalize: tuple[float, float] | None = NORMALIZE) -> list[torch.Tensor]:
    """Run the network over images of any sizes, batching tiles of all images together.

    With ``scale != 1`` (one factor, or one per image) each normalised image is resized by its
    factor before the network and its maps are resized back to the image's own size (see
    ``segment``). ``tile`` (0 or None: whole images), ``precision`` and ``normalize`` as in
    :func:`segment`.

    Returns
    -------
    list of (3 + K, H, W) float32 tensors (on the model's device)
        Per image: unit flows (dy, dx), cell-probability logit, K class logits.
    """
    model = check_model(model)
    images = _check_images(images, model.model_config.in_channels)
    check_int("batch_size", batch_size, minimum=1)
    tile = check_tile(tile, size_multiple=model.model_config.size_multiple)
    scales = _check_scales(scale, len(images))
    normalize = check_percentiles(normalize)
    device = next(model.net.parameters()).device
    dtype = resolve_precision(precision, device)
    _set_layout(model, device, dtype)
    tensors = [torch.from_numpy(normalize_image(im, percentiles=normalize)) for im in images]
    shapes = [tuple(t.shape[-2:]) for t in tensors]
    tensors = [resize_stack(t, scaled_shape(hw, f)) if f != 1.0 else t
               for t, hw, f in zip(tensors, shapes, scales)]
    align = model.model_config.size_multiple  # the network's total pooling stride
    grids: list[TileGrid | None] = [
        tile_grid(t.shape[-2:], tile=tile, overlap=TILE_OVERLAP, align=align) if tile else None
        for t in tensors]
    # Units of network work: whole images (tile=None) or tiles; batched by shape.
    pieces = []  # (image index, piece tensor)
    for i, (t, grid) in enumerate(zip(tensors, grids)):
        pieces.extend((i, p) for p in (split_tiles(t, grid) if grid else t[None]))
    outputs: list[list[torch.Tensor]] = [[] for _ in tensors]
    order = sorted(range(len(pieces)), key=lambda k: tuple(pieces[k][1].shape))
    model.net.eval()
    with torch.inference_mode():
        start = 0
        while start < len(order):
            shape = pieces[order[start]][1].shape
            batch = [order[start]]
            while (len(batch) < batch_size and start + len(batch) < len(order)
                   and pieces[order[start + len(batch)]][1].shape == shape):
                batch.append(order[start + len(batch)])
            x = torch.stack([pieces[k][1] for k in batch]).to(device)
            y = _forward(model, x, tta=tta, dtype=dtype)
            for k, out in zip(batch, y):
                outputs[pieces[k][0]].append((k, out))
            start += len(batch)
    maps = []
    for i, grid in enumerate(grids):
        outs = torch.stack([o for _, o in sorted(outputs[i], key=lambda ko: ko[0])])
        out = stitch_tiles(outs, grid) if grid else outs[0]
        maps.append(resize_stack(out, shapes[i]) if scales[i] != 1.0 else out)
    return maps


# ----------------------------------------------------------------------------- cell size
def model_size(model: Model) -> SizeModel | None:
    """The model's :class:`~flowseg.size.SizeModel` (training diameter and zoom regression),
    None when its checkpoint records none (models trained before flowseg 0.x)."""
    values = model.metadata.get(SIZE_MODEL_KEY)
    return None if values is None else SizeModel.from_dict(values)


def image_styles(images: Sequence[np.ndarray], model: Model, *, factors: Sequence[float],
                 levels: int = 1, spread: bool = False, tile: int | None = None,
                 precision: str = "auto",
                 normalize: tuple[float, float] | None = NORMALIZE) -> np.ndarray:
    """Style vectors of images, each normalised and resized by its factor (encoder only;
    ``levels`` deepest encoder levels, with their spread, see ``UNet.level_styles``). With
    ``tile``, the mean of the styles of ``tile`` x ``tile`` tiles covering the resized image
    (no overlap; smaller images padded): then the style does not depend on the image's size.

    Parameters
    ----------
    images : sequence of (H, W) or (C, H, W) ndarrays
    model : Model
        Its network must have a ``level_styles`` method (flowseg's UNet; not an exported one).
    factors : sequence of float
        Resize factor of each image (e.g. the size model's ``low_res``).

    Returns
    -------
    (N, D) ndarray of float32
    """
    model = check_model(model)
    images = _check_images(images, model.model_config.in_channels)
    factors = _check_scales(list(factors), len(images))
    style = getattr(model.net, "level_styles", None)
    if style is None:
        raise ValueError(f"model: its network ({type(model.net).__name__}) gives no style "
                         "vector, so image sizes cannot be estimated (give scale or diameter)")
    normalize = check_percentiles(normalize)
    device = model.device
    dtype = resolve_precision(precision, device)
    _set_layout(model, device, dtype)
    out = []
    model.net.eval()
    with torch.inference_mode():
        for image, factor in zip(images, factors):
            t = torch.from_numpy(normalize_image(image, percentiles=normalize))
            t = resize_stack(t, scaled_shape(t.shape[-2:], factor))
            x = split_tiles(t, tile_grid(t.shape[-2:], tile=tile, overlap=0.0)) if tile else t[None]
            x = x.to(device).contiguous(memory_format=preferred_memory_format(device, dtype))
            with autocast(device, dtype):
                out.append(style(x, levels, spread).float().mean(dim=0).cpu().numpy())
    return np.stack(out) if out else np.zeros((0, 0), np.float32)


def choose_scales(images: Sequence[np.ndarray], model: Model, *,
                  scale: float | Sequence[float] | None = None,
                  diameter: float | None = None, precision: str = "auto",
                  normalize: tuple[float, float] | None = NORMALIZE,
                  groups: Sequence[int] | None = None
                  ) -> tuple[list[float], list[float | None]]:
    """The resize factor of each image, and the cell diameter it corresponds to.

    ``scale`` given: that factor (one, or one per image). ``diameter`` given: ``model diameter
    / diameter``. Neither: the model's size model estimates each image's zoom (one encoder pass
    at ``low_res``; see :mod:`flowseg.size`); a model without one is run at scale 1.
    ``groups`` (one id per image): images with the same id, such as the planes of one z-stack,
    share one estimate, the median of their zooms, so that they are resized alike.

    Returns
    -------
    scales : list of float, one per image
    diameters : list of float or None
        ``model diameter / scale`` (None when the model records no diameter).
    """
    size = model_size(model)
    if scale is not None and diameter is not None:
        raise ValueError(f"scale, diameter: give one of them, not both (got scale={scale!r}, "
                         f"diameter={diameter!r})")
    if diameter is not None:
        if size is None:
            raise ValueError("diameter: this model records no training cell diameter; give "
                             "scale (a resize factor) instead")
        factor = scale_for_diameter(diameter, size.diameter)
        scales = [check_scale(factor, "model diameter / diameter")] * len(images)
    elif scale is not None:
        scales = _check_scales(scale, len(images))
    elif size is None or not size.can_estimate or not images:
        scales = [1.0] * len(images)
    elif not hasattr(model.net, "level_styles"):
        log.warning("the model's network (%s) gives no style vector: cell sizes not "
                    "estimated, images segmented at scale 1", type(model.net).__name__)
        scales = [1.0] * len(images)
    else:
        styles = image_styles(images, model, factors=[size.low_res] * len(images),
                              levels=size.levels, spread=size.spread, tile=size.tile,
                              precision=precision, normalize=normalize)
        zooms = _group_medians(size.zooms(styles), groups)
        scales = [size.scale(z) for z in zooms]
        for i, (z, f) in enumerate(zip(zooms, scales)):
            log.info("image %d: estimated zoom %.2f of the training cells -> scale %.3g "
                     "(diameter %.1f px)", i, z, f, size.diameter / f)
    diameters = [None if size is None else size.diameter / f for f in scales]
    return scales, diameters


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
                        _check_scales(1.0 if scales is None else scales, len(maps)))
    return [_result(lab, m, class_names, p, return_maps)
            for lab, m, p in zip(decisions.labels, maps, decisions.pixel_probs)]


# ----------------------------------------------------------------------------- entry point
def warn_dropped_tuning(config: SegmentConfig, model: Model) -> None:
    """Log a warning when ``config`` loses the model's tuned per-type values, changes a global
    value that some cell types do not use (they have their own in ``per_class``), or names
    cell types the model does not have."""
    tuned = model.segment_config
    if config is tuned:
        return
    if tuned.per_class and not config.per_class:
        log.warning("config has no per-cell-type values: the model's tuned ones (%s) are not "
                    "used; to change a few values and keep the rest, pass "
                    "model.segment_config.override(...)", ", ".join(sorted(tuned.per_class)))
    for name in CLASS_FIELDS:
        own = config.shadowed(name, model.class_names)
        if own and getattr(config, name) != getattr(tuned, name):
            log.warning("config.%s = %s is not used for %s (their own %s in config.per_class); "
                        "set it for every type with config.override(%s=...)", name,
                        getattr(config, name), ", ".join(own), name, name)
    unknown = sorted(set(config.per_class) - set(model.class_names))
    if unknown:
        log.warning("config.per_class names cell types the model does not have: %s (its "
                    "types: %s)", ", ".join(unknown), ", ".join(model.class_names))


def segment(images: Sequence[np.ndarray], model: Model, *, batch_size: int = 8,
            config: SegmentConfig | None = None, tile: int | None = DEFAULT_TILE,
            tta: bool = False, scale: float | Sequence[float] | None = None,
            diameter: float | None = None,
            return_maps: bool = False, precision: str = "auto",
            normalize: tuple[float, float] | None = NORMALIZE) -> list[SegmentResult]:
    """Segment images with a flowseg model.

    Parameters
    ----------
    images : sequence of (H, W) or (C, H, W) ndarrays
        Any sizes, any numeric dtype (each image is percentile-normalised).
    model : Model or list of Model
        From :func:`load_model` (a path or ``None`` is refused with a TypeError: load the model
        once, then call ``segment`` as often as needed). A list segments with the ensemble of
        the models (maps averaged; ``config=None`` takes the first model's thresholds: tune the
        ensemble for its own, ``flowseg-evaluate tune --model a.pt --model b.pt ...``).
    batch_size : int
        Network tiles (or whole images) per forward pass.
    config : SegmentConfig, optional
        Post-processing thresholds; ``None`` uses those stored with the model (tuned values).
        To change a few and keep the tuned rest: ``model.segment_config.override(min_size=30)``
        (a config that would drop or ignore the tuned values is used, with a warning).
    tile : int or None
        Network tile side in pixels, a positive multiple of the model's ``size_multiple`` (8
        for the default model; see :func:`check_tile`); larger images are tiled with overlap
        and blended. ``0`` or ``None`` runs each image whole (untiled).
    tta : bool
        Average the four flips of each tile (4x the network cost).
    scale : float or sequence of float, optional
        Resize factor (one, or one per image) applied to each image before the network (the
        network's maps are resized back, so labels always have the image's size). A network
        sees cells best at the size it was trained on: with cells twice that diameter, use
        0.5. ``min_size`` counts pixels as the network sees them (the model's tuned sizes are
        for cells at its training size): at scale ``s`` an instance needs ``min_size / s**2``
        of the image's pixels. ``niter`` stays in the image's pixels.
    diameter : float, optional
        Mean cell diameter in the images, in pixels: sets ``scale = model diameter / diameter``
        (cellpose's rule; the model's training diameter is ``model_size(model).diameter``).
        With neither ``scale`` nor ``diameter``, each image's cell size is estimated (one extra
        encoder pass at half resolution; :func:`choose_scales`) and images whose cells look
        more than 25 % larger or smaller than the training cells are resized; the choice is in
        ``SegmentResult.scale`` and ``.diameter``.
    return_maps : bool
        Keep the predicted flows and cell-probability logits in the results.
    precision : {"auto", "bf16", "fp32"}
        The network's arithmetic: ``"auto"`` is bf16 autocast on CUDA and on CPUs with native
        bf16 (AVX-512 BF16 / AMX, where it is 2-3x faster), float32 elsewhere; ``"fp32"``
        always float32 (see :func:`flowseg.device.resolve_precision`). Maps are float32 either
        way, and flow following is the same.
    normalize : (float, float) or None
        Percentiles of each image channel mapped to 0 and 1 before the network (default 1, 99,
        as in training; cellpose's ``norm_percentile``); None: pixel values as they are
        (cellpose's ``--no_norm``), for images already scaled to about [0, 1].

    Returns
    -------
    list of SegmentResult
        One per image, in order.
    """
    model = check_model(model)
    config = model.segment_config if config is None else config
    if not isinstance(config, SegmentConfig):
        raise TypeError(f"config: expected a SegmentConfig or None, got {type(config).__name__}")
    check_int("batch_size", batch_size, minimum=1)
    warn_dropped_tuning(config, model)
    images = _check_images(images, model.model_config.in_channels)
    if not images:
        return []
    # Normalised once here for both the size estimate and the network (each would redo it).
    images = [normalize_image(im, percentiles=normalize) for im in images]
    scales, diameters = choose_scales(images, model, scale=scale, diameter=diameter,
                                      precision=precision, normalize=None)
    maps = predict_maps(images, model, batch_size=batch_size, tile=tile, tta=tta, scale=scales,
                        precision=precision, normalize=None)
    results = segment_maps(maps, model.class_names, config=config, batch_size=batch_size,
                           return_maps=return_maps, scales=scales)
    return [dataclasses.replace(r, scale=f, diameter=d)
            for r, f, d in zip(results, scales, diameters)]
