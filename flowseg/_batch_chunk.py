"""One task of :func:`flowseg.batch.segment_files`: segment a chunk of image files and write them.

Shared by the in-process driver (:mod:`flowseg.batch`) and the Dask workers
(:mod:`flowseg._batch_dask`), below both, so neither imports the other. See
:mod:`flowseg.batch` for what is written and when an image is complete.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowseg.config import SegmentConfig, check_int
from flowseg.errors import one_line
from flowseg.io.atomic import atomic_path
from flowseg.io.axes import check_channel
from flowseg.io.outputs import MAP_OUTPUTS, applicable_outputs, check_outputs, output_path
from flowseg.predict import DEFAULT_TILE, NORMALIZE, PredictConfig
from flowseg.rescale import check_scale
from flowseg.size import check_diameter
from flowseg.stacks import DEFAULT_STITCH_THRESHOLD, check_stitch_threshold

__all__ = ["BatchConfig", "ImageOutcome", "RECORD_DIR", "masks_path", "read_record",
           "record_path", "segment_chunk"]

#: Hidden folder of ``out_dir`` holding the per-image records.
RECORD_DIR = ".flowseg"


#: Record values of the options that :meth:`BatchConfig.settings` leaves out at their default.
_DEFAULT_SETTINGS = {"diameter": None, "segment": {}, "normalize": list(NORMALIZE), "channel": None,
                     "channel_axis": None, "z_axis": None,
                     "stitch_threshold": DEFAULT_STITCH_THRESHOLD}


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
    tta : bool or None
        Flip test-time augmentation (None: the model's choice, :attr:`flowseg.Model.tta`).
    scale : float or None
        Resize factor of the images before the network (see :func:`flowseg.api.segment`).
    diameter : float or None
        Cell diameter in the images in pixels, setting the scale (see :func:`flowseg.api.segment`).
        With neither, each image's cell size is estimated.
    overlay : bool
        Also write ``<name>_overlay.png``.
    chunk : int
        Images per task (read, segmented and written together).
    worker_threads : int or None
        ``torch.set_num_threads`` in each Dask worker (None: torch's default, usually all
        cores, which oversubscribes a machine running several workers). Not applied in-process.
    precision : {"auto", "bf16", "fp32"}
        The network's arithmetic (see :func:`flowseg.api.segment`).
    save : tuple of str
        Extra outputs per image, of :data:`flowseg.io.outputs.OUTPUT_KINDS` (``"seg"``,
        ``"rois"``, ``"outlines"``, ``"png"``, ``"flows"``, ``"coco"``).
    segment : mapping
        Changes to the model's post-processing values, as keyword arguments of
        :meth:`flowseg.SegmentConfig.override` (``{"min_size": 30, "cellprob_threshold":
        {"astro": 0.5}, "exclude_on_edges": True}``); the model's other values are kept.
    normalize : (float, float) or None
        Percentiles mapped to 0 and 1 (None: no normalisation); see :func:`flowseg.segment`.
    channel : int, tuple of int, or None
        Channel(s) to segment, numbered from 1; 0 merges all channels to gray (see
        :func:`flowseg.io.axes.select_channels`).
    channel_axis, z_axis : int or None
        Which axis of the files holds the channels / the planes (else their metadata says).
    stitch_threshold : float
        z-stacks: least IoU that links a cell to one in the plane below
        (:func:`flowseg.stacks.stitch_planes`; 0 links nothing).
    """

    device: str = "auto"
    batch_size: int = 8
    tile: int | None = DEFAULT_TILE
    tta: bool | None = None
    scale: float | None = None
    diameter: float | None = None
    overlay: bool = False
    chunk: int = 8
    worker_threads: int | None = None
    precision: str = "auto"
    save: tuple[str, ...] = ()
    segment: Mapping[str, Any] = field(default_factory=dict)
    normalize: tuple[float, float] | None = NORMALIZE
    channel: int | tuple[int, ...] | None = None
    channel_axis: int | None = None
    z_axis: int | None = None
    stitch_threshold: float = DEFAULT_STITCH_THRESHOLD

    def __post_init__(self) -> None:
        predict = self.predict   # checks batch_size, tile, tta, precision, normalize
        object.__setattr__(self, "tile", predict.tile)
        object.__setattr__(self, "normalize", predict.normalize)
        check_int("chunk", self.chunk, minimum=1)
        if self.worker_threads is not None:
            check_int("worker_threads", self.worker_threads, minimum=1)
        if not isinstance(self.overlay, bool):
            raise TypeError(f"overlay: expected a bool, got {self.overlay!r}")
        if self.scale is not None and self.diameter is not None:
            raise ValueError(f"scale, diameter: give one of them, not both (got scale="
                             f"{self.scale!r}, diameter={self.diameter!r})")
        if self.scale is not None:
            check_scale(self.scale)
        if self.diameter is not None:
            check_diameter(self.diameter)
        object.__setattr__(self, "save", check_outputs(self.save))
        object.__setattr__(self, "channel", check_channel(self.channel))
        if not isinstance(self.segment, Mapping):
            raise TypeError(f"segment: expected a mapping of SegmentConfig.override values, "
                            f"got {type(self.segment).__name__}")
        SegmentConfig().override(**self.segment)  # checks names and values
        for name in ("channel_axis", "z_axis"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{name}: expected an int axis index or None, got {value!r}")
        check_stitch_threshold(self.stitch_threshold)

    @property
    def predict(self) -> PredictConfig:
        """How the network runs (this config's ``batch_size``, ``tile``, ``tta``, ``precision``,
        ``normalize``)."""
        return PredictConfig(batch_size=self.batch_size, tile=self.tile, tta=self.tta,
                             precision=self.precision, normalize=self.normalize)

    def settings(self) -> dict[str, Any]:
        """The options the outputs depend on, for the completeness record (options at their
        default are left out, so records of earlier versions stay valid)."""
        values = {"tile": self.tile, "tta": self.tta, "scale": self.scale,
                  "precision": self.precision}
        extra = {"diameter": self.diameter, "segment": json.loads(json.dumps(dict(self.segment))),
                 "normalize": None if self.normalize is None else list(self.normalize),
                 "channel": None if self.channel is None else list(self.channel),
                 "channel_axis": self.channel_axis, "z_axis": self.z_axis,
                 "stitch_threshold": self.stitch_threshold}
        values.update({k: v for k, v in extra.items() if v != _DEFAULT_SETTINGS[k]})
        if self.scale != 1.0:   # min sizes count the network's pixels since 2026-12-01
            values["min_size_units"] = "network"
        return values

    def segment_config(self, model) -> SegmentConfig | None:
        """The model's post-processing config with :attr:`segment` applied (None: unchanged)."""
        if not self.segment:
            return None
        config = model.segment_config.override(**self.segment)
        unknown = sorted(set(config.per_class) - set(model.class_names))
        if unknown:
            raise ValueError(f"segment: unknown cell type(s) {unknown}; the model's types are "
                             f"{', '.join(model.class_names)}")
        return config


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
    scale : float or None
        Resize factor the image was segmented at (None when failed, or skipped with a record
        of an earlier flowseg that did not store it).
    diameter : float or None
        The cell diameter (px) that scale corresponds to (see ``SegmentResult.diameter``).
    """

    name: str
    path: str
    status: str
    cell_type: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    reason: str = ""
    scale: float | None = None
    diameter: float | None = None


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


def _complete(out_dir: Path, name: str, settings: dict[str, Any], config: BatchConfig
              ) -> dict[str, Any] | None:
    """The record of a complete earlier result for ``name``, else None.

    A damaged mask (one that does not decode) or record makes the image incomplete: redone;
    so does a missing output that ``config`` asks for (overlay, ``save``).
    """
    from flowseg.io.images import read_labels

    record = read_record(out_dir, name)
    if record is None or record.get("settings") != settings:
        return None
    try:
        shape = read_labels(masks_path(out_dir, name), allow_3d=True).shape
    except ValueError:  # InputError: missing, damaged or truncated mask
        return None
    if list(shape) != record["shape"]:
        return None
    is_stack = len(shape) == 3
    if config.overlay and not is_stack and not _overlay_path(out_dir, name).is_file():
        return None
    kinds = applicable_outputs(config.save, is_stack=is_stack)
    if not all(output_path(out_dir, name, kind).is_file() for kind in kinds):
        return None
    return record


# ----------------------------------------------------------------------------- one image
@dataclass(frozen=True)
class _Item:
    """One image of a task: its file, name, ``(Z, C, H, W)`` pixels, and whether a stack."""

    path: str
    name: str
    image: Any
    is_stack: bool

    @property
    def planes(self) -> list:
        """The images given to ``segment``, one per plane: ``(H, W)``, or ``(C, H, W)`` for
        several channels."""
        return [plane[0] if len(plane) == 1 else plane for plane in self.image]


def _seg_channels(config: BatchConfig) -> list[int]:
    """cellpose's ``chan_choose`` for the ``_seg.npy`` file."""
    channel = config.channel or (0,)
    return [channel[0], channel[1] if len(channel) > 1 else 0]


def _write_outputs(out_dir: Path, item: _Item, result, settings: dict[str, Any],
                   config: BatchConfig, model_path: str = "") -> ImageOutcome:
    """Mask, overlay and ``save`` outputs, then the record (last: it marks the image complete)."""
    from flowseg.io.images import write_labels
    from flowseg.io.outputs import write_outputs

    name, path, image = item.name, item.path, item.planes[0]
    write_labels(masks_path(out_dir, name), result.labels)
    write_outputs(out_dir, name, result, kinds=config.save, source=path,
                  channels=_seg_channels(config), model_path=model_path)
    if config.overlay and not item.is_stack:
        from flowseg.io.png import write_rgb_png
        from flowseg.visualize import overlay_outlines

        index = {n: k for k, n in enumerate(result.class_names)}
        rgb = overlay_outlines(image, result.labels, [index[t] for t in result.cell_types])
        write_rgb_png(_overlay_path(out_dir, name), rgb)
    counts = dict(Counter(result.cell_types))
    record = {"name": name, "source": path, "shape": list(result.labels.shape),
              "cell_type": result.image_cell_type, "counts": counts, "settings": settings,
              "scale": result.scale, "diameter": result.diameter}
    with atomic_path(record_path(out_dir, name)) as tmp:
        tmp.write_text(json.dumps(record), encoding="utf-8")
    return ImageOutcome(name, path, "done", result.image_cell_type, counts,
                        scale=result.scale, diameter=result.diameter)


def _failed(name: str, path: str, exc: BaseException) -> ImageOutcome:
    return ImageOutcome(name, path, "failed", reason=one_line(exc))


# ----------------------------------------------------------------------------- one task
def _segment_items(items: list[_Item], model, config: BatchConfig) -> list:
    """Segment all planes of all items together; when that fails, item by item. An item that
    cannot be segmented gets its exception in its place: one bad image never stops the
    others, even alone in a task. A stack's planes are linked (:func:`stack_result`)."""
    from flowseg.api import segment
    from flowseg.stacks import normalize_once, shared_scales, stack_result

    segment_config = config.segment_config(model)

    def run(batch: list[_Item]) -> list:
        planes = [p for item in batch for p in item.planes]
        options = {"scale": config.scale, "diameter": config.diameter, "predict": config.predict}
        if any(item.is_stack for item in batch):   # a stack's planes share one scale
            planes, options = normalize_once(planes, options)
            options["scale"] = shared_scales(
                planes, model, [k for k, item in enumerate(batch) for _ in item.planes], options)
        planes = segment(planes, model, config=segment_config,
                         return_maps=any(k in MAP_OUTPUTS for k in config.save), **options)
        out, start = [], 0
        for item in batch:
            mine, start = planes[start:start + len(item.image)], start + len(item.image)
            out.append(stack_result(mine, stitch_threshold=config.stitch_threshold)
                       if item.is_stack else mine[0])
        return out

    try:
        return run(items)
    except (ValueError, TypeError, RuntimeError) as exc:
        if len(items) == 1:
            return [exc]
    results = []
    for item in items:
        try:
            results.extend(run([item]))
        except (ValueError, TypeError, RuntimeError) as exc:
            results.append(exc)
    return results


def _read_item(path: str, config: BatchConfig, in_channels: int) -> _Item:
    """The image of ``path`` as ``(Z, C, H, W)`` with the model's channels (else an
    InputError naming the file)."""
    from flowseg.io.axes import select_channels
    from flowseg.io.images import read_image_stack

    image, is_stack = read_image_stack(path, channel_axis=config.channel_axis,
                                       z_axis=config.z_axis)
    image = select_channels(image, config.channel, in_channels=in_channels, name=f"image {path}")
    return _Item(path, Path(path).stem, image, is_stack)


def segment_chunk(paths: Sequence[str], out_dir: str | os.PathLike, *, model, config: BatchConfig,
                  settings: dict[str, Any], overwrite: bool = False,
                  progress=None) -> list[ImageOutcome]:
    """Segment one chunk of image files with a loaded ``model`` and write their outputs.

    Complete images are skipped unless ``overwrite``; unreadable (missing, damaged, truncated)
    images, images with another number of channels than the model takes, and images that
    cannot be segmented become ``"failed"`` outcomes whose reason names the file. A z-stack
    is segmented plane by plane and its cells linked across planes. ``progress``, when given,
    is called with 1 after each image. Returns one outcome per path, in order.
    """
    out_dir = Path(out_dir)
    tick = progress or (lambda n: None)
    outcomes: dict[str, ImageOutcome] = {}
    todo: list[_Item] = []
    for path in paths:
        name = Path(path).stem
        record = None if overwrite else _complete(out_dir, name, settings, config)
        if record is not None:
            outcomes[path] = ImageOutcome(name, path, "skipped", record["cell_type"],
                                          dict(record["counts"]), scale=record.get("scale"),
                                          diameter=record.get("diameter"))
            tick(1)
            continue
        try:
            todo.append(_read_item(path, config, model.model_config.in_channels))
        except (OSError, ValueError, TypeError) as exc:
            outcomes[path] = _failed(name, path, exc)
            tick(1)
    results = _segment_items(todo, model, config) if todo else []
    for item, result in zip(todo, results):
        try:
            if isinstance(result, BaseException):
                raise result
            outcomes[item.path] = _write_outputs(out_dir, item, result, settings, config,
                                                 settings.get("model", ""))
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            outcomes[item.path] = _failed(item.name, item.path, exc)
        tick(1)
    return [outcomes[p] for p in paths]
