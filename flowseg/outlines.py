"""Instance outlines as cellpose writes them (pure, no I/O).

Two forms, both cellpose's:

* :func:`outline_image` - the ``outlines`` of a ``_seg.npy`` file: the pixels of each
  instance's polygon (below) carry its id, every other pixel is 0;
* :func:`outline_polygons` - one ordered polygon per instance, the centres of its boundary
  pixels as integer ``(x, y)`` points, traced around the outside of the instance (its largest
  contour; holes are not traced): what ``cellpose.utils.outlines_list`` gives, and what
  cellpose writes into ``_cp_outlines.txt`` and ImageJ ROI zips.

cellpose traces with OpenCV; here the 0.5 iso-contour of each instance's mask
(:func:`skimage.measure.find_contours`, foreground 8-connected as in OpenCV) is walked and each
contour vertex, which lies half-way between a pixel of the instance and one outside, gives
the inside pixel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import find_contours

__all__ = ["outline_image", "outline_polygons"]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected a 2-D (H, W) integer label image, got shape "
                         f"{labels.shape} {labels.dtype}")
    return labels


def outline_image(labels: np.ndarray) -> np.ndarray:
    """Each instance's traced boundary pixels labelled with its id (cellpose's ``outlines``).

    Parameters
    ----------
    labels : (H, W) or (Z, H, W) ndarray of int
        0 = background; a stack is outlined plane by plane.

    Returns
    -------
    outlines : ndarray of int32, the shape of ``labels``
        The pixels of :func:`outline_polygons` carry their instance's id.
    """
    labels = np.asarray(labels)
    if labels.ndim == 3:
        return np.stack([outline_image(plane) for plane in labels])
    labels = _check_labels(labels)
    out = np.zeros(labels.shape, np.int32)
    for k, xy in enumerate(outline_polygons(labels), start=1):
        out[xy[:, 1], xy[:, 0]] = k
    return out


def _polygon(mask: np.ndarray) -> np.ndarray:
    """Ordered boundary pixels ``(row, col)`` of the largest contour of a padded binary mask."""
    contours = find_contours(mask.astype(np.float32), 0.5, fully_connected="high")
    if not contours:
        return np.zeros((0, 2), np.int64)
    vertices = max(contours, key=len)
    low, high = np.floor(vertices).astype(np.int64), np.ceil(vertices).astype(np.int64)
    inside = mask[low[:, 0], low[:, 1]]
    pixels = np.where(inside[:, None], low, high)
    keep = np.any(pixels != np.roll(pixels, 1, axis=0), axis=1)
    keep[0] = True if len(pixels) == 1 else keep[0]
    return pixels[keep]


def outline_polygons(labels: np.ndarray) -> list[np.ndarray]:
    """One polygon per instance: its outer boundary pixels in order, as ``(x, y)``.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 = background, ids 1..N (missing ids get an empty polygon).

    Returns
    -------
    list of (K, 2) ndarray of int64, length N
        ``polygons[i]`` belongs to id ``i + 1``; column 0 is x (image column), column 1 is y
        (image row), as in cellpose and ImageJ.
    """
    labels = _check_labels(labels)
    polygons = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            polygons.append(np.zeros((0, 2), np.int64))
            continue
        mask = np.pad(labels[box] == k, 1)
        rows_cols = _polygon(mask) - 1 + np.array([box[0].start, box[1].start])
        polygons.append(rows_cols[:, ::-1].copy())
    return polygons
