"""Per-channel percentile normalisation of microscopy images (shared by training and segment)."""

from __future__ import annotations

import numpy as np

__all__ = ["normalize_image", "LOWER_PERCENTILE", "UPPER_PERCENTILE"]

#: Percentiles mapped to 0 and 1.
LOWER_PERCENTILE = 1.0
UPPER_PERCENTILE = 99.0


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image: expected a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"image: expected a non-empty array of shape (H, W) or (C, H, W), "
                         f"got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) or \
            np.issubdtype(image.dtype, np.complexfloating):
        raise TypeError(f"image: expected an integer or float dtype, got {image.dtype}")
    if np.issubdtype(image.dtype, np.floating):
        bad = ~np.isfinite(image)
        if bad.any():
            kinds = sorted({"NaN" if np.isnan(v) else "inf" for v in image[bad][:1000]})
            raise ValueError(f"image: expected finite values, found {int(bad.sum())} "
                             f"{'/'.join(kinds)} pixel(s)")
    return image


def _normalize_channel(channel: np.ndarray) -> np.ndarray:
    """Map the 1st..99th percentile to 0..1; falls back to min..max; a constant channel -> 0."""
    lo, hi = np.percentile(channel, [LOWER_PERCENTILE, UPPER_PERCENTILE])
    if hi <= lo:
        lo, hi = channel.min(), channel.max()
    if hi <= lo:
        return np.zeros(channel.shape, np.float32)
    return ((channel - lo) / (hi - lo)).astype(np.float32)


def normalize_image(image: np.ndarray) -> np.ndarray:
    """Normalise each channel so its 1st percentile maps to 0 and its 99th to 1.

    Parameters
    ----------
    image : (H, W) or (C, H, W) ndarray of any integer, bool or float dtype
        A 2-D image is one channel; a 3-D image always has the channel axis first.

    Returns
    -------
    (C, H, W) ndarray of float32
        Roughly within [0, 1] (values beyond the percentiles extend past it). A channel whose
        1st and 99th percentiles are equal uses its min and max instead; a constant channel
        becomes zeros.

    Raises
    ------
    ValueError
        Wrong number of dimensions, or NaN / infinite values.
    TypeError
        Not a numpy array, or a non-numeric dtype.
    """
    image = _check_image(image)
    image = image[None] if image.ndim == 2 else image
    data = image.astype(np.float64 if image.dtype.itemsize > 4 else np.float32, copy=False)
    return np.stack([_normalize_channel(c) for c in data])
