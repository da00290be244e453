"""Write RGB pictures (overlays) as PNG, atomically."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from flowseg.io.atomic import atomic_path

__all__ = ["write_rgb_png"]


def write_rgb_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array to ``path`` as PNG (atomically)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb: expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG")
