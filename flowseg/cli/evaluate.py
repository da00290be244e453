"""``flowseg-evaluate``: score predicted instances with the Sartorius competition metric.

Usage::

    evaluate --truth train.csv|MASKS_DIR --pred MASKS_DIR|submission.csv --out REPORT_DIR [--ids DIR|FILE] [--quiet]
    evaluate tune --model M.pt --data VALDIR (--out M_tuned.pt | --in-place) [...]
    evaluate size --model M.pt --data DATADIR (--out M_sized.pt | --in-place) [...]

The ``tune`` subcommand (first argument ``tune``) is :mod:`flowseg.cli.tune`: per-cell-type
thresholds tuned on validation images and stored in the model file. The ``size`` subcommand
(:mod:`flowseg.cli.size`) fits the model's cell-size estimate on its training images.

Truth is a competition ``train.csv`` (instances scored as given, overlaps included) or a
Cellpose-style folder (``<name>_masks.tif`` beside ``<name>.tif``, optional
``cell_types.csv``; cell type ``unknown`` without it). Predictions are a folder of
``<id>_masks.tif`` files or a competition ``submission.csv``. Writes
``REPORT_DIR/per_image.csv`` and ``REPORT_DIR/summary.json`` and prints the mean score per
cell type. ``--ids`` scores a subset of the truth, e.g. the test fold of a ``data_prep`` split
against the competition's own ``train.csv`` (overlaps and holes as annotated). When the prediction folder holds a ``cell_types.csv`` (header ``name,cell_type``, as
``flowseg-segment`` writes it), each image's predicted cell type is added to ``per_image.csv``
(``pred_cell_type``), and a confusion table of true vs predicted image cell type is printed and
stored in ``summary.json`` (``cell_type_confusion``, ``cell_type_accuracy``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flowseg.cli._common import run_main, setup_logging
from flowseg.errors import InputError
from flowseg.evaluation import (TruthImage, check_prediction_ids, format_confusion_table,
                                format_summary_table, per_image_table, score_images, summarize)
from flowseg.io.atomic import atomic_path
from flowseg.io.folders import (CELL_TYPES_FILE, check_out_folder, list_folder, list_masks,
                                read_cell_types)
from flowseg.io.images import read_labels
from flowseg.io.sartorius import read_train_csv
from flowseg.io.submission import read_submission

__all__ = ["build_parser", "main", "run"]

logger = logging.getLogger("flowseg.evaluate")

PER_IMAGE_FILE = "per_image.csv"
SUMMARY_FILE = "summary.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flowseg-evaluate",
        description="Score predicted instances with the Sartorius metric: mean over IoU "
                    "thresholds 0.50:0.05:0.95 of TP/(TP+FP+FN), per image, overall and per "
                    "cell type.",
        epilog="To tune per-cell-type thresholds on validation images and store them in a "
               "model file: flowseg-evaluate tune --model M.pt --data VALDIR --out M_tuned.pt "
               "(see flowseg-evaluate tune --help).")
    p.add_argument("--truth", required=True, type=Path,
                   help="ground truth: a competition train.csv, or a Cellpose-style folder of "
                        "<name>_masks.tif (+ optional cell_types.csv)")
    p.add_argument("--pred", required=True, type=Path,
                   help="predictions: a folder of <id>_masks.tif, or a submission.csv "
                        "(header id,predicted)")
    p.add_argument("--out", required=True, type=Path,
                   help=f"report folder (created if missing): {PER_IMAGE_FILE}, {SUMMARY_FILE}")
    p.add_argument("--ids", type=Path,
                   help="score only these truth images: a folder (the names of its images, e.g. a "
                        "data_prep split such as prepared/test) or a text file of one id per line")
    p.add_argument("--quiet", action="store_true",
                   help="only warnings and errors: no progress bar, no table")
    return p


# --------------------------------------------------------------------------- truth


@dataclass(frozen=True)
class _TruthSource:
    """Ids of the truth images and how to load each one (loaded one at a time)."""

    ids: list[str]
    load: Callable[[str], TruthImage]
    shapes: Callable[[], dict[str, tuple[int, int]]]

    def images(self) -> Iterator[TruthImage]:
        return (self.load(image_id) for image_id in self.ids)


def _sartorius_truth(path: Path) -> _TruthSource:
    annotations = read_train_csv(path)
    if not annotations:
        raise InputError(f"truth {path}: no annotation rows")

    def load(image_id: str) -> TruthImage:
        a = annotations[image_id]
        return TruthImage(a.id, a.cell_type, a.shape, a.instance_indices())

    return _TruthSource(list(annotations), load, lambda: {i: a.shape for i, a in annotations.items()})


def _folder_truth(path: Path) -> _TruthSource:
    items = {item.name: item for item in list_folder(path, require_images=False)}
    if not items:
        raise InputError(f"truth {path}: no <name>_masks.tif files in the folder")

    def load(name: str) -> TruthImage:
        labels = read_labels(items[name].masks_path)
        return TruthImage(name, items[name].cell_type, labels.shape, labels)

    return _TruthSource(list(items), load, lambda: {n: load(n).shape for n in items})


def _truth_source(path: Path) -> _TruthSource:
    if path.is_dir():
        return _folder_truth(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _sartorius_truth(path)
    if not path.exists():
        raise InputError(f"truth {path}: no such file or folder")
    raise InputError(f"truth {path}: expected a train.csv file or a folder of *_masks.tif")


def _read_ids(path: Path) -> list[str]:
    """Image ids named by ``--ids``: a folder's image names, or a file's non-empty lines."""
    if path.is_dir():
        ids = [item.name for item in list_folder(path, require_images=False)]
    elif path.is_file():
        try:
            ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--ids {path}: cannot read it as UTF-8 text ({exc})") from None
    else:
        raise InputError(f"--ids {path}: no such file or folder")
    if not ids:
        raise InputError(f"--ids {path}: names no image (expected a folder of <name>_masks.tif "
                         "or a text file of one id per line)")
    return ids


def _restrict(truth: _TruthSource, ids: list[str], source: Path) -> _TruthSource:
    """``truth`` limited to ``ids`` (in truth order); every id must be in the truth."""
    unknown = sorted(set(ids) - set(truth.ids))
    if unknown:
        raise InputError(f"--ids {source}: {len(unknown)} id(s) not in the truth, e.g. {unknown[0]}")
    wanted = set(ids)
    return _TruthSource([i for i in truth.ids if i in wanted], truth.load, truth.shapes)


# --------------------------------------------------------------------------- predictions


class _LabelFiles(Mapping):
    """Read-on-access mapping of id to predicted label image (one file per id)."""

    def __init__(self, paths: Mapping[str, Path]):
        self._paths = dict(paths)

    def __getitem__(self, image_id: str) -> np.ndarray:
        return read_labels(self._paths[image_id])

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def _predictions(path: Path, truth: _TruthSource) -> Mapping[str, np.ndarray]:
    if path.is_dir():
        return _LabelFiles(list_masks(path))
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_submission(path, truth.shapes())
    if not path.exists():
        raise InputError(f"pred {path}: no such file or folder")
    raise InputError(f"pred {path}: expected a submission .csv file or a folder of *_masks.tif")


def _predicted_types(path: Path, truth_ids: list[str], pred_ids) -> dict[str, str] | None:
    """Predicted cell type per id from the prediction folder's sidecar (None without one)."""
    sidecar = path / CELL_TYPES_FILE
    if not path.is_dir() or not sidecar.is_file():
        return None
    types = read_cell_types(sidecar)
    extra = sorted(set(types) - set(truth_ids))
    if extra:
        raise InputError(f"{sidecar}: cell type(s) for {len(extra)} name(s) not in the truth: "
                         f"{', '.join(extra[:10])}")
    untyped = [i for i in pred_ids if i not in types]
    if untyped:
        logger.warning("%s: %d predicted image(s) have no cell type: %s", sidecar, len(untyped),
                       ", ".join(sorted(untyped)[:10]))
    return types


# --------------------------------------------------------------------------- report


def _write_report(out: Path, columns: list[str], rows: list[list], summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / PER_IMAGE_FILE) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    with atomic_path(out / SUMMARY_FILE) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["tune"]:
        from flowseg.cli import tune

        return tune.main(argv[1:])
    if argv[:1] == ["size"]:
        from flowseg.cli import size

        return size.main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    check_out_folder(args.out)
    truth = _truth_source(args.truth)
    if args.ids is not None:
        truth = _restrict(truth, _read_ids(args.ids), args.ids)
    preds = _predictions(args.pred, truth)
    check_prediction_ids(truth.ids, preds, source=f"pred {args.pred}")
    types = _predicted_types(args.pred, truth.ids, preds)
    results = score_images(truth.images(), preds, progress=lambda it: tqdm(
        it, total=len(truth.ids), desc="evaluate", unit="image", disable=args.quiet),
        pred_cell_types=types)
    summary = summarize(results)
    _write_report(args.out, *per_image_table(results), summary.to_json())
    logger.info("mean AP %.4f over %d images; wrote %s and %s", summary.overall.mean_ap,
                summary.overall.n_images, args.out / PER_IMAGE_FILE, args.out / SUMMARY_FILE)
    if not args.quiet:
        print(format_summary_table(summary))
        if summary.confusion is not None:
            print(f"\nimage cell type, true (rows) vs predicted (columns); accuracy "
                  f"{summary.type_accuracy:.4f}\n" + format_confusion_table(summary.confusion))
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    return run_main("flowseg-evaluate", main, argv)
