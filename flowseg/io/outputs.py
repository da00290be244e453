"""The optional per-image outputs of ``flowseg-segment`` (``--save-*``), in cellpose's formats.

============ ===================== =======================================================
kind         file                  what
============ ===================== =======================================================
``seg``      ``<name>_seg.npy``    cellpose GUI file (:mod:`flowseg.io.cellpose`)
``rois``     ``<name>_rois.zip``   ImageJ / Fiji ROI set (:mod:`flowseg.io.imagej`)
``outlines`` ``<name>_cp_outlines.txt`` cellpose's outlines text, one cell per line
``png``      ``<name>_cp_masks.png`` 16-bit PNG labels (cellpose's ``--save_png`` name)
``flows``    ``<name>_flows.tif``  labels, cell probability, dy, dx (cellpose's layout)
``coco``     ``<name>_coco.json``  COCO json with scores (:func:`flowseg.io.coco.coco_results`)
============ ===================== =======================================================

``outlines``, ``png`` and ``coco`` hold 2-D images only (as cellpose's): for a z-stack they
are not written (:func:`applicable_outputs`); ``seg``, ``rois`` (one ROI per cell and plane)
and ``flows`` hold stacks too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MAP_OUTPUTS", "OUTPUT_KINDS", "OUTPUT_SUFFIXES", "PLANAR_OUTPUTS",
           "applicable_outputs", "check_outputs", "output_path", "write_outputs"]

#: File ending of each output kind.
OUTPUT_SUFFIXES = {"seg": "_seg.npy", "rois": "_rois.zip", "outlines": "_cp_outlines.txt",
                   "png": "_cp_masks.png", "flows": "_flows.tif", "coco": "_coco.json"}
OUTPUT_KINDS = tuple(OUTPUT_SUFFIXES)
#: Kinds that hold a 2-D image only.
PLANAR_OUTPUTS = ("outlines", "png", "coco")
#: Kinds that need the predicted flows and cell probability (``return_maps=True``).
MAP_OUTPUTS = ("seg", "flows")


def check_outputs(kinds: Iterable[str]) -> tuple[str, ...]:
    """``kinds`` as a sorted tuple without repeats; ValueError naming an unknown kind."""
    if isinstance(kinds, str):
        raise TypeError(f"save: expected a sequence of output kinds, got the string {kinds!r}")
    kinds = tuple(sorted(set(kinds)))
    unknown = [k for k in kinds if k not in OUTPUT_SUFFIXES]
    if unknown:
        raise ValueError(f"save: unknown output kind(s) {unknown}; expected some of {OUTPUT_KINDS}")
    return kinds


def applicable_outputs(kinds: Sequence[str], *, is_stack: bool) -> tuple[str, ...]:
    """The kinds of ``kinds`` that an image (a stack when ``is_stack``) gets."""
    return tuple(k for k in kinds if not (is_stack and k in PLANAR_OUTPUTS))


def output_path(out_dir: str | os.PathLike, name: str, kind: str) -> Path:
    """``out_dir/<name><suffix of kind>``."""
    return Path(out_dir) / f"{name}{OUTPUT_SUFFIXES[kind]}"


def write_outputs(out_dir: str | os.PathLike, name: str, result: Any, *, kinds: Sequence[str],
                  source: str | os.PathLike, channels: Sequence[int] = (0, 0),
                  model_path: str = "") -> list[Path]:
    """Write the outputs ``kinds`` of one result into ``out_dir`` (each atomically).

    Parameters
    ----------
    out_dir : path-like
    name : str
        File stem of the outputs.
    result : SegmentResult or StackResult
        With flows (``return_maps=True``) when ``kinds`` has ``seg`` or ``flows``.
    kinds : sequence of str
        Of :data:`OUTPUT_KINDS`; the 2-D-only ones are skipped for a stack.
    source : path-like
        The image file (named in ``_seg.npy`` and the COCO json).
    channels : (int, int)
        cellpose's ``chan_choose`` for ``_seg.npy``.
    model_path : str
        Recorded in ``_seg.npy``.

    Returns
    -------
    list of Path
        The files written.
    """
    from flowseg.io.cellpose import write_flows_tif, write_outlines_text, write_seg_npy
    from flowseg.io.coco import write_coco_results
    from flowseg.io.imagej import write_rois
    from flowseg.io.png import write_labels_png

    written = []
    for kind in applicable_outputs(check_outputs(kinds), is_stack=result.labels.ndim == 3):
        path = output_path(out_dir, name, kind)
        if kind == "seg":
            write_seg_npy(path, result, filename=source, channels=channels, model_path=model_path)
        elif kind == "rois":
            write_rois(path, result.labels)
        elif kind == "outlines":
            write_outlines_text(path, result.labels)
        elif kind == "png":
            write_labels_png(path, result.labels)
        elif kind == "flows":
            write_flows_tif(path, result)
        else:
            write_coco_results(path, result, file_name=Path(source).name)
        written.append(path)
    return written
