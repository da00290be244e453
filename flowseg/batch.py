"""Segment many image files, in this process or over a Dask cluster (``dask.distributed``).

:func:`segment_files` splits the images into chunks (tasks). Each task
(:func:`segment_chunk`, in :mod:`flowseg._batch_chunk`, shared with the Dask workers) reads its
images, segments them together with :func:`flowseg.segment` and writes, per image, into
``out_dir``::

    <name>_masks.tif          instance labels (uint16 / uint32 TIF)
    <name>_overlay.png        outlines coloured by cell type (when ``overlay``)
    .flowseg/<name>.json      the image's record: shape, cell type, cells per type, settings

then ``segment_files`` writes the folder's reports: ``cell_types.csv`` (``name,cell_type``:
the predicted cell type of every complete image of the folder, this run's and earlier runs')
and, when images of the folder failed and are still not complete, ``failed.csv``
(``name,path,reason``); see :func:`merge_reports`. Every file is written atomically.

An image is **complete**, and skipped by a re-run, when its record exists with the same model
and settings, its mask TIF reads back (decodes) with the recorded shape, and its overlay exists
when overlays are asked for. The record is written last, so an interrupted run redoes only the
images it had not finished, and a damaged mask or record is redone too.

A failed image (missing, damaged or truncated file, another number of channels than the model
takes, ...) becomes an :class:`ImageOutcome` with a one-line reason naming the file; the other
images go on, also when the bad image is alone in its chunk.

On a cluster every worker loads the model once (a worker plugin,
``flowseg._batch_dask.ModelPlugin``) and writes its own outputs, so ``out_dir`` must be a folder
every worker can write (a shared file system) and the model path must be readable by every
worker. ``local_client(n)`` starts a one-machine cluster of ``n`` single-threaded worker
processes.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from flowseg._batch_chunk import (RECORD_DIR, BatchConfig, ImageOutcome, masks_path, read_record,
                                  segment_chunk)
from flowseg.config import check_int
from flowseg.errors import InputError, one_line
from flowseg.io.atomic import atomic_path

__all__ = ["BatchConfig", "ImageOutcome", "BatchResult", "segment_files", "segment_chunk",
           "local_client", "connect", "require_distributed", "masks_path", "merge_reports",
           "RECORD_DIR", "FAILED_FILE"]

log = logging.getLogger(__name__)

#: Failure report written into ``out_dir`` when any image of the folder failed.
FAILED_FILE = "failed.csv"
FAILED_COLUMNS = ("name", "path", "reason")
_DASK_HINT = ("install it with: pip install 'dask[distributed]' (in a flowseg checkout: "
              "pip install -e '.[cluster]')")
_T = TypeVar("_T")


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


def _model_setting(model_path: str) -> str:
    """A model file as the records name it: resolved path and modification time."""
    path = Path(model_path).resolve()
    return f"{path}@{path.stat().st_mtime_ns}" if path.is_file() else str(path)


@functools.lru_cache(maxsize=1)
def _default_model_setting() -> str:
    """The shipped model as the records name it: ``default@`` and the start of its SHA-256, so
    that outputs of an earlier flowseg's default model are redone (it is replaced in place)."""
    from flowseg.model.pretrained import default_model_path

    digest = hashlib.sha256(default_model_path().read_bytes()).hexdigest()
    return f"default@{digest[:16]}"


def _settings(model_path: str | list[str] | None, config: BatchConfig) -> dict[str, Any]:
    """What the outputs depend on: the model file(s) (path and modification time; the shipped
    model by its content) and options."""
    if model_path is None:
        model: str | list[str] = _default_model_setting()
    elif isinstance(model_path, list):
        model = [_model_setting(p) for p in model_path]
    else:
        model = _model_setting(model_path)
    return {"model": model, **config.settings()}


def _absolute_model_path(model_path: str | os.PathLike | Sequence[str | os.PathLike] | None
                         ) -> str | list[str] | None:
    """Absolute model path(s), for workers that may run elsewhere: a list for several files
    (an ensemble), else one path or None."""
    if model_path is None:
        return None
    if isinstance(model_path, (list, tuple)):
        paths = [str(Path(p).absolute()) for p in model_path]
        return paths[0] if len(paths) == 1 else paths
    return str(Path(model_path).absolute())


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
    check_int("n_workers", n_workers, minimum=1)
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


def _dask_outcomes(client, chunks: list[list[str]], out_dir: str,
                   model_path: str | list[str] | None,
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
            outcomes.extend(ImageOutcome(Path(p).stem, p, "failed", reason=one_line(exc))
                            for p in chunk)
        bar.update(len(chunk))
    client.unregister_worker_plugin(plugin.name)
    return outcomes


# ----------------------------------------------------------------------------- reports
def merge_reports(outcomes: Sequence[ImageOutcome], *, recorded: dict[str, str],
                  old_types: dict[str, str], old_failed: Sequence[tuple[str, str, str]],
                  masks: set[str]) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """What ``cell_types.csv`` and ``failed.csv`` hold after a run: the whole folder, not the run.

    Parameters
    ----------
    outcomes : sequence of ImageOutcome
        This run's.
    recorded : dict of str to str
        Cell type of every image of the folder with an intact record and a mask file.
    old_types : dict of str to str
        The ``cell_types.csv`` found in the folder (rows of images without a record, e.g.
        written before records existed, are kept while their mask file is there).
    old_failed : sequence of (name, path, reason)
        The ``failed.csv`` found in the folder.
    masks : set of str
        Names of the folder's ``<name>_masks.tif`` files.

    Returns
    -------
    cell_types : dict of str to str
        Sorted by name: this run's images that did not fail (with this run's type), and every
        other image of the folder that is complete.
    failed : list of (name, path, reason)
        This run's failures, after those of earlier runs whose images were not in this run and
        are still not complete.
    """
    types = {name: t for name, t in old_types.items() if name in masks}
    types.update(recorded)
    for o in outcomes:
        if o.status == "failed":
            types.pop(o.name, None)
        else:
            types[o.name] = o.cell_type
    this_run = {o.name for o in outcomes}
    failed = [row for row in old_failed if row[0] not in this_run and row[0] not in types]
    failed += [(o.name, o.path, o.reason) for o in outcomes if o.status == "failed"]
    return dict(sorted(types.items())), failed


def _read_failed(path: Path) -> list[tuple[str, str, str]]:
    from flowseg.io.csvfile import open_csv

    with open_csv(path, "failure report") as reader:
        if reader.header[:3] != list(FAILED_COLUMNS):
            raise InputError(f"failure report {path}: expected the header "
                             f"{','.join(FAILED_COLUMNS)!r}, got {','.join(reader.header)!r}")
        return [(r["name"], r["path"], r["reason"]) for r in reader.records() if r["name"]]


def _old_report(read: Callable[[Path], _T], path: Path, empty: _T) -> _T:
    """An earlier report of the folder; ``empty`` (with a warning) when missing or unreadable."""
    if not path.is_file():
        return empty
    try:
        return read(path)
    except InputError as exc:
        log.warning("%s; rebuilding it from the folder's records", exc)
        return empty


def _recorded_types(out_dir: Path) -> dict[str, str]:
    """Cell type of each image of ``out_dir`` with an intact record and a mask file."""
    types = {}
    for path in sorted((out_dir / RECORD_DIR).glob("*.json")):
        record = None if path.name.startswith(".") else read_record(out_dir, path.stem)
        if record is not None and masks_path(out_dir, path.stem).is_file():
            types[path.stem] = record["cell_type"]
    return types


def _write_reports(out_dir: Path, outcomes: Sequence[ImageOutcome]) -> None:
    """``cell_types.csv`` and ``failed.csv`` (or none) of the whole folder: see
    :func:`merge_reports`."""
    from flowseg.io.folders import CELL_TYPES_FILE, read_cell_types, write_cell_types

    report = out_dir / FAILED_FILE
    types, failed = merge_reports(
        outcomes, recorded=_recorded_types(out_dir),
        old_types=_old_report(read_cell_types, out_dir / CELL_TYPES_FILE, {}),
        old_failed=_old_report(_read_failed, report, []),
        masks={p.name[:-len("_masks.tif")] for p in out_dir.glob("*_masks.tif")})
    write_cell_types(out_dir, types)
    earlier = len(failed) - sum(o.status == "failed" for o in outcomes)
    if earlier:
        log.info("%s also lists %d image(s) of earlier runs that are still not complete",
                 report, earlier)
    if not failed:
        report.unlink(missing_ok=True)
        return
    with atomic_path(report) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(FAILED_COLUMNS)
        writer.writerows(failed)


# ----------------------------------------------------------------------------- entry point
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
                  model_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                  client=None,
                  config: BatchConfig | None = None, overwrite: bool = False,
                  progress: bool = False) -> BatchResult:
    """Segment image files into ``out_dir``, in this process or on a Dask cluster.

    Parameters
    ----------
    paths : sequence of path-like
        Image files with distinct stems (outputs are named after the stem). Relative paths
        are made absolute here, so workers must see the same file system paths.
    out_dir : path-like
        Output folder (created; an existing file there is an InputError); on a cluster,
        writable by every worker.
    model_path : path-like or sequence of path-like, optional
        Checkpoint; None = the model shipped with flowseg; several: their ensemble
        (:func:`flowseg.api.load_model`). Workers load it from this path.
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
        failed, ``failed.csv``, both of the whole folder (see :func:`merge_reports`).

    Raises
    ------
    ValueError
        Before any image is read: duplicate image names, an ``out_dir`` that is a file, a
        ``config.tile`` the model cannot take, ``config.diameter`` for a model that records no
        training diameter; a model file that is not one (InputError).
    """
    from tqdm.auto import tqdm

    from flowseg.api import check_tile, choose_scales, load_model
    from flowseg.io.folders import check_out_folder

    config = BatchConfig() if config is None else config
    if not isinstance(config, BatchConfig):
        raise TypeError(f"config: expected a BatchConfig or None, got {type(config).__name__}")
    paths = _check_paths(paths)
    model_path = _absolute_model_path(model_path)
    out = check_out_folder(Path(out_dir).absolute(), "out_dir")
    settings = _settings(model_path, config)
    # Loaded here too: checks the file before any task runs, gives the class names.
    model = load_model(model_path, device="cpu" if client is not None else config.device)
    check_tile(config.tile, size_multiple=model.model_config.size_multiple)
    config.segment_config(model)  # unknown cell types or values fail here, before any image
    if config.diameter is not None:  # a model without a training diameter fails here
        choose_scales([], model, diameter=config.diameter)
    out.mkdir(parents=True, exist_ok=True)
    chunks = [paths[i:i + config.chunk] for i in range(0, len(paths), config.chunk)]
    with tqdm(total=len(paths), unit="img", disable=not progress) as bar:
        if client is None:
            outcomes = []
            for chunk in chunks:
                outcomes.extend(segment_chunk(chunk, out, model=model, config=config,
                                              settings=settings, overwrite=overwrite,
                                              progress=bar.update))
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
