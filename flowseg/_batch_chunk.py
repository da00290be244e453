"""One task of :func:`flowseg.batch.segment_files`: segment a chunk of image files and write them.

Shared by the in-process driver (:mod:`flowseg.batch`) and the Dask workers
(:mod:`flowseg._batch_dask`), below both, so neither imports the other. See
:mod:`flowseg.batch` for what is written and when an image is complete.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowseg.api import DEFAULT_TILE, check_image, check_tile
from flowseg.config import _check_int
from flowseg.data.rescale import check_scale
from flowseg.device import PRECISIONS
from flowseg.errors import one_line
from flowseg.io.atomic import atomic_path

__all__ = ["BatchConfig", "ImageOutcome", "RECORD_DIR", "masks_path", "read_record",
           "record_path", "segment_chunk"]

#: Hidden folder of ``out_dir`` holding the per-image records.
RECORD_DIR = ".flowseg"


@dataclass(frozen=True)
class BatchConfig:
    """How :func:`flowseg.batch.segment_files` segments and what it writes.

    Attributes
    ----------
    device : str
        Device of each process / worker: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:N"``.
    batch_size : int
        Network tiles per forward pass.
    tile : int or None
        Network tile side in pixels, a positive multiple of the model's size multiple (8 for the
        default model; checked against the model by ``segment_files``). ``0`` or ``None``: whole
        images, untiled (``0`` is stored as ``None``).
    tta : bool
        Flip test-time augmentation.
    scale : float
        Resize factor of the images before the network (see :func:`flowseg.api.segment`).
    overlay : bool
        Also write ``<name>_overlay.png``.
    chunk : int
        Images per task (read, segmented and written together).
    worker_threads : int or None
        ``torch.set_num_threads`` in each Dask worker (None: torch's default, usually all
        cores, which oversubscribes a machine running several workers). Not applied in-process.
    precision : {"auto", "bf16", "fp32"}
        The network's arithmetic (see :func:`flowseg.api.segment`).
    """

    device: str = "auto"
    batch_size: int = 8
    tile: int | None = DEFAULT_TILE
    tta: bool = False
    scale: float = 1.0
    overlay: bool = False
    chunk: int = 8
    worker_threads: int | None = None
    precision: str = "auto"

    def __post_init__(self) -> None:
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_int("chunk", self.chunk, minimum=1)
        if self.worker_threads is not None:
            _check_int("worker_threads", self.worker_threads, minimum=1)
        object.__setattr__(self, "tile", check_tile(self.tile, size_multiple=1))
        for name in ("tta", "overlay"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        check_scale(self.scale)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {self.precision!r}")


@dataclass(frozen=True)
class ImageOutcome:
    """What happened to one image.

    Attributes
    ----------
    name : str
        File stem; outputs are named after it.
    path : str
    status : str
        ``"done"`` (segmented now), ``"skipped"`` (complete from an earlier run) or ``"failed"``.
    cell_type : str
        Predicted image cell type (``""`` when failed).
    counts : dict of str to int
        Instances per cell type.
    reason : str
        One line, when failed.
    """

    name: str
    path: str
    status: str
    cell_type: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    reason: str = ""


# ----------------------------------------------------------------------------- file names
def masks_path(out_dir: str | os.PathLike, name: str) -> Path:
    """``out_dir/<name>_masks.tif``."""
    return Path(out_dir) / f"{name}_masks.tif"


def _overlay_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}_overlay.png"


def record_path(out_dir: str | os.PathLike, name: str) -> Path:
    """``out_dir/.flowseg/<name>.json``: the record that marks ``name`` complete."""
    return Path(out_dir) / RECORD_DIR / f"{name}.json"


# ----------------------------------------------------------------------------- records
def _valid_record(record: Any) -> bool:
    """A record as :func:`_write_outputs` writes it (any other content counts as damaged)."""
    return (isinstance(record, dict) and isinstance(record.get("cell_type"), str)
            and isinstance(record.get("shape"), list) and isinstance(record.get("counts"), dict)
            and all(isinstance(k, str) and isinstance(v, int) for k, v in record["counts"].items()))


def read_record(out_dir: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """The record of ``name`` in ``out_dir``; None when it is missing or damaged."""
    try:
        record = json.loads(record_path(out_dir, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not JSON, not UTF-8
        return None
    return record if _valid_record(record) else None


def _complete(out_dir: Path, name: str, settings: dict[str, Any], overlay: bool
              ) -> dict[str, Any] | None:
    """The record of a complete earlier result for ``name``, else None.

    A damaged mask (one that does not decode) or record makes the image incomplete: redone.
    """
    from flowseg.io.images import read_labels

    record = read_record(out_dir, name)
    if record is None or record.get("settings") != settings:
        return None
    try:
        if list(read_labels(masks_path(out_dir, name)).shape) != record["shape"]:
            return None
    except ValueError:  # InputError: missing, damaged or truncated mask
        return None
    if overlay and not _overlay_path(out_dir, name).is_file():
        return None
    return record


# ----------------------------------------------------------------------------- one image
def _write_outputs(out_dir: Path, name: str, path: str, image, result, settings: dict[str, Any],
                   overlay: bool) -> ImageOutcome:
    """Mask, overlay, then the record (last: it marks the image complete)."""
    from flowseg.io.images import write_labels

    write_labels(masks_path(out_dir, name), result.labels)
    if overlay:
        from flowseg.io.png import write_rgb_png
        from flowseg.visualize import overlay_outlines

        index = {n: k for k, n in enumerate(result.class_names)}
        rgb = overlay_outlines(image, result.labels, [index[t] for t in result.cell_types])
        write_rgb_png(_overlay_path(out_dir, name), rgb)
    counts = dict(Counter(result.cell_types))
    record = {"name": name, "source": path, "shape": list(result.labels.shape),
              "cell_type": result.image_cell_type, "counts": counts, "settings": settings}
    with atomic_path(record_path(out_dir, name)) as tmp:
        tmp.write_text(json.dumps(record), encoding="utf-8")
    return ImageOutcome(name, path, "done", result.image_cell_type, counts)


def _failed(name: str, path: str, exc: BaseException) -> ImageOutcome:
    return ImageOutcome(name, path, "failed", reason=one_line(exc))


# ----------------------------------------------------------------------------- one task
def _segment_images(images: list, model, config: BatchConfig) -> list:
    """Segment together; when that fails, one by one. An image that cannot be segmented gets
    its exception in its place: one bad image never stops the others, even alone in a task."""
    from flowseg.api import segment

    def run(batch):
        return segment(batch, model, batch_size=config.batch_size, tile=config.tile,
                       tta=config.tta, scale=config.scale, precision=config.precision)

    try:
        return run(images)
    except (ValueError, TypeError, RuntimeError) as exc:
        if len(images) == 1:
            return [exc]
    results = []
    for image in images:
        try:
            results.extend(run([image]))
        except (ValueError, TypeError, RuntimeError) as exc:
            results.append(exc)
    return results


def _read_checked(path: str, in_channels: int):
    """The image of ``path``, with the model's number of channels (else ValueError naming it)."""
    from flowseg.io.images import read_image

    return check_image(read_image(path), in_channels, f"image {path}")


def segment_chunk(paths: Sequence[str], out_dir: str | os.PathLike, *, model, config: BatchConfig,
                  settings: dict[str, Any], overwrite: bool = False) -> list[ImageOutcome]:
    """Segment one chunk of image files with a loaded ``model`` and write their outputs.

    Complete images are skipped unless ``overwrite``; unreadable (missing, damaged, truncated)
    images, images with another number of channels than the model takes, and images that
    cannot be segmented become ``"failed"`` outcomes whose reason names the file. Returns one
    outcome per path, in order.
    """
    out_dir = Path(out_dir)
    outcomes: dict[str, ImageOutcome] = {}
    todo: list[tuple[str, str, Any]] = []
    for path in paths:
        name = Path(path).stem
        record = None if overwrite else _complete(out_dir, name, settings, config.overlay)
        if record is not None:
            outcomes[path] = ImageOutcome(name, path, "skipped", record["cell_type"],
                                          dict(record["counts"]))
            continue
        try:
            todo.append((path, name, _read_checked(path, model.model_config.in_channels)))
        except (OSError, ValueError, TypeError) as exc:
            outcomes[path] = _failed(name, path, exc)
    results = _segment_images([image for _, _, image in todo], model, config) if todo else []
    for (path, name, image), result in zip(todo, results):
        try:
            if isinstance(result, BaseException):
                raise result
            outcomes[path] = _write_outputs(out_dir, name, path, image, result, settings,
                                            config.overlay)
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            outcomes[path] = _failed(name, path, exc)
    return [outcomes[p] for p in paths]
