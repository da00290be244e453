"""Cellpose-style training folders: images, ``_masks`` label images and a cell-type sidecar.

Layout of a folder ``DIR``::

    DIR/<name>.tif          image (also .tiff or .png), read with flowseg.io.images.read_image
    DIR/<name>_masks.tif    label image (also .tiff or .png), read with read_labels
    DIR/<name>_seg.npy      or cellpose's GUI file instead (its ``masks``; e.g. masks corrected
                            in the cellpose GUI, from flowseg-segment --save-seg or cellpose)
    DIR/cell_types.csv      optional sidecar, header ``name,cell_type``, one row per image
    DIR/<name>_ignore.tif   optional mask (uint8, 1 = ignore): pixels whose labels are not
                            known, e.g. where a teacher model was unsure (pseudo-labels,
                            flowseg-data-prep pseudo); training gives them no loss

Rules of :func:`list_folder`:

* every image needs its ``_masks`` (or ``_seg.npy``) file and every one of those its image
  (else InputError); when an image has both, the ``_seg.npy`` file is read: it is where
  cellpose's GUI saves corrections (beside the image it opened), and ``flowseg-segment
  --save-seg`` writes the same masks into both;
  with ``require_images=False`` a masks-only folder (ground truth or predictions) is accepted
  and items without an image get ``image_path=None``;
* files ending in ``_flows.<ext>`` and ``_cp_masks.<ext>`` (cellpose's flow and PNG mask
  outputs, also written by ``flowseg-segment --save-flows / --save-png``), hidden files and
  files that are not images are ignored; an ``_ignore`` file belongs to the item of its name
  (``FolderItem.ignore_path``) and is refused without that item;
* **without** ``cell_types.csv`` every item gets cell type ``"unknown"`` (plain Cellpose folders
  work); **with** it, the sidecar must list every image exactly once and nothing else
  (a missing, duplicate or extra name is an InputError).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowseg.errors import InputError
from flowseg.io.atomic import atomic_path
from flowseg.io.csvfile import open_csv
from flowseg.io.images import read_labels, write_image, write_labels

__all__ = ["CELL_TYPES_FILE", "FolderItem", "IGNORE_SUFFIX", "UNKNOWN_CELL_TYPE",
           "check_out_folder", "folder_cell_types", "list_folder", "list_masks", "read_cell_types",
           "read_ignore_mask", "write_cell_types", "write_folder_item"]

CELL_TYPES_FILE = "cell_types.csv"
UNKNOWN_CELL_TYPE = "unknown"
MASKS_SUFFIX = "_masks"
#: ``<name>_ignore.tif``: pixels of ``<name>`` that give no training loss (1) or do (0).
IGNORE_SUFFIX = "_ignore"
#: cellpose's GUI file, read as a masks file (:func:`flowseg.io.cellpose.read_seg_labels`).
SEG_SUFFIX = "_seg.npy"
_FOLDER_SUFFIXES = (".tif", ".tiff", ".png")
_IGNORED_STEM_ENDINGS = ("_flows", "_cp_masks")


@dataclass(frozen=True)
class FolderItem:
    """One image of a Cellpose-style folder.

    Attributes
    ----------
    name : str
        File stem of the image.
    image_path : Path or None
        None only from ``list_folder(..., require_images=False)`` when the image is absent.
    masks_path : Path
    cell_type : str
        From ``cell_types.csv``, or ``"unknown"`` when the folder has no sidecar.
    ignore_path : Path or None
        ``<name>_ignore.tif`` when the folder has one: pixels to leave out of training losses.
    """

    name: str
    image_path: Path | None
    masks_path: Path
    cell_type: str
    ignore_path: Path | None = None


def _scan(directory: Path) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path]]:
    """Map stems to image files, to ``_masks`` files and to ``_ignore`` files, refusing
    duplicate stems (a ``_seg.npy`` file wins over a ``_masks`` file of the same name)."""
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    seg: dict[str, Path] = {}
    ignore: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.name.endswith(SEG_SUFFIX):
            table, key = seg, path.name[: -len(SEG_SUFFIX)]
        elif path.suffix.lower() not in _FOLDER_SUFFIXES or path.stem.endswith(_IGNORED_STEM_ENDINGS):
            continue
        elif path.stem.endswith(MASKS_SUFFIX):
            table, key = masks, path.stem[: -len(MASKS_SUFFIX)]
        elif path.stem.endswith(IGNORE_SUFFIX):
            table, key = ignore, path.stem[: -len(IGNORE_SUFFIX)]
        else:
            table, key = images, path.stem
        if key in table:
            raise InputError(f"{directory}: two files for {key!r}: {table[key].name} and {path.name}")
        table[key] = path
    return images, {**masks, **seg}, ignore


def read_cell_types(path: str | os.PathLike) -> dict[str, str]:
    """Read a ``name,cell_type`` sidecar.

    Returns
    -------
    cell_types : dict of str to str
        In file order.

    Raises
    ------
    InputError
        Unreadable, empty or non-UTF-8 file, another header, an empty field or a name listed
        twice (the message names the file and the line).
    """
    path = Path(path)
    out: dict[str, str] = {}
    with open_csv(path) as reader:
        if reader.header[:2] != ["name", "cell_type"]:
            got = ",".join(reader.header) if reader.header else "an empty file"
            raise InputError(f"{path}: expected header 'name,cell_type', got {got!r}")
        for row in reader.records():
            name, cell_type = row["name"].strip(), row["cell_type"].strip()
            where = f"{path.name} line {reader.line_num}"
            if not name or not cell_type:
                raise InputError(f"{where}: empty name or cell_type")
            if name in out:
                raise InputError(f"{where}: name {name!r} listed twice")
            out[name] = cell_type
    return out


def check_out_folder(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is a folder or can be made one; creates nothing.

    Call it before the work, so that a run whose output cannot be written fails at once and
    leaves nothing behind.

    Parameters
    ----------
    path : path-like
        An output folder (created later, with its parents, when missing).
    what : str
        How messages name it (``"--out"``, ``"out_dir"``).

    Raises
    ------
    InputError
        ``path``, or the nearest of its parents that exists, is not a folder.
    """
    path = Path(path)
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                problem = ("exists and is not a folder" if existing == path else
                           f"cannot be created: {existing} is not a folder")
                raise InputError(f"{what} {path}: {problem}; expected an output folder (created "
                                 "when missing)")
            break
    return path


def _check_folder(directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such folder (expected a Cellpose-style image folder)")
    return directory


def folder_cell_types(directory: str | os.PathLike, names: Iterable[str]) -> dict[str, str]:
    """Cell type of each of ``names`` from ``directory/cell_types.csv``.

    Without the sidecar every name gets ``"unknown"``; with it, the sidecar must list exactly
    ``names`` (else InputError).

    Returns
    -------
    cell_types : dict of str to str
    """
    names = sorted(names)
    sidecar = Path(directory) / CELL_TYPES_FILE
    if not sidecar.exists():
        return dict.fromkeys(names, UNKNOWN_CELL_TYPE)
    cell_types = read_cell_types(sidecar)
    missing = sorted(set(names) - set(cell_types))
    extra = sorted(set(cell_types) - set(names))
    if missing or extra:
        raise InputError(f"{sidecar}: must list every image of the folder once; "
                         f"missing {missing[:5]}, not in folder {extra[:5]}")
    return {name: cell_types[name] for name in names}


def list_masks(directory: str | os.PathLike) -> dict[str, Path]:
    """Names (stems without ``_masks``) to ``_masks`` files of a folder, sorted; images optional.

    Raises
    ------
    InputError
        Missing folder, or two masks files for one name.
    """
    _, masks, _ = _scan(_check_folder(directory))
    return dict(sorted(masks.items()))


def list_folder(directory: str | os.PathLike, *, require_images: bool = True) -> list[FolderItem]:
    """List the image/masks pairs of a Cellpose-style folder, sorted by name.

    Parameters
    ----------
    directory : path-like
    require_images : bool, optional
        If False, masks files without an image are items with ``image_path=None`` (images
        without masks are still refused).

    Returns
    -------
    items : list of FolderItem

    Raises
    ------
    InputError
        Missing folder, an image without masks or masks without image, a sidecar that does not
        list exactly the folder's items.
    """
    directory = _check_folder(directory)
    images, masks, ignore = _scan(directory)
    stray = sorted(set(ignore) - set(masks))
    if stray:
        raise InputError(f"{directory}: ignore mask {ignore[stray[0]].name} has no masks file "
                         f"({stray[0]}{MASKS_SUFFIX}.tif)")
    for name in sorted(set(images) ^ set(masks)):
        if name in images:
            raise InputError(f"{directory}: image {images[name].name} has no masks file "
                             f"({name}{MASKS_SUFFIX}.tif)")
        if require_images:
            raise InputError(f"{directory}: masks file {masks[name].name} has no image ({name}.tif)")
    cell_types = folder_cell_types(directory, masks)
    return [FolderItem(name, images.get(name), masks[name], cell_types[name], ignore.get(name))
            for name in sorted(masks)]


def _check_name(name: str) -> str:
    if (not name or name.startswith(".") or "/" in name or "\\" in name
            or name.endswith((MASKS_SUFFIX, IGNORE_SUFFIX))):
        raise ValueError(f"name must be a plain file stem (no '/', not starting with '.', not "
                         f"ending in {MASKS_SUFFIX!r} or {IGNORE_SUFFIX!r}), got {name!r}")
    return name


def write_folder_item(directory: str | os.PathLike, name: str, image: np.ndarray,
                      labels: np.ndarray, cell_type: str, *,
                      ignore: np.ndarray | None = None) -> FolderItem:
    """Write ``<name>.tif``, ``<name>_masks.tif`` (and ``<name>_ignore.tif``) into
    ``directory`` (atomically each).

    The sidecar is not touched: write it once with :func:`write_cell_types`.

    Parameters
    ----------
    directory : path-like
        Created if missing.
    name : str
    image : (H, W) or (C, H, W) ndarray
        Written unchanged (dtype kept).
    labels : (H, W) ndarray of int
        Same height and width as ``image``.
    cell_type : str
    ignore : (H, W) ndarray of bool, optional
        Pixels to leave out of training losses, written as uint8 0/1 ``<name>_ignore.tif``.

    Returns
    -------
    item : FolderItem
    """
    _check_name(name)
    for what, mask in (("labels", labels), ("ignore", ignore)):
        if mask is not None and np.shape(mask) != np.shape(image)[-2:]:
            raise ValueError(f"{what} shape {np.shape(mask)} must equal the image's height and "
                             f"width {np.shape(image)[-2:]}")
    directory = Path(directory)
    item = FolderItem(name, directory / f"{name}.tif", directory / f"{name}{MASKS_SUFFIX}.tif",
                      cell_type,
                      None if ignore is None else directory / f"{name}{IGNORE_SUFFIX}.tif")
    write_image(item.image_path, image)
    write_labels(item.masks_path, labels)
    if ignore is not None:
        write_image(item.ignore_path, np.asarray(ignore, dtype=bool).astype(np.uint8))
    return item


def read_ignore_mask(path: str | os.PathLike) -> np.ndarray:
    """Read an ``_ignore`` mask (any integer image of 0 and 1; 1 = ignore).

    Returns
    -------
    ignore : (H, W) ndarray of bool

    Raises
    ------
    InputError
        Unreadable, not 2-D, or values other than 0 and 1 (the message names the file).
    """
    data = read_labels(path)
    if data.size and data.max() > 1:
        raise InputError(f"ignore mask {path}: expected values 0 (train) and 1 (ignore), "
                         f"got up to {data.max()}")
    return data.astype(bool)


def write_cell_types(directory: str | os.PathLike, cell_types: Mapping[str, str]) -> Path:
    """Write ``directory/cell_types.csv`` (header ``name,cell_type``, rows sorted by name).

    Returns
    -------
    path : Path
    """
    path = Path(directory) / CELL_TYPES_FILE
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "cell_type"])
        for name in sorted(cell_types):
            writer.writerow([_check_name(name), cell_types[name]])
    return path
