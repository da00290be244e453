"""Data preparation: source data sets -> Cellpose-style ``train/`` and ``val/`` folders.

Used by the ``data_prep`` program. Sources (:func:`sartorius_items`, :func:`coco_items`,
:func:`usiigaci_items`) list :class:`PrepItem` records — name, cell type and a loader — so the
split is decided before any image is read. :func:`prepare_dataset` reads each item, writes
``OUT/train/`` and ``OUT/val/`` (``<name>.tif`` with the source pixels unchanged,
``<name>_masks.tif`` with consecutive labels 1..N, ``cell_types.csv``; both resized when
``scale != 1``) and ``OUT/prep.json``,
all inside a temporary folder beside ``OUT`` that is renamed to ``OUT`` only at the end: a
failure leaves no half-written ``OUT``.

Split (:func:`split_train_val`): per cell type, ``round(n * val_fraction)`` images go to ``val``,
but at least one when ``val_fraction > 0`` and ``n >= 2``, and never all of them; a cell type
with a single image keeps it in ``train``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flowseg.data.rescale import check_scale, rescale_pair
from flowseg.errors import InputError
from flowseg.io.atomic import atomic_path
from flowseg.io.coco import read_coco
from flowseg.io.folders import write_cell_types, write_folder_item
from flowseg.io.images import read_image
from flowseg.io.instances import fill_label_holes, relabel_consecutive
from flowseg.io.sartorius import check_image_shape, read_train_csv
from flowseg.io.usiigaci import list_usiigaci

__all__ = ["LabelledImage", "PrepItem", "PrepResult", "SPLITS", "coco_items", "format_summary",
           "prepare_dataset", "sartorius_items", "split_train_val", "usiigaci_items"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
PREP_FILE = "prep.json"


@dataclass(frozen=True)
class LabelledImage:
    """An image with its label image. ``image`` (H, W) or (C, H, W); ``labels`` (H, W) int32."""

    image: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class PrepItem:
    """One image of a source data set, not read yet.

    Attributes
    ----------
    name : str
        Output file stem.
    cell_type : str
    load : callable
        ``load() -> LabelledImage``; raises InputError naming the source on bad data.
    """

    name: str
    cell_type: str
    load: Callable[[], LabelledImage] = field(repr=False, compare=False)


@dataclass(frozen=True)
class PrepResult:
    """What :func:`prepare_dataset` wrote.

    Attributes
    ----------
    out : Path
    counts : dict
        ``counts[split][cell_type] = {"images": int, "instances": int}``.
    names : dict
        ``names[split]`` = sorted image names.
    """

    out: Path
    counts: dict
    names: dict


def _check_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InputError(f"{what} {path}: no such folder")
    return path


def sartorius_items(csv_path: str | os.PathLike, images_dir: str | os.PathLike, *,
                    fill_holes: bool = False) -> list[PrepItem]:
    """Items of a competition ``train.csv`` with images ``images_dir/<id>.png``.

    Raises
    ------
    InputError
        Bad csv (see :func:`flowseg.io.sartorius.read_train_csv`) or a missing image; a wrong image
        size is reported when the item is loaded.
    """
    images_dir = _check_dir(Path(images_dir), "images folder")
    annotations = read_train_csv(csv_path)
    missing = [i for i in annotations if not (images_dir / f"{i}.png").is_file()]
    if missing:
        raise InputError(f"{images_dir}: no image for {len(missing)} id(s) of {Path(csv_path).name}, "
                         f"e.g. {missing[0]}.png")

    def loader(ann) -> Callable[[], LabelledImage]:
        def load() -> LabelledImage:
            image = read_image(images_dir / f"{ann.id}.png")
            check_image_shape(ann, image)
            return LabelledImage(image, ann.labels(fill_holes=fill_holes))
        return load

    return [PrepItem(ann.id, ann.cell_type, loader(ann)) for ann in annotations.values()]


def _check_same_size(image: np.ndarray, labels: np.ndarray, what: str) -> None:
    if image.shape[-2:] != labels.shape:
        raise InputError(f"{what}: image height x width {image.shape[-2:]} differs from the "
                         f"annotation's {labels.shape}")


def coco_items(json_path: str | os.PathLike, images_dir: str | os.PathLike, *,
               fill_holes: bool = False) -> list[PrepItem]:
    """Items of a COCO json (LIVECell format); images are ``images_dir/<file_name>``.

    The item name is the file stem; the cell type is the image's majority category.
    """
    images_dir = _check_dir(Path(images_dir), "images folder")
    coco_images = read_coco(json_path)
    seen: dict[str, str] = {}
    for im in coco_images:
        stem = Path(im.file_name).stem
        if stem in seen:
            raise InputError(f"{json_path}: two images with the file stem {stem!r} "
                             f"({seen[stem]}, {im.file_name})")
        seen[stem] = im.file_name
        if not (images_dir / im.file_name).is_file():
            raise InputError(f"{images_dir}: no image {im.file_name} (listed in {Path(json_path).name})")

    def loader(im) -> Callable[[], LabelledImage]:
        def load() -> LabelledImage:
            image = read_image(images_dir / im.file_name)
            labels = im.labels(fill_holes=fill_holes)
            _check_same_size(image, labels, im.source)
            return LabelledImage(image, labels)
        return load

    return [PrepItem(Path(im.file_name).stem, im.cell_type, loader(im)) for im in coco_images]


def usiigaci_items(root: str | os.PathLike, *, fill_holes: bool = False) -> list[PrepItem]:
    """Items of the Usiigaci layout ``root/setN/{raw.tif, instances_ids.png}``."""
    def loader(s) -> Callable[[], LabelledImage]:
        def load() -> LabelledImage:
            image, labels = s.image(), s.labels()
            _check_same_size(image, labels, str(s.labels_path))
            return LabelledImage(image, fill_label_holes(labels) if fill_holes else labels)
        return load

    return [PrepItem(s.name, s.cell_type, loader(s)) for s in list_usiigaci(root)]


def split_train_val(names: Sequence[str], cell_types: Sequence[str], *, val_fraction: float,
                    seed: int = 0) -> dict[str, str]:
    """Split images into ``train`` and ``val``, stratified by cell type (see module docstring).

    Parameters
    ----------
    names, cell_types : sequence of str
        One entry per image; names unique.
    val_fraction : float
        In ``[0, 1)``.
    seed : int
        The result depends on the seed and the sets of names, not on their order.

    Returns
    -------
    split : dict of str to str
        ``"train"`` or ``"val"`` per name.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if len(names) != len(cell_types):
        raise ValueError(f"names and cell_types must have the same length, "
                         f"got {len(names)} and {len(cell_types)}")
    if len(set(names)) != len(names):
        raise InputError("image names must be unique")
    rng = np.random.default_rng(seed)
    by_type: dict[str, list[str]] = {}
    for name, cell_type in zip(names, cell_types):
        by_type.setdefault(cell_type, []).append(name)
    split = {}
    for cell_type in sorted(by_type):
        group = sorted(by_type[cell_type])
        n = len(group)
        n_val = round(n * val_fraction)
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        chosen = set(rng.permutation(n)[:n_val].tolist()) if n_val else set()
        split.update({name: SPLITS[int(i in chosen)] for i, name in enumerate(group)})
    return split


def _prepare_out(out: Path, overwrite: bool, sources: Sequence[Path]) -> None:
    """Refuse an existing non-empty ``out`` (unless ``overwrite``) or one holding a source."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"output folder {out} exists and is not empty; pass --overwrite to replace it")
    resolved = out.resolve()
    for source in sources:
        source = Path(source).resolve()
        if source == resolved or resolved in source.parents:
            raise InputError(f"output folder {out} contains the input {source}; choose another --out")


def _write_items(items: Sequence[PrepItem], split: dict[str, str], tmp: Path, progress: bool,
                 scale: float) -> dict:
    counts: dict = {s: {} for s in SPLITS}
    for item in tqdm(items, desc="data_prep", unit="image", disable=not progress):
        data = item.load()
        image, labels = rescale_pair(data.image, data.labels, scale)
        labels = relabel_consecutive(labels)
        write_folder_item(tmp / split[item.name], item.name, image, labels, item.cell_type)
        entry = counts[split[item.name]].setdefault(item.cell_type, {"images": 0, "instances": 0})
        entry["images"] += 1
        entry["instances"] += int(labels.max())
    return counts


def _chmod_like_mkdir(path: Path) -> None:
    """Give a ``mkdtemp`` folder (mode 0700) the permissions ``mkdir`` would (0777 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out``, removing an old ``out`` only after the move is ready."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def prepare_dataset(items: Sequence[PrepItem], out: str | os.PathLike, *, val_fraction: float = 0.2,
                    seed: int = 0, scale: float = 1.0, overwrite: bool = False,
                    options: dict | None = None, sources: Sequence[str | os.PathLike] = (),
                    progress: bool = False) -> PrepResult:
    """Write ``items`` as ``out/train/``, ``out/val/`` Cellpose-style folders plus ``out/prep.json``.

    Parameters
    ----------
    items : sequence of PrepItem
    out : path-like
        Must not exist or be empty, unless ``overwrite``; replaced as a whole at the end.
    val_fraction, seed : see :func:`split_train_val`.
    scale : float
        Resize every image (linear) and its labels (nearest) by this factor, e.g. 0.5 to bring
        cells twice the size of another data set's to its scale (see
        :func:`flowseg.data.rescale.rescale_pair`); 1 writes the source pixels unchanged.
    overwrite : bool
        Replace an existing non-empty ``out``.
    options : dict, optional
        Recorded in ``prep.json`` (the program's command-line options).
    sources : sequence of path-like
        Input paths; ``out`` may not contain any of them.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    result : PrepResult
    """
    out = Path(out)
    scale = check_scale(scale)
    if not items:
        raise InputError("the source has no images to prepare")
    _prepare_out(out, overwrite, [Path(s) for s in sources])
    split = split_train_val([i.name for i in items], [i.cell_type for i in items],
                            val_fraction=val_fraction, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    _chmod_like_mkdir(tmp)
    try:
        for s in SPLITS:
            (tmp / s).mkdir()
            write_cell_types(tmp / s, {i.name: i.cell_type for i in items if split[i.name] == s})
        counts = _write_items(items, split, tmp, progress, scale)
        names = {s: sorted(n for n, v in split.items() if v == s) for s in SPLITS}
        record = {"options": options or {"val_fraction": val_fraction, "seed": seed, "scale": scale},
                  "counts": counts, "names": names}
        with atomic_path(tmp / PREP_FILE) as path:
            path.write_text(json.dumps(record, indent=2) + "\n")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %d images to %s", len(items), out)
    return PrepResult(out, counts, names)


def format_summary(result: PrepResult) -> str:
    """A text table: images and instances per cell type and split, with totals."""
    cell_types = sorted({c for s in SPLITS for c in result.counts[s]})
    header = ["cell_type"] + [f"{s} {k}" for s in SPLITS for k in ("images", "instances")]
    rows = []
    for c in cell_types + ["total"]:
        values = []
        for s in SPLITS:
            for k in ("images", "instances"):
                if c == "total":
                    values.append(sum(v[k] for v in result.counts[s].values()))
                else:
                    values.append(result.counts[s].get(c, {}).get(k, 0))
        rows.append([c] + [str(v) for v in values])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    return "\n".join(lines)
