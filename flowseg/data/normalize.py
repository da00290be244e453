"""Per-channel percentile normalisation of microscopy images (shared by training and segment)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["normalize_image", "normalize_images", "iter_normalized", "check_percentiles",
           "LOWER_PERCENTILE", "UPPER_PERCENTILE"]

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


def check_percentiles(percentiles: object) -> tuple[float, float] | None:
    """``percentiles`` as a pair ``(low, high)`` with ``0 <= low < high <= 100``, or None.

    Raises
    ------
    TypeError
        Not None and not a pair of numbers.
    ValueError
        Out of order or outside [0, 100].
    """
    if percentiles is None:
        return None
    if not isinstance(percentiles, (tuple, list)) or len(percentiles) != 2 or any(
            isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer))
            for v in percentiles):
        raise TypeError(f"normalize: expected None (no normalisation) or a pair of percentiles "
                        f"(low, high), e.g. (1, 99); got {percentiles!r}")
    low, high = float(percentiles[0]), float(percentiles[1])
    if not 0 <= low < high <= 100:
        raise ValueError(f"normalize: expected percentiles 0 <= low < high <= 100, got "
                         f"({low:g}, {high:g})")
    return low, high


def _normalize_channel(channel: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Map the low..high percentile to 0..1; falls back to min..max; a constant channel -> 0."""
    lo, hi = np.percentile(channel, list(percentiles))
    if hi <= lo:
        lo, hi = channel.min(), channel.max()
    if hi <= lo:
        return np.zeros(channel.shape, np.float32)
    return ((channel - lo) / (hi - lo)).astype(np.float32)


def normalize_image(image: np.ndarray, *,
                    percentiles: tuple[float, float] | None = (LOWER_PERCENTILE, UPPER_PERCENTILE)
                    ) -> np.ndarray:
    """Normalise each channel so its 1st percentile maps to 0 and its 99th to 1.

    Parameters
    ----------
    image : (H, W) or (C, H, W) ndarray of any integer, bool or float dtype
        A 2-D image is one channel; a 3-D image always has the channel axis first.
    percentiles : (float, float) or None
        The percentiles mapped to 0 and 1 (cellpose's ``norm_percentile``); None: no
        normalisation, the values are only cast to float32 (cellpose's ``--no_norm``).

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
    percentiles = check_percentiles(percentiles)
    image = image[None] if image.ndim == 2 else image
    if percentiles is None:
        return image.astype(np.float32)
    data = image.astype(np.float64 if image.dtype.itemsize > 4 else np.float32, copy=False)
    return np.stack([_normalize_channel(c, percentiles) for c in data])


def normalize_images(images: Sequence[np.ndarray], *,
                     percentiles: tuple[float, float] | None = (LOWER_PERCENTILE, UPPER_PERCENTILE)
                     ) -> list[np.ndarray]:
    """:func:`normalize_image` of each image; an error names the image by its index
    (``images[3]: expected finite values, found 12 NaN pixel(s)``).

    Returns
    -------
    list of (C, H, W) ndarray of float32
    """
    return list(iter_normalized(images, percentiles=percentiles))


def iter_normalized(images: Sequence[np.ndarray], *,
                    percentiles: tuple[float, float] | None = (LOWER_PERCENTILE, UPPER_PERCENTILE)
                    ) -> Iterator[np.ndarray]:
    """:func:`normalize_images` one image at a time (only the current copy is held)."""
    for i, image in enumerate(images):
        try:
            yield normalize_image(image, percentiles=percentiles)
        except (TypeError, ValueError) as error:
            message = str(error).removeprefix("image: ")
            raise type(error)(f"images[{i}]: {message}") from None
