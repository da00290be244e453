"""Pictures of results: instance outlines over the image, coloured by cell type (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.segmentation import find_boundaries

__all__ = ["CLASS_COLORS", "flows_to_rgb", "overlay_outlines", "to_display_gray"]

#: RGB colours for class indices 0, 1, 2, ... (cycled past the end).
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64), (64, 200, 255), (255, 210, 0), (80, 255, 80), (255, 64, 255), (255, 140, 0))


def to_display_gray(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 view of an (H, W) or (C, H, W) image, stretched between its 1st and 99th percentiles."""
    gray = image if image.ndim == 2 else image.mean(axis=0)
    gray = np.nan_to_num(gray.astype(np.float32))
    lo, hi = np.percentile(gray, [1, 99])
    scaled = (gray - lo) / (hi - lo) if hi > lo else np.zeros_like(gray)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def overlay_outlines(image: np.ndarray, labels: np.ndarray, instance_classes: Sequence[int]) -> np.ndarray:
    """Outline each instance over the image in its class colour.

    Parameters
    ----------
    image : (H, W) or (C, H, W) ndarray
        The image (any dtype).
    labels : (H, W) ndarray of int
        0 = background, 1..N instances.
    instance_classes : sequence of int, length N
        Class index of instance ``i + 1``.

    Returns
    -------
    (H, W, 3) ndarray of uint8
    """
    if labels.shape != image.shape[-2:]:
        raise ValueError(f"labels: expected shape {image.shape[-2:]} (the image's), got {labels.shape}")
    n = int(labels.max(initial=0))
    if len(instance_classes) != n:
        raise ValueError(f"instance_classes: expected {n} entries (one per instance), got {len(instance_classes)}")
    rgb = np.repeat(to_display_gray(image)[..., None], 3, axis=2)
    palette = np.array(CLASS_COLORS, dtype=np.uint8)
    lut = np.zeros((n + 1, 3), dtype=np.uint8)
    if n:
        lut[1:] = palette[np.asarray(instance_classes, dtype=np.int64) % len(palette)]
    edges = find_boundaries(labels, mode="inner")
    rgb[edges] = lut[labels[edges]]
    return rgb


def flows_to_rgb(flows: np.ndarray) -> np.ndarray:
    """Colour picture of flows: hue = direction, brightness = length (cellpose's ``dx_to_circ``).

    Parameters
    ----------
    flows : (2, H, W) ndarray of float
        (dy, dx).

    Returns
    -------
    (H, W, 3) ndarray of uint8
        The length is stretched between its 1st and 99th percentiles.
    """
    flows = np.asarray(flows, dtype=np.float32)
    if flows.ndim != 3 or flows.shape[0] != 2:
        raise ValueError(f"flows: expected shape (2, H, W), got {flows.shape}")
    length = np.sqrt((flows ** 2).sum(axis=0))
    lo, hi = np.percentile(length, [1, 99])
    magnitude = 255 * np.clip((length - lo) / (hi - lo) if hi > lo else 0 * length, 0, 1) / 2
    angle = np.arctan2(flows[1], flows[0]) + np.pi
    phases = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    rgb = magnitude[..., None] * (np.cos(angle[..., None] + phases) + 1)
    return np.clip(rgb, 0, 255).astype(np.uint8)
