"""Reading and writing images and label images (PNG via Pillow, TIF via tifffile).

Channel handling of :func:`read_image`:

* a single-channel file gives ``(H, W)``;
* a colour file (RGB PNG, or a TIF whose samples are the last axis, e.g. ``YXS``) gives
  ``(C, H, W)`` with the channel axis first; an alpha channel is dropped;
* a colour image whose channels are all equal (a gray image saved as RGB) gives ``(H, W)``;
* a TIF stored channel-first (``CYX``, as :func:`write_image` writes) stays ``(C, H, W)``;
* singleton axes are squeezed; anything with more than 3 axes is refused.

Pixel values are never rescaled: 8-bit stays uint8, 16-bit stays uint16.

Label images are ``(H, W)`` int32 in memory and written as uint16 TIF (uint32 past 65,535).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from flowseg.errors import InputError, one_line
from flowseg.io.atomic import atomic_path

__all__ = ["read_image", "read_image_stack", "read_labels", "write_image", "write_labels",
           "TIFF_SUFFIXES", "IMAGE_SUFFIXES"]

TIFF_SUFFIXES = (".tif", ".tiff")
#: File endings read as images (Pillow handles all but TIF).
IMAGE_SUFFIXES = TIFF_SUFFIXES + (".png", ".jpg", ".jpeg", ".bmp")

_PIL_MODES = {"I;16": np.uint16, "I;16B": np.uint16, "I;16L": np.uint16}


def _read_tiff(path: Path) -> np.ndarray:
    """Read a TIF as ``(H, W)`` or ``(C, H, W)`` (samples axis moved first)."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
    if data.ndim == 3 and axes.endswith("S"):
        data = np.moveaxis(data, -1, 0)
        if data.shape[0] in (2, 4):  # gray + alpha, RGBA: drop alpha
            data = data[:-1]
        data = _collapse_gray(data)
    return data


def _collapse_gray(colour: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` colour image whose channels are all equal -> ``(H, W)``; else unchanged."""
    if (colour == colour[:1]).all():
        return colour[0]
    return colour


def _pillow_array(path: Path) -> np.ndarray:
    """A PNG (or other Pillow format) as ``(H, W)`` or ``(H, W, S)``."""
    with Image.open(path) as im:
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        if im.mode in ("LA", "PA"):
            im = im.convert("L")
        if im.mode == "1":
            im = im.convert("L")
        data = np.asarray(im)
        if im.mode in _PIL_MODES:
            data = data.astype(_PIL_MODES[im.mode])
    return data


def _read_pillow(path: Path) -> np.ndarray:
    """Read a PNG (or other Pillow format) as ``(H, W)`` or ``(C, H, W)``."""
    data = _pillow_array(path)
    if data.ndim == 3:
        data = _collapse_gray(np.moveaxis(data[..., :3] if data.shape[-1] == 4 else data, -1, 0))
    return data


def _tiff_axes(path: Path) -> tuple[np.ndarray, str]:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        return series.asarray(), series.axes


def _pillow_axes(path: Path) -> tuple[np.ndarray, str]:
    data = _pillow_array(path)
    return data, "YXS" if data.ndim == 3 else "YX"


def _read_raw(path: str | os.PathLike, what: str, read=None):
    """Read any supported file into an array, InputError naming ``path`` on failure.

    ``read``: a pair of readers (TIF, Pillow) to use instead of the default ones.

    Any failure of the decoders counts: besides ``OSError`` and ``ValueError``, a damaged or
    truncated compressed file raises the codec's own exceptions (``zlib.error``, imagecodecs'
    ``DeflateError`` (a ``RuntimeError``), ``struct.error``, ``IndexError``, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    read_tiff, read_pillow = read or (lambda p: np.asarray(_read_tiff(p)), _read_pillow)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            return read_tiff(path)
        return read_pillow(path)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a decoder raises, the file is unreadable
        raise InputError(f"{what} {path}: cannot read it as an image (expected a readable "
                         f"{', '.join(IMAGE_SUFFIXES)} file; damaged or truncated?): "
                         f"{one_line(exc)}") from None


def _check_pixels(data: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Squeeze singleton axes and refuse empty, >3-D, non-numeric or non-finite images."""
    data = np.squeeze(data) if data.ndim > 2 else data
    if data.size == 0 or data.ndim < 2:
        raise InputError(f"{what} {path}: empty image (shape {data.shape})")
    if data.ndim > 3:
        raise InputError(f"{what} {path}: expected (H, W) or (C, H, W), got shape {data.shape}")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise InputError(f"{what} {path}: expected integer or float pixels, got {data.dtype}")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise InputError(f"{what} {path}: contains NaN or infinite values")
    return data


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (PNG 8/16-bit, TIF, JPEG, BMP) without rescaling.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    image : (H, W) or (C, H, W) ndarray
        Dtype of the file (uint8, uint16, float32, ...). See the module docstring for channels.

    Raises
    ------
    InputError
        Missing or unreadable file, empty image, more than 3 axes, NaN or infinite values.
    """
    return _check_pixels(_read_raw(path, "image"), Path(path), "image")


def read_image_stack(path: str | os.PathLike, *, channel_axis: int | None = None,
                     z_axis: int | None = None) -> tuple[np.ndarray, bool]:
    """Read an image file as ``(Z, C, H, W)``: planes, channels, rows, columns.

    Which axis is which comes from the file's metadata (TIF axes; ImageJ hyperstacks) or from
    ``channel_axis`` / ``z_axis`` (indices into the array as stored); see
    :func:`flowseg.io.axes.arrange_axes`. Pixel values are not rescaled.

    Parameters
    ----------
    path : path-like
    channel_axis, z_axis : int, optional

    Returns
    -------
    image : (Z, C, H, W) ndarray
    is_stack : bool
        The file holds several planes.

    Raises
    ------
    InputError
        Missing, unreadable or empty file, NaN or infinite values, axes that cannot be told
        apart (the message names the file).
    """
    from flowseg.io.axes import arrange_axes

    path = Path(path)
    data, axes = _read_raw(path, "image", read=(_tiff_axes, _pillow_axes))
    image, is_stack = arrange_axes(np.asarray(data), axes, channel_axis=channel_axis,
                                   z_axis=z_axis, name=f"image {path}")
    _check_pixels(image.reshape(-1, *image.shape[-2:]), path, "image")
    return (image.astype(np.uint8) if image.dtype == bool else image), is_stack


def _read_label_data(path: Path) -> np.ndarray:
    if path.name.lower().endswith(".npy"):
        from flowseg.io.cellpose import read_seg_labels

        return read_seg_labels(path)
    return _read_raw(path, "label image")


def read_labels(path: str | os.PathLike, *, allow_3d: bool = False) -> np.ndarray:
    """Read a label image (TIF, PNG or cellpose ``_seg.npy``): 0 = background, one positive
    id per instance.

    Parameters
    ----------
    path : path-like
    allow_3d : bool
        Also accept a ``(Z, H, W)`` label stack.

    Returns
    -------
    labels : (H, W) (or (Z, H, W)) ndarray of int32

    Raises
    ------
    InputError
        Missing or unreadable file, not 2-D (3-D), negative, fractional or too large
        (> 2**31 - 1) values.
    """
    path = Path(path)
    data = _check_pixels(_read_label_data(path), path, "label image")
    if data.ndim != 2 and not (allow_3d and data.ndim == 3):
        expected = "(H, W) or (Z, H, W)" if allow_3d else "a 2-D (H, W)"
        raise InputError(f"label image {path}: expected {expected} label image, got shape {data.shape}")
    if np.issubdtype(data.dtype, np.floating) and (data != np.round(data)).any():
        raise InputError(f"label image {path}: expected integer labels, got fractional values")
    if data.min() < 0 or data.max() > np.iinfo(np.int32).max:
        raise InputError(f"label image {path}: expected labels in [0, 2**31 - 1], "
                         f"got range [{data.min()}, {data.max()}]")
    return data.astype(np.int32)


def _check_tiff_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise ValueError(f"path must end in .tif or .tiff, got {path.name!r}")
    return path


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a label image as a TIF, uint16 (uint32 when the largest label exceeds 65,535).

    Parameters
    ----------
    path : path-like
        Ends in ``.tif`` or ``.tiff``. Written atomically.
    labels : (H, W) or (Z, H, W) array_like of int
        Non-negative labels (a stack is written with axes ``ZYX``).
    """
    path = _check_tiff_path(path)
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be (H, W) or (Z, H, W), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be non-negative, got minimum {labels.min()}")
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib", photometric="minisblack",
                         **({"metadata": {"axes": "ZYX"}} if labels.ndim == 3 else {}))


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an image as a TIF, keeping its dtype and values.

    Parameters
    ----------
    path : path-like
        Ends in ``.tif`` or ``.tiff``. Written atomically.
    image : (H, W) or (C, H, W) ndarray
        Stored channel-first (axes ``YX`` or ``CYX``), read back unchanged by :func:`read_image`.
    """
    path = _check_tiff_path(path)
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"image must be a non-empty (H, W) or (C, H, W) array, got shape {image.shape}")
    if image.dtype == bool:
        raise TypeError("image must be numeric, got bool")
    axes = "YX" if image.ndim == 2 else "CYX"
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, image, photometric="minisblack", compression="zlib",
                         metadata={"axes": axes})
