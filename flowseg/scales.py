"""Choosing each image's resize factor before the network: given, from a cell diameter, or
estimated from the network's style vectors by the model's size model (:mod:`flowseg.size`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from flowseg.data.normalize import check_percentiles, iter_normalized
from flowseg.device import autocast, preferred_memory_format, resolve_precision
from flowseg.model.checkpoint import Model
from flowseg.predict import (NORMALIZE, PredictConfig, check_images, check_model, check_predict,
                             set_layout)
from flowseg.rescale import check_scale, check_scales, resize_stack, scaled_shape
from flowseg.size import SIZE_MODEL_KEY, SizeModel, scale_for_diameter
from flowseg.tiling import split_tiles, tile_grid

__all__ = ["choose_scales", "image_styles", "model_size"]

log = logging.getLogger(__name__)


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
    images = check_images(images, model.model_config.in_channels)
    factors = check_scales(list(factors), len(images))
    style = getattr(model.net, "level_styles", None)
    if style is None:
        raise ValueError(f"model: its network ({type(model.net).__name__}) gives no style "
                         "vector, so image sizes cannot be estimated (give scale or diameter)")
    normalize = check_percentiles(normalize)
    device = model.device
    dtype = resolve_precision(precision, device)
    set_layout(model, device, dtype)
    out = []
    model.net.eval()
    with torch.inference_mode():
        for image, factor in zip(iter_normalized(images, percentiles=normalize), factors):
            t = torch.from_numpy(image)
            t = resize_stack(t, scaled_shape(t.shape[-2:], factor))
            x = split_tiles(t, tile_grid(t.shape[-2:], tile=tile, overlap=0.0)) if tile else t[None]
            x = x.to(device).contiguous(memory_format=preferred_memory_format(device, dtype))
            with autocast(device, dtype):
                out.append(style(x, levels, spread).float().mean(dim=0).cpu().numpy())
    return np.stack(out) if out else np.zeros((0, 0), np.float32)


def choose_scales(images: Sequence[np.ndarray], model: Model, *,
                  scale: float | Sequence[float] | None = None,
                  diameter: float | None = None, predict: PredictConfig | None = None,
                  groups: Sequence[int] | None = None
                  ) -> tuple[list[float], list[float | None]]:
    """The resize factor of each image, and the cell diameter it corresponds to.

    ``scale`` given: that factor (one, or one per image). ``diameter`` given: ``model diameter
    / diameter``. Neither: the model's size model estimates each image's zoom (one encoder pass
    at ``low_res``, with ``predict``'s precision and normalisation; see :mod:`flowseg.size`); a
    model without one is run at scale 1.
    ``groups`` (one id per image): images with the same id, such as the planes of one z-stack,
    share one estimate, the median of their zooms, so that they are resized alike.

    Returns
    -------
    scales : list of float, one per image
    diameters : list of float or None
        ``model diameter / scale`` (None when the model records no diameter).
    """
    predict = check_predict(predict, caller="choose_scales")
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
        scales = check_scales(scale, len(images))
    elif size is None or not size.can_estimate or not images:
        scales = [1.0] * len(images)
    elif not hasattr(model.net, "level_styles"):
        log.warning("the model's network (%s) gives no style vector: cell sizes not "
                    "estimated, images segmented at scale 1", type(model.net).__name__)
        scales = [1.0] * len(images)
    else:
        styles = image_styles(images, model, factors=[size.low_res] * len(images),
                              levels=size.levels, spread=size.spread, tile=size.tile,
                              precision=predict.precision, normalize=predict.normalize)
        zooms = _group_medians(size.zooms(styles), groups)
        scales = [size.scale(z) for z in zooms]
        for i, (z, f) in enumerate(zip(zooms, scales)):
            log.info("image %d: estimated zoom %.2f of the training cells -> scale %.3g "
                     "(diameter %.1f px)", i, z, f, size.diameter / f)
    diameters = [None if size is None else size.diameter / f for f in scales]
    return scales, diameters
