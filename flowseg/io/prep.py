"""Data preparation: source data sets -> Cellpose-style ``train/`` and ``val/`` folders.

Used by the ``data_prep`` program. Sources (:func:`sartorius_items`, :func:`coco_items`,
:func:`usiigaci_items`) list :class:`PrepItem` records — name, cell type and a loader — so the
split is decided before any image is read. :func:`prepare_dataset` reads each item, writes
``OUT/train/`` and ``OUT/val/`` (``<name>.tif`` with the source pixels unchanged,
``<name>_masks.tif`` with consecutive labels 1..N, ``cell_types.csv``; both resized when
``scale != 1``) and ``OUT/prep.json``,
all inside a temporary folder beside ``OUT`` that is renamed to ``OUT`` only at the end: a
failure leaves no half-written ``OUT``.

Split (:func:`split_train_val`): per cell type, ``round(n * test_fraction)`` images go to ``test``
and ``round(n * val_fraction)`` to ``val``, each at least one when its fraction is > 0 and
``n >= 2``, and never all of them; a cell type with a single image keeps it in ``train``, and so
do the ``train_only`` images (incomplete annotations that must never be scored).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flowseg.errors import InputError
from flowseg.io.atomic import atomic_path
from flowseg.io.coco import read_coco
from flowseg.io.folders import write_cell_types, write_folder_item
from flowseg.io.images import read_image
from flowseg.io.instances import fill_label_holes, relabel_consecutive
from flowseg.io.sartorius import check_image_shape, read_train_csv
from flowseg.io.usiigaci import list_usiigaci
from flowseg.rescale import check_scale, rescale_pair

__all__ = ["LabelledImage", "PrepItem", "PrepResult", "SPLITS", "coco_items", "format_summary",
           "prepare_dataset", "replacing_folder", "sartorius_items", "split_train_val",
           "usiigaci_items"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
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
                    seed: int = 0, test_fraction: float = 0.0,
                    train_only: Collection[str] = ()) -> dict[str, str]:
    """Split images into ``train``, ``val`` and ``test``, stratified by cell type.

    Per cell type the images are shuffled with ``seed``; the first ``round(n * test_fraction)``
    go to ``test``, the next ``round(n * val_fraction)`` to ``val`` and the rest to ``train``.
    A fraction > 0 takes at least one image of a type with ``n >= 2``, and ``train`` always keeps
    at least one. ``test_fraction = 0`` gives the two-way split of earlier versions unchanged.

    Parameters
    ----------
    names, cell_types : sequence of str
        One entry per image; names unique.
    val_fraction, test_fraction : float
        Each in ``[0, 1)``, their sum < 1.
    seed : int
        The result depends on the seed and the sets of names, not on their order.
    train_only : collection of str
        Names that always go to ``train`` and take no part in the draw (e.g. images whose
        annotation is incomplete and must not be scored).

    Returns
    -------
    split : dict of str to str
        ``"train"``, ``"val"`` or ``"test"`` per name.
    """
    for what, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{what} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    if len(names) != len(cell_types):
        raise ValueError(f"names and cell_types must have the same length, "
                         f"got {len(names)} and {len(cell_types)}")
    if len(set(names)) != len(names):
        raise InputError("image names must be unique")
    unknown = set(train_only) - set(names)
    if unknown:
        raise ValueError(f"train_only: names not among the images, e.g. {sorted(unknown)[0]!r}")
    rng = np.random.default_rng(seed)
    by_type: dict[str, list[str]] = {}
    for name, cell_type in zip(names, cell_types):
        if name not in train_only:
            by_type.setdefault(cell_type, []).append(name)
    split = dict.fromkeys(train_only, "train")
    for cell_type in sorted(by_type):
        group = sorted(by_type[cell_type])
        n = len(group)
        n_test = _share(n, test_fraction)
        n_val = min(_share(n, val_fraction), n - 1 - n_test) if n > 1 else 0
        order = rng.permutation(n).tolist() if n_test + n_val else list(range(n))
        for rank, i in enumerate(order):
            split[group[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return split


def _share(n: int, fraction: float) -> int:
    """``round(n * fraction)``, at least 1 when ``fraction > 0`` and ``n >= 2``, at most ``n - 1``."""
    k = round(n * fraction)
    if fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    return k if n >= 2 else 0


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


def _splits_written(test_fraction: float) -> tuple[str, ...]:
    """``train`` and ``val`` always (as before), ``test`` when asked for."""
    return SPLITS if test_fraction > 0 else SPLITS[:2]


def _write_items(items: Sequence[PrepItem], split: dict[str, str], tmp: Path, progress: bool,
                 scale: float, splits: Sequence[str]) -> dict:
    counts: dict = {s: {} for s in splits}
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


@contextlib.contextmanager
def replacing_folder(out: str | os.PathLike, *, overwrite: bool = False,
                     sources: Sequence[str | os.PathLike] = ()) -> Iterator[Path]:
    """A new temporary folder beside ``out`` that becomes ``out`` when the block ends.

    ``out`` is replaced as a whole only then; when the block raises, the temporary folder is
    removed and ``out`` is left as it was.

    Parameters
    ----------
    out : path-like
        Must not exist or be empty, unless ``overwrite``.
    overwrite : bool
        Replace an existing non-empty ``out``.
    sources : sequence of path-like
        Input paths; ``out`` may not contain any of them.

    Raises
    ------
    InputError
        ``out`` is a file, is not empty (without ``overwrite``) or holds a source.
    """
    out = Path(out)
    _prepare_out(out, overwrite, [Path(s) for s in sources])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    _chmod_like_mkdir(tmp)
    try:
        yield tmp
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prepare_dataset(items: Sequence[PrepItem], out: str | os.PathLike, *, val_fraction: float = 0.2,
                    test_fraction: float = 0.0, train_only: Collection[str] = (),
                    seed: int = 0, scale: float = 1.0, overwrite: bool = False,
                    options: dict | None = None, sources: Sequence[str | os.PathLike] = (),
                    progress: bool = False) -> PrepResult:
    """Write ``items`` as ``out/train/``, ``out/val/`` (and ``out/test/`` when ``test_fraction > 0``)
    Cellpose-style folders plus ``out/prep.json``.

    Parameters
    ----------
    items : sequence of PrepItem
    out : path-like
        Must not exist or be empty, unless ``overwrite``; replaced as a whole at the end.
    val_fraction, test_fraction, train_only, seed : see :func:`split_train_val`.
    scale : float
        Resize every image (linear) and its labels (nearest) by this factor, e.g. 0.5 to bring
        cells twice the size of another data set's to its scale (see
        :func:`flowseg.rescale.rescale_pair`); 1 writes the source pixels unchanged.
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
    split = split_train_val([i.name for i in items], [i.cell_type for i in items],
                            val_fraction=val_fraction, test_fraction=test_fraction,
                            train_only=train_only, seed=seed)
    splits = _splits_written(test_fraction)
    with replacing_folder(out, overwrite=overwrite, sources=sources) as tmp:
        for s in splits:
            (tmp / s).mkdir()
            write_cell_types(tmp / s, {i.name: i.cell_type for i in items if split[i.name] == s})
        counts = _write_items(items, split, tmp, progress, scale, splits)
        names = {s: sorted(n for n, v in split.items() if v == s) for s in splits}
        record = {"options": options or {"val_fraction": val_fraction, "test_fraction": test_fraction,
                                         "seed": seed, "scale": scale},
                  "counts": counts, "names": names}
        with atomic_path(tmp / PREP_FILE) as path:
            path.write_text(json.dumps(record, indent=2) + "\n")
    logger.info("wrote %d images to %s", len(items), out)
    return PrepResult(out, counts, names)


def format_summary(result: PrepResult) -> str:
    """A text table: images and instances per cell type and split, with totals."""
    splits = [s for s in SPLITS if s in result.counts]
    cell_types = sorted({c for s in splits for c in result.counts[s]})
    header = ["cell_type"] + [f"{s} {k}" for s in splits for k in ("images", "instances")]
    rows = []
    for c in cell_types + ["total"]:
        values = []
        for s in splits:
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
