"""Resizing images and label images together (cell-size normalisation).

A network sees cells at one scale best. ``data_prep --scale`` resizes a whole data set
(:func:`rescale_pair`) so its cells match the size of another's, and
``flowseg.segment(scale=...)`` resizes images on the way into the network and the network's
maps back (:func:`resize_stack`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from skimage.transform import resize

__all__ = ["check_scale", "check_scales", "rescale_image", "rescale_pair", "resize_stack", "scaled_shape"]


def check_scale(scale: float, name: str = "scale") -> float:
    """Return ``scale`` as a float; raise ValueError unless it is finite and in (0, 10]."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {scale!r}") from None
    if not (np.isfinite(value) and 0 < value <= 10):
        raise ValueError(f"{name}: expected a resize factor in (0, 10], got {scale!r}")
    return value


def check_scales(scale: float | Sequence[float], n: int) -> list[float]:
    """One checked resize factor per image from one factor or a sequence of ``n``."""
    if isinstance(scale, (list, tuple, np.ndarray)):
        if len(scale) != n:
            raise ValueError(f"scale: expected one factor or one per image ({n}), got {len(scale)}")
        return [check_scale(s, f"scale[{i}]") for i, s in enumerate(scale)]
    return [check_scale(scale)] * n


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(round(H * scale), round(W * scale))``, at least 1 pixel each way."""
    return tuple(max(1, round(n * scale)) for n in shape)  # type: ignore[return-value]


def rescale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """Resize an image by ``scale``: linear, anti-aliased (Gaussian) when shrinking, as most
    tools shrink images.

    Parameters
    ----------
    image : (H, W) or (C, H, W) ndarray, any numeric dtype
    scale : float
        Output side = ``round(side * scale)``.

    Returns
    -------
    image : (h, w) or (C, h, w) ndarray, the input dtype (integers rounded and clipped to it)
    """
    scale = check_scale(scale)
    if scale == 1.0:
        return image
    out_shape = image.shape[:-2] + scaled_shape(image.shape[-2:], scale)  # channels never blended
    smooth = resize(image.astype(np.float32), out_shape, order=1, mode="reflect",
                    anti_aliasing=scale < 1, preserve_range=True)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        smooth = np.clip(np.rint(smooth), info.min, info.max)
    return smooth.astype(image.dtype)


def rescale_pair(image: np.ndarray, labels: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image (:func:`rescale_image`) and its labels (nearest) by ``scale``.

    Parameters
    ----------
    image : (H, W) or (C, H, W) ndarray, any numeric dtype
    labels : (H, W) ndarray of int
    scale : float
        Output side = ``round(side * scale)``.

    Returns
    -------
    image : (h, w) or (C, h, w) ndarray, the input dtype (integers rounded and clipped to it)
    labels : (h, w) ndarray, the input dtype
        Instances too small to keep any pixel disappear; ids are not renumbered.
    """
    scale = check_scale(scale)
    if labels.shape != image.shape[-2:]:
        raise ValueError(f"labels: expected shape {image.shape[-2:]} (the image's height and "
                         f"width), got {labels.shape}")
    if scale == 1.0:
        return image, labels
    new_labels = resize(labels, scaled_shape(labels.shape, scale), order=0, mode="edge",
                        anti_aliasing=False, preserve_range=True)
    return rescale_image(image, scale), new_labels.astype(labels.dtype)


def resize_stack(maps: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of stacked per-pixel maps ``(C, h, w)`` -> ``(C, *shape)`` float32
    (anti-aliased when shrinking). Unit flow vectors stay unit-scale: only their grid changes."""
    if tuple(maps.shape[-2:]) == tuple(shape):
        return maps
    shrink = shape[0] < maps.shape[-2] or shape[1] < maps.shape[-1]
    return F.interpolate(maps[None].float(), size=tuple(shape), mode="bilinear",
                         align_corners=False, antialias=shrink)[0]
