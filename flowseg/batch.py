"""Segment many image files, in this process or over a Dask cluster (``dask.distributed``).

:func:`segment_files` splits the images into chunks (tasks). Each task reads its images,
segments them together with :func:`flowseg.segment` and writes, per image, into ``out_dir``::

    <name>_masks.tif          instance labels (uint16 / uint32 TIF)
    <name>_overlay.png        outlines coloured by cell type (when ``overlay``)
    .flowseg/<name>.json      the image's record: shape, cell type, cells per type, settings

then ``segment_files`` writes ``cell_types.csv`` (``name,cell_type``: each image's predicted
cell type) and, when images failed, ``failed.csv`` (``name,path,reason``). Every file is
written atomically.

An image is **complete**, and skipped by a re-run, when its record exists with the same model
and settings, its mask TIF reads back with the recorded shape, and its overlay exists when
overlays are asked for. The record is written last, so an interrupted run redoes only the
images it had not finished.

A failed image (unreadable file, wrong number of channels, ...) becomes an
:class:`ImageOutcome` with a one-line reason; the other images go on.

On a cluster every worker loads the model once (a worker plugin, ``flowseg._batch_dask.ModelPlugin``) and
writes its own outputs, so ``out_dir`` must be a folder every worker can write (a shared file
system) and the model path must be readable by every worker. ``local_client(n)`` starts a one-machine cluster of ``n`` single-threaded worker
processes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowseg.api import DEFAULT_TILE
from flowseg.data.rescale import check_scale
from flowseg.device import PRECISIONS
from flowseg.io.atomic import atomic_path

__all__ = ["BatchConfig", "ImageOutcome", "BatchResult", "segment_files", "segment_chunk",
           "local_client", "connect", "require_distributed", "masks_path", "RECORD_DIR",
           "FAILED_FILE"]

log = logging.getLogger(__name__)

#: Hidden folder of ``out_dir`` holding the per-image records.
RECORD_DIR = ".flowseg"
#: Failure report written into ``out_dir`` when any image failed.
FAILED_FILE = "failed.csv"
_DASK_HINT = "install it with: pip install 'flowseg[cluster]' (or 'dask[distributed]')"


@dataclass(frozen=True)
class BatchConfig:
    """How :func:`segment_files` segments and what it writes.

    Attributes
    ----------
    device : str
        Device of each process / worker: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:N"``.
    batch_size : int
        Network tiles per forward pass.
    tile : int or None
        Network tile side (``None``: whole images).
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
        for name in ("batch_size", "chunk", "worker_threads"):
            value = getattr(self, name)
            if (value is not None or name != "worker_threads") and \
                    (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if self.tile is not None and (not isinstance(self.tile, int) or self.tile < 16):
            raise ValueError(f"tile: expected None or an int >= 16, got {self.tile!r}")
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


@dataclass(frozen=True)
class BatchResult:
    """All images' outcomes (input order) and the model's cell types."""

    outcomes: tuple[ImageOutcome, ...]
    class_names: tuple[str, ...]

    def with_status(self, status: str) -> list[ImageOutcome]:
        """The outcomes whose status is ``status``."""
        return [o for o in self.outcomes if o.status == status]

    @property
    def failed(self) -> list[ImageOutcome]:
        """Images that could not be segmented."""
        return self.with_status("failed")


# ----------------------------------------------------------------------------- file names
def masks_path(out_dir: str | os.PathLike, name: str) -> Path:
    """``out_dir/<name>_masks.tif``."""
    return Path(out_dir) / f"{name}_masks.tif"


def _overlay_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}_overlay.png"


def _record_path(out_dir: Path, name: str) -> Path:
    return out_dir / RECORD_DIR / f"{name}.json"


def _settings(model_path: str | None, config: BatchConfig) -> dict[str, Any]:
    """What the outputs depend on: the model file (path and modification time) and options."""
    if model_path is None:
        model = "default"
    else:
        path = Path(model_path).resolve()
        model = f"{path}@{path.stat().st_mtime_ns}" if path.is_file() else str(path)
    return {"model": model, "tile": config.tile, "tta": config.tta, "scale": config.scale,
            "precision": config.precision}


# ----------------------------------------------------------------------------- one image
def _complete(out_dir: Path, name: str, settings: dict[str, Any], overlay: bool
              ) -> dict[str, Any] | None:
    """The record of a complete earlier result for ``name``, else None."""
    from flowseg.io.images import read_labels

    try:
        record = json.loads(_record_path(out_dir, name).read_text(encoding="utf-8"))
        if record.get("settings") != settings:
            return None
        if list(read_labels(masks_path(out_dir, name)).shape) != record["shape"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if overlay and not _overlay_path(out_dir, name).is_file():
        return None
    return record


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
    record_path = _record_path(out_dir, name)
    with atomic_path(record_path) as tmp:
        tmp.write_text(json.dumps(record), encoding="utf-8")
    return ImageOutcome(name, path, "done", result.image_cell_type, counts)


def _reason(exc: BaseException) -> str:
    """One line: the exception's first line, prefixed by its type."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------- one task
def _segment_images(images: list, model, config: BatchConfig) -> list:
    """Segment together; when that fails, one by one (an exception stands for that image)."""
    from flowseg.api import segment

    def run(batch):
        return segment(batch, model, batch_size=config.batch_size, tile=config.tile,
                       tta=config.tta, scale=config.scale, precision=config.precision)

    try:
        return run(images)
    except (ValueError, TypeError, RuntimeError):
        if len(images) == 1:
            raise
    results = []
    for image in images:
        try:
            results.extend(run([image]))
        except (ValueError, TypeError, RuntimeError) as exc:
            results.append(exc)
    return results


def segment_chunk(paths: Sequence[str], out_dir: str | os.PathLike, *, model, config: BatchConfig,
                  settings: dict[str, Any], overwrite: bool = False) -> list[ImageOutcome]:
    """Segment one chunk of image files with a loaded ``model`` and write their outputs.

    Complete images are skipped unless ``overwrite``; unreadable or unsegmentable images become
    ``"failed"`` outcomes. Returns one outcome per path, in order.
    """
    from flowseg.io.images import read_image

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
            todo.append((path, name, read_image(path)))
        except (OSError, ValueError) as exc:
            outcomes[path] = ImageOutcome(name, path, "failed", reason=_reason(exc))
    results = _segment_images([image for _, _, image in todo], model, config) if todo else []
    for (path, name, image), result in zip(todo, results):
        try:
            if isinstance(result, BaseException):
                raise result
            outcomes[path] = _write_outputs(out_dir, name, path, image, result, settings,
                                            config.overlay)
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            outcomes[path] = ImageOutcome(name, path, "failed", reason=_reason(exc))
    return [outcomes[p] for p in paths]


# ----------------------------------------------------------------------------- dask
def require_distributed():
    """The ``distributed`` module; ModuleNotFoundError with an install hint when missing."""
    try:
        import distributed
    except ImportError as exc:
        raise ModuleNotFoundError(f"segmenting on a Dask cluster needs dask.distributed, which "
                                  f"is not installed; {_DASK_HINT}") from exc
    return distributed


@contextlib.contextmanager
def local_client(n_workers: int) -> Iterator[Any]:
    """A one-machine Dask cluster: ``n_workers`` processes of one (Dask) thread each, and its
    client. Set ``BatchConfig.worker_threads`` to share the cores among the workers' torch."""
    distributed = require_distributed()
    if not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers: expected an int >= 1, got {n_workers!r}")
    with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


@contextlib.contextmanager
def connect(address: str) -> Iterator[Any]:
    """A client of the running Dask scheduler at ``address`` (e.g. ``tcp://host:8786``)."""
    distributed = require_distributed()
    with distributed.Client(address) as client:
        yield client


def _dask_outcomes(client, chunks: list[list[str]], out_dir: str, model_path: str | None,
                   config: BatchConfig, settings: dict[str, Any], overwrite: bool,
                   bar) -> list[ImageOutcome]:
    distributed = require_distributed()
    from flowseg._batch_dask import ModelPlugin, worker_chunk

    plugin = ModelPlugin(model_path, config.device, config.worker_threads)
    client.register_plugin(plugin)
    futures = {client.submit(worker_chunk, chunk, out_dir, config, settings, overwrite,
                             plugin.name, pure=False): chunk for chunk in chunks}
    outcomes = []
    for future in distributed.as_completed(futures):
        chunk = futures[future]
        try:
            outcomes.extend(future.result())
        except Exception as exc:  # noqa: BLE001 - a lost worker fails its chunk, not the run
            outcomes.extend(ImageOutcome(Path(p).stem, p, "failed", reason=_reason(exc))
                            for p in chunk)
        bar.update(len(chunk))
    client.unregister_worker_plugin(plugin.name)
    return outcomes


# ----------------------------------------------------------------------------- entry point
def _write_reports(out_dir: Path, outcomes: Sequence[ImageOutcome]) -> None:
    """``cell_types.csv`` for the segmented images; ``failed.csv`` (or none) for the failures."""
    from flowseg.io.folders import write_cell_types

    write_cell_types(out_dir, {o.name: o.cell_type for o in outcomes if o.status != "failed"})
    failed = [o for o in outcomes if o.status == "failed"]
    report = out_dir / FAILED_FILE
    if not failed:
        report.unlink(missing_ok=True)
        return
    with atomic_path(report) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "path", "reason"])
        writer.writerows([o.name, o.path, o.reason] for o in failed)


def _check_paths(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Absolute paths (workers may run elsewhere) with distinct, non-hidden stems."""
    paths = [str(Path(p).absolute()) for p in paths]
    hidden = [p for p in paths if Path(p).stem.startswith(".")]
    if hidden:
        raise ValueError(f"paths: image names may not start with '.', got {hidden[:3]}")
    stems = Counter(Path(p).stem for p in paths)
    dup = sorted(s for s, c in stems.items() if c > 1)
    if dup:
        raise ValueError(f"paths: several images share the name(s) {dup[:5]}; outputs would collide")
    return paths


def segment_files(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  model_path: str | os.PathLike | None = None, client=None,
                  config: BatchConfig | None = None, overwrite: bool = False,
                  progress: bool = False) -> BatchResult:
    """Segment image files into ``out_dir``, in this process or on a Dask cluster.

    Parameters
    ----------
    paths : sequence of path-like
        Image files with distinct stems (outputs are named after the stem). Relative paths
        are made absolute here, so workers must see the same file system paths.
    out_dir : path-like
        Output folder (created); on a cluster, writable by every worker.
    model_path : path-like, optional
        Checkpoint; None = the model shipped with flowseg. Workers load it from this path.
    client : distributed.Client, optional
        Run the chunks on this cluster (see :func:`local_client`, :func:`connect`); None runs
        them here, one after the other, with the same code.
    config : BatchConfig, optional
    overwrite : bool
        Redo images whose outputs are complete (default: skip them).
    progress : bool
        A progress bar over images.

    Returns
    -------
    BatchResult
        Outcomes in input order. ``out_dir`` also gets ``cell_types.csv`` and, when images
        failed, ``failed.csv``.
    """
    from tqdm.auto import tqdm

    from flowseg.api import load_model

    config = BatchConfig() if config is None else config
    if not isinstance(config, BatchConfig):
        raise TypeError(f"config: expected a BatchConfig or None, got {type(config).__name__}")
    paths = _check_paths(paths)
    model_path = None if model_path is None else str(Path(model_path).absolute())
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(model_path, config)
    # Loaded here too: checks the file before any task runs, gives the class names.
    model = load_model(model_path, device="cpu" if client is not None else config.device)
    chunks = [paths[i:i + config.chunk] for i in range(0, len(paths), config.chunk)]
    with tqdm(total=len(paths), unit="img", disable=not progress) as bar:
        if client is None:
            outcomes = []
            for chunk in chunks:
                outcomes.extend(segment_chunk(chunk, out, model=model, config=config,
                                              settings=settings, overwrite=overwrite))
                bar.update(len(chunk))
        else:
            outcomes = _dask_outcomes(client, chunks, str(out), model_path, config, settings,
                                      overwrite, bar)
    by_path = {o.path: o for o in outcomes}
    outcomes = [by_path[p] for p in paths]
    _write_reports(out, outcomes)
    for o in outcomes:
        if o.status == "failed":
            log.warning("%s: failed: %s", o.path, o.reason)
    return BatchResult(tuple(outcomes), tuple(model.class_names))
