"""cellpose's own files: ``_seg.npy`` (GUI), ``_cp_outlines.txt`` (ImageJ text), ``_flows.tif``.

The reference is cellpose 3.1's code (``cellpose.io.masks_flows_to_seg``, ``outlines_to_text``,
``cellpose.dynamics.labels_to_flows``); the files written here load in cellpose's GUI, with
``cellpose.io.imread`` and in cellpose training (``--mask_filter _seg.npy``).

``<name>_seg.npy`` is a pickled dict (``np.save`` of a dict, as cellpose writes it):

=============== ================================================================================
``masks``       (H, W) or (Z, H, W) uint16 labels (uint32 past 65,534 cells)
``outlines``    the same shape: boundary pixels of each cell carry its id
``flows``       cellpose's list of five: RGB flow picture (Z or 1, H, W, 3) uint8, cell
                probability (Z or 1, H, W) uint8, a third picture (uint8: empty for an
                image, dz = 0 for a stack), ``[]``, and float32 ``(3, H, W)`` = (dy, dx) in
                cellpose's units (5x unit flows) and the cell-probability logit, from which
                the GUI recomputes masks (``(4, Z, H, W)`` with dz = 0 first for a stack)
``filename``    the image file (the GUI opens it from there, or beside the ``_seg.npy``)
``diameter``    median cell diameter in pixels (cellpose's ``utils.diameters``)
``chan_choose`` cellpose's ``[chan, chan2]``: the channel that was segmented (0 = gray)
``ismanual``    (N,) bool, all False (no cell drawn by hand yet)
=============== ================================================================================

plus flowseg's ``cell_types`` (list of N str), ``scores`` ((N,) float32), ``class_names`` and
``model_path``; cellpose ignores them.

:func:`read_seg_labels` reads the masks of a ``_seg.npy`` written by cellpose's GUI or by
flowseg without running arbitrary pickled code: only numpy arrays, dtypes and plain Python
containers are unpickled.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from flowseg.errors import InputError, one_line
from flowseg.io.atomic import atomic_path
from flowseg.outlines import outline_image, outline_polygons
from flowseg.visualize import flows_to_rgb

__all__ = ["CELLPOSE_FLOW_SCALE", "SEG_SUFFIX", "median_diameter", "outlines_text",
           "read_seg_labels", "seg_dict", "write_flows_tif", "write_outlines_text",
           "write_seg_npy"]

#: cellpose's networks predict flows 5x the unit flows (``veci = 5. * lbl[:, 1:]`` in training).
CELLPOSE_FLOW_SCALE = 5.0
#: File ending of cellpose's GUI files.
SEG_SUFFIX = "_seg.npy"


def median_diameter(labels: np.ndarray) -> float:
    """cellpose's diameter of a label image: ``median(sqrt(area)) / (sqrt(pi) / 2)``, 0 without
    cells (areas per plane for a stack)."""
    labels = np.asarray(labels)
    planes = labels.reshape(-1, *labels.shape[-2:])
    areas = np.concatenate([np.bincount(p.ravel())[1:] for p in planes])
    areas = areas[areas > 0]
    return float(np.median(np.sqrt(areas)) / (np.pi ** 0.5 / 2)) if areas.size else 0.0


def _label_dtype(labels: np.ndarray) -> type:
    return np.uint16 if int(labels.max(initial=0)) < 2 ** 16 - 1 else np.uint32


def _uint8_percentiles(values: np.ndarray) -> np.ndarray:
    """cellpose's ``normalize99`` then ``* 255`` as uint8."""
    lo, hi = np.percentile(values, [1, 99])
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _seg_flows(flows: np.ndarray | None, cellprob: np.ndarray | None, shape: tuple) -> list:
    """cellpose's five-item ``flows`` list for (2, H, W) / (Z, 2, H, W) unit flows."""
    if flows is None or cellprob is None:
        return [[], [], [], [], []]
    flows = np.asarray(flows, np.float32).reshape(-1, 2, *shape[-2:])   # (Z, 2, H, W)
    cellprob = np.asarray(cellprob, np.float32).reshape(-1, *shape[-2:])  # (Z, H, W)
    dp = np.moveaxis(flows, 1, 0) * CELLPOSE_FLOW_SCALE                   # (2, Z, H, W)
    rgb = np.stack([flows_to_rgb(f) for f in flows])
    if len(shape) == 2:  # as cellpose writes a 2-D image: the third map is an empty picture
        third = np.zeros((1, *shape, 3), np.uint8)
        maps = np.concatenate([dp, cellprob[None]])[:, 0]
    else:  # a stack: cellpose's dz picture and (dz, dy, dx, cellprob); planes have no dz
        third = np.full(shape, 127, np.uint8)
        maps = np.concatenate([np.zeros_like(dp[:1]), dp, cellprob[None]])
    return [rgb, _uint8_percentiles(cellprob), third, [], maps.astype(np.float32)]


def seg_dict(result: Any, *, filename: str | os.PathLike, channels: Sequence[int] = (0, 0),
             model_path: str = "") -> dict[str, Any]:
    """The ``_seg.npy`` dict of a result (see the module docstring).

    Parameters
    ----------
    result : SegmentResult or StackResult
        Its ``labels`` ((H, W) or (Z, H, W)), ``cell_types``, ``scores``, ``class_names`` and,
        when kept (``return_maps=True``), ``flows`` ((2, H, W) or (Z, 2, H, W)) and
        ``cellprob`` ((H, W) or (Z, H, W)); without them ``flows`` holds empty lists.
    filename : path-like
        The image file.
    channels : (int, int)
        cellpose's ``chan_choose``.
    model_path : str
        The model used ("" for the shipped default).

    Returns
    -------
    dict
    """
    labels = np.asarray(result.labels)
    dtype = _label_dtype(labels)
    return {
        "masks": labels.astype(dtype), "outlines": outline_image(labels).astype(dtype),
        "flows": _seg_flows(result.flows, result.cellprob, labels.shape),
        "filename": str(filename), "diameter": median_diameter(labels),
        "chan_choose": [int(c) for c in channels],
        "ismanual": np.zeros(int(labels.max(initial=0)), bool),
        "cell_types": list(result.cell_types), "scores": np.asarray(result.scores, np.float32),
        "class_names": list(result.class_names), "model_path": str(model_path),
    }


def write_seg_npy(path: str | os.PathLike, result: Any, *, filename: str | os.PathLike,
                  channels: Sequence[int] = (0, 0), model_path: str = "") -> None:
    """Write ``result`` as a cellpose ``_seg.npy`` file (atomically); arguments as in
    :func:`seg_dict`. ``path`` should end in ``_seg.npy`` for cellpose to find it."""
    data = seg_dict(result, filename=filename, channels=channels, model_path=model_path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, data, allow_pickle=True)


# ----------------------------------------------------------------------------- reading
_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
            ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, scalars and plain containers, nothing that runs other code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _read_seg_dict(path: Path) -> dict:
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, _, dtype = read_header(handle)
        if dtype != object or shape != ():
            raise ValueError(f"expected a pickled dict (as cellpose saves), got a {dtype} "
                             f"array of shape {shape}")
        data = _ArrayUnpickler(handle, encoding="latin1").load()
    data = data.item() if isinstance(data, np.ndarray) else data
    if not isinstance(data, dict) or "masks" not in data:
        raise ValueError("expected a dict with the key 'masks'")
    return data


def read_seg_labels(path: str | os.PathLike) -> np.ndarray:
    """The masks of a cellpose ``_seg.npy`` file (from cellpose's GUI or flowseg).

    Parameters
    ----------
    path : path-like

    Returns
    -------
    labels : (H, W) or (Z, H, W) ndarray of int
        As stored (check them with :func:`flowseg.io.images.read_labels`, which calls this).

    Raises
    ------
    InputError
        Missing or unreadable file, not a pickled dict with ``masks``, or a pickle that would
        run code (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"label file {path}: no such file")
    try:
        masks = np.asarray(_read_seg_dict(path)["masks"])
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a bad file
        raise InputError(f"label file {path}: cannot read it as a cellpose _seg.npy file: "
                         f"{one_line(exc)}") from None
    if masks.dtype == object or not np.issubdtype(masks.dtype, np.number):
        raise InputError(f"label file {path}: 'masks' must be an integer array, got {masks.dtype}")
    return masks


# ----------------------------------------------------------------------------- text and TIF
def outlines_text(labels: np.ndarray) -> str:
    """cellpose's ``_cp_outlines.txt``: one line ``x1,y1,x2,y2,...`` per cell with an outline.

    Parameters
    ----------
    labels : (H, W) ndarray of int
    """
    return "".join(",".join(map(str, xy.ravel().tolist())) + "\n"
                   for xy in outline_polygons(labels) if len(xy))


def write_outlines_text(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write :func:`outlines_text` of ``labels`` to ``path`` (atomically)."""
    text = outlines_text(labels)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="ascii")


def write_flows_tif(path: str | os.PathLike, result: Any) -> None:
    """Write labels, cell probability and flows as cellpose's ``_flows.tif`` (atomically).

    The layout is cellpose's training flows (``labels_to_flows``): float32 ``(4, H, W)`` =
    labels, cell probability (0-1, the sigmoid of the predicted logit), dy, dx (unit flows);
    ``(Z, 4, H, W)`` for a stack.

    Parameters
    ----------
    path : path-like
        Ends in ``.tif``.
    result : SegmentResult or StackResult
        With ``flows`` and ``cellprob`` (``return_maps=True``).
    """
    if result.flows is None or result.cellprob is None:
        raise ValueError("result: has no flows (segment with return_maps=True)")
    labels = np.asarray(result.labels, np.float32)
    prob = 1.0 / (1.0 + np.exp(-np.asarray(result.cellprob, np.float32)))
    flows = np.asarray(result.flows, np.float32)
    stack = np.concatenate([labels[..., None, :, :], prob[..., None, :, :], flows], axis=-3)
    axes = "CYX" if stack.ndim == 3 else "ZCYX"
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, stack.astype(np.float32), photometric="minisblack",
                         compression="zlib", metadata={"axes": axes})
