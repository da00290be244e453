"""ImageJ / Fiji ROI sets (``<name>_rois.zip``), written with ``roifile``.

One freehand (polygon) ROI per cell, as cellpose's ``save_rois`` writes them: the outer boundary
pixels of the cell in order (:func:`flowseg.outlines.outline_polygons`). Each ROI is named after its
cell's id (``0001``, ...) so that ROI and label image match; for a z-stack there is one ROI
per cell and plane, named ``<plane>-<id>`` (``0002-0007``) and carrying its plane
(``position``, 1-based, as ImageJ counts slices). Open the zip in Fiji's ROI
Manager (or drag it onto the image).
"""

from __future__ import annotations

import os

import numpy as np
from roifile import ImagejRoi, roiwrite

from flowseg.io.atomic import atomic_path
from flowseg.outlines import outline_polygons

__all__ = ["label_rois", "write_rois"]


def label_rois(labels: np.ndarray) -> list[ImagejRoi]:
    """One polygon ROI per cell of ``labels`` ((H, W), or (Z, H, W): one per cell and plane).

    Cells without an outline (none) are skipped. Returns the ROIs in id (then plane) order.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels: expected (H, W) or (Z, H, W), got shape {labels.shape}")
    planes = labels[None] if labels.ndim == 2 else labels
    width = max(4, len(str(int(labels.max(initial=0)))))
    rois = []
    for z, plane in enumerate(planes):
        for k, xy in enumerate(outline_polygons(plane), start=1):
            if not len(xy):
                continue
            if labels.ndim == 2:
                rois.append(ImagejRoi.frompoints(xy, name=f"{k:0{width}d}"))
            else:
                rois.append(ImagejRoi.frompoints(xy, name=f"{z + 1:04d}-{k:0{width}d}",
                                                 position=z))  # stored 1-based
    return rois


def write_rois(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write the cells of ``labels`` as an ImageJ ROI zip (atomically; see :func:`label_rois`)."""
    rois = label_rois(labels)
    with atomic_path(path) as tmp:
        roiwrite(tmp, rois, mode="w")
