"""Write RGB pictures (overlays) and 16-bit label images as PNG, atomically."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from flowseg.io.atomic import atomic_path

__all__ = ["write_labels_png", "write_rgb_png"]


def write_rgb_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array to ``path`` as PNG (atomically)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb: expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG")


def write_labels_png(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write an (H, W) label image as a 16-bit grayscale PNG (atomically), as cellpose's
    ``--save_png`` does.

    Raises
    ------
    ValueError
        Not 2-D, negative labels, or more than 65,535 cells (a PNG holds 16 bits; the TIF
        masks hold any number).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected a 2-D (H, W) integer label image, got shape "
                         f"{labels.shape} {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max):
        raise ValueError(f"labels: a 16-bit PNG holds ids 0..65535, got "
                         f"{labels.min()}..{labels.max()}; use the TIF masks")
    with atomic_path(path) as tmp:
        Image.fromarray(labels.astype(np.uint16)).save(tmp, format="PNG")
