"""COCO instance annotations (the LIVECell format) to label images, and results to COCO.

Reading: :func:`read_coco`. Writing: :func:`coco_results` / :func:`write_coco_results` turn
one segmentation into a COCO json (``images``, ``categories`` = the model's cell types,
``annotations`` with compressed-RLE masks encoded by ``pycocotools``, ``bbox``, ``area`` and
``score`` = the instance score): the ``annotations`` list is a COCO results file as
``pycocotools.COCO.loadRes`` and detection tools read it, and the whole file reads back with
:func:`read_coco` or ``pycocotools.COCO``.

Supported segmentations: polygons (``[[x1, y1, x2, y2, ...], ...]``, several parts per instance
are joined) and RLE (``{"size": [h, w], "counts": ...}``), with ``counts`` either an
uncompressed list of run lengths or the compressed COCO string; both RLE kinds are
**column-major** and start with a background run. The compressed-string decoder is written here
(no pycocotools).

Polygon coordinates follow COCO: pixel ``(row r, col c)`` covers ``[c, c + 1) x [r, r + 1)``, so
its centre is ``(c + 0.5, r + 0.5)``; a pixel is inside when its centre is inside the polygon.

Crowd annotations (``iscrowd = 1``) are regions, not instances, and are skipped. ``annotations``
may be a list (COCO) or a dict keyed by annotation id (LIVECell).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.draw import polygon as draw_polygon

from flowseg.errors import InputError
from flowseg.io.folders import UNKNOWN_CELL_TYPE
from flowseg.io.instances import paint_instances

__all__ = ["CocoImage", "coco_results", "coco_rle_string_to_counts", "read_coco",
           "segmentation_indices", "write_coco_results"]


@dataclass(frozen=True)
class CocoImage:
    """The annotations of one image of a COCO json.

    Attributes
    ----------
    id : int
    file_name : str
    shape : (int, int)
        ``(height, width)``.
    segmentations : tuple
        One COCO ``segmentation`` per instance (json objects), in file order.
    categories : tuple of str
        Category name of each instance.
    source : str
        What to name in error messages (json file and image id).
    """

    id: int
    file_name: str
    shape: tuple[int, int]
    segmentations: tuple
    categories: tuple[str, ...]
    source: str = "COCO json"

    @property
    def cell_type(self) -> str:
        """Most frequent category (ties: alphabetically first); ``"unknown"`` without instances."""
        if not self.categories:
            return UNKNOWN_CELL_TYPE
        counts = Counter(self.categories)
        return min(counts, key=lambda name: (-counts[name], name))

    def instance_indices(self) -> list[np.ndarray]:
        """Flat row-major pixel indices of each instance (overlaps kept)."""
        return [segmentation_indices(seg, self.shape, name=f"{self.source} instance {i + 1}")
                for i, seg in enumerate(self.segmentations)]

    def labels(self, *, fill_holes: bool = False) -> np.ndarray:
        """``(H, W)`` int32 label image, smallest instance on top (:mod:`flowseg.io.instances`)."""
        return paint_instances(self.instance_indices(), self.shape, fill_holes=fill_holes)


def coco_rle_string_to_counts(counts: str) -> np.ndarray:
    """Decode a compressed COCO RLE string into its run lengths.

    Each run length is stored as 5-bit groups in characters offset by 48, the 0x20 bit meaning
    "more groups follow" and the 0x10 bit of the last group the sign; from the fourth run on, the
    value is a difference to the run two places earlier.

    Returns
    -------
    counts : (R,) ndarray of int64
    """
    runs: list[int] = []
    codes = counts.encode("ascii")
    p = 0
    while p < len(codes):
        value, shift, more = 0, 0, True
        while more:
            if p >= len(codes):
                raise ValueError("truncated compressed RLE string")
            c = codes[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid character {chr(codes[p])!r} in compressed RLE string")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return np.array(runs, dtype=np.int64)


def _rle_indices(seg: dict, shape: tuple[int, int], name: str) -> np.ndarray:
    height, width = shape
    size = tuple(seg.get("size", ()))
    if size != (height, width):
        raise InputError(f"{name}: RLE size {list(size)} differs from the image's [height, width] "
                         f"[{height}, {width}]")
    raw = seg.get("counts")
    try:
        counts = coco_rle_string_to_counts(raw) if isinstance(raw, str) else np.asarray(raw, dtype=np.int64)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise InputError(f"{name}: bad RLE counts: {exc}") from None
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() != height * width:
        raise InputError(f"{name}: RLE counts must be non-negative run lengths summing to "
                         f"height * width = {height * width}, got sum {counts.sum()}")
    ends = np.cumsum(counts)
    starts, lengths = (ends - counts)[1::2], counts[1::2]  # odd runs are foreground
    flat = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    cols, rows = np.divmod(flat, height)  # column-major
    return np.sort(rows * width + cols)


def _polygon_indices(seg: list, shape: tuple[int, int], name: str) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for part in seg:
        xy = np.asarray(part, dtype=np.float64)
        if xy.ndim != 1 or xy.size < 6 or xy.size % 2 or not np.isfinite(xy).all():
            raise InputError(f"{name}: a polygon needs an even number (>= 6) of finite "
                             f"coordinates x1 y1 x2 y2 ..., got {xy.size}")
        rr, cc = draw_polygon(xy[1::2] - 0.5, xy[0::2] - 0.5, shape=shape)
        mask[rr, cc] = True
    return np.flatnonzero(mask.ravel())


def segmentation_indices(segmentation, shape: tuple[int, int], *, name: str = "segmentation") -> np.ndarray:
    """Flat row-major pixel indices of one COCO segmentation (polygons or RLE).

    Parameters
    ----------
    segmentation : list of list of float, or dict
    shape : (int, int)
        Image ``(height, width)``.
    name : str, optional
        For error messages.

    Returns
    -------
    indices : (K,) ndarray of int64, sorted
    """
    try:
        if isinstance(segmentation, dict):
            return _rle_indices(segmentation, shape, name)
        if isinstance(segmentation, list):
            return _polygon_indices(segmentation, shape, name)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{name}: malformed segmentation: {exc}") from None
    raise InputError(f"{name}: segmentation must be a polygon list or an RLE dict, "
                     f"got {type(segmentation).__name__}")


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise InputError(f"cannot read COCO json {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                         f"{exc.start}); expected a UTF-8 COCO json file") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or key not in data:
            raise InputError(f"{path}: missing key {key!r} (expected a COCO instances file)")
    return data


def read_coco(path: str | os.PathLike) -> list[CocoImage]:
    """Read a COCO instances json (LIVECell format) into one :class:`CocoImage` per image.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    images : list of CocoImage
        In the json's image order; segmentations are checked when decoded.

    Raises
    ------
    InputError
        Unreadable json, missing keys, an annotation of an unknown image or category.
    """
    path = Path(path)
    data = _load_json(path)
    categories = {c["id"]: str(c["name"]) for c in data["categories"]}
    annotations = data["annotations"]
    annotations = list(annotations.values()) if isinstance(annotations, dict) else annotations
    per_image: dict = {im["id"]: ([], []) for im in data["images"]}
    for ann in annotations:
        where = f"{path.name} annotation {ann.get('id')}"
        if ann.get("iscrowd", 0):
            continue
        if ann.get("image_id") not in per_image:
            raise InputError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in categories:
            raise InputError(f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'")
        segs, cats = per_image[ann["image_id"]]
        segs.append(ann.get("segmentation"))
        cats.append(categories[ann["category_id"]])
    images = []
    for im in data["images"]:
        segs, cats = per_image[im["id"]]
        try:
            shape = (int(im["height"]), int(im["width"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path.name} image {im.get('id')}: needs integer height and width") from None
        images.append(CocoImage(im["id"], str(im["file_name"]), shape, tuple(segs), tuple(cats),
                                source=f"{path.name} image {im['id']} ({im['file_name']})"))
    return images


def coco_results(result, *, file_name: str, image_id: int = 1) -> dict:
    """The COCO json of one 2-D segmentation (see the module docstring).

    Parameters
    ----------
    result : SegmentResult
        Its ``labels`` (H, W), ``cell_types``, ``scores`` and ``class_names``.
    file_name : str
        The image's file name, as COCO's ``images[0].file_name``.
    image_id : int

    Returns
    -------
    dict
        ``info``, ``images`` (one), ``categories`` (id = class index + 1, name = cell type) and
        ``annotations`` (one per cell, id = its label id).
    """
    from pycocotools import mask as coco_mask

    labels = np.asarray(result.labels)
    if labels.ndim != 2:
        raise ValueError(f"result.labels: COCO holds 2-D images, got shape {labels.shape}")
    category = {name: k + 1 for k, name in enumerate(result.class_names)}
    annotations = []
    for k, (cell_type, score) in enumerate(zip(result.cell_types, result.scores), start=1):
        rle = coco_mask.encode(np.asfortranarray(labels == k, dtype=np.uint8))
        annotations.append({
            "id": k, "image_id": image_id, "category_id": category[cell_type],
            "segmentation": {"size": [int(v) for v in rle["size"]],
                             "counts": rle["counts"].decode("ascii")},
            "area": int(coco_mask.area(rle)), "bbox": [float(v) for v in coco_mask.toBbox(rle)],
            "iscrowd": 0, "score": float(score)})
    return {"info": {"description": "flowseg segmentation"},
            "images": [{"id": image_id, "file_name": file_name, "height": labels.shape[0],
                        "width": labels.shape[1]}],
            "categories": [{"id": i, "name": n} for n, i in category.items()],
            "annotations": annotations}


def write_coco_results(path: str | os.PathLike, result, *, file_name: str,
                       image_id: int = 1) -> None:
    """Write :func:`coco_results` to ``path`` (atomically)."""
    from flowseg.io.atomic import atomic_path

    data = coco_results(result, file_name=file_name, image_id=image_id)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data), encoding="utf-8")
