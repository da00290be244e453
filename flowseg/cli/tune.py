"""``flowseg-evaluate tune``: tune per-cell-type post-processing values on validation images.

Usage::

    flowseg-evaluate tune --model M.pt [--model M2.pt ...] --data VALDIR (--out M_tuned.pt | --in-place)
                          [--cellprob-grid -2,-1,0,1,2] [--flow-grid 0,0.2,0.4,0.6,0.8]
                          [--min-size-grid 0,15,30,60] [--min-flow-grid 0,0.3] [--min-gain 0]
                          [--class-source image|instance]
                          [--tta | --no-tta] [--batch-size 8] [--tile 256] [--scale 1]
                          [--device auto] [--precision auto] [--quiet]

``VALDIR`` is a Cellpose-style folder (``<name>.tif`` + ``<name>_masks.tif``) with a
``cell_types.csv`` naming each image's cell type. The network runs once over the images; every
grid point then costs post-processing only (:mod:`flowseg.tuning`). For each cell type the
values with the best mean competition score over its images are written into the model's
``segment_config.per_class`` — unless they beat the best single global values, which become the
config's global values, by no more than ``--min-gain`` on its images — (a new file, written
atomically; the input is replaced only with ``--in-place``), so ``segment(config=None)`` and ``flowseg-segment`` use them. Prints each cell
type's score before and after.

Several ``--model`` files are tuned as one ensemble (their maps averaged,
:mod:`flowseg.model.ensemble`) and written to ``--out`` as one ensemble file, which
``flowseg-segment --model`` takes like any model file.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from flowseg.api import DEFAULT_TILE, PredictConfig, check_image, load_model, predict_maps
from flowseg.cli._common import run_main, setup_logging
from flowseg.config import CLASS_SOURCES
from flowseg.errors import InputError
from flowseg.io.folders import CELL_TYPES_FILE, list_folder
from flowseg.io.images import read_image, read_labels
from flowseg.model.checkpoint import save_model
from flowseg.model.exported import exported_kind
from flowseg.predict import resolve_tta
from flowseg.tuning import DEFAULT_MIN_GAIN, TuningData, TuningGrid, TuningResult, tune

__all__ = ["build_parser", "main", "run", "format_tuning_table"]

logger = logging.getLogger("flowseg.tune")


def _numbers(kind: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__} values, got {text!r}") from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    default = TuningGrid()
    p = argparse.ArgumentParser(
        prog="flowseg-evaluate tune",
        description="Tune per-cell-type cellprob threshold, flow threshold and min size on "
                    "validation images and store them in the model file.")
    p.add_argument("--model", required=True, type=Path, action="append",
                   help="flowseg model file (.pt); repeat it to tune the ensemble of several "
                        "(maps averaged), written to --out as one file")
    p.add_argument("--data", required=True, type=Path,
                   help="validation folder: <name>.tif + <name>_masks.tif + cell_types.csv")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, help="write the tuned model here (not the input file)")
    out.add_argument("--in-place", action="store_true", help="replace the input model file")
    p.add_argument("--cellprob-grid", type=_numbers(float), default=default.cellprob_thresholds,
                   help="cell-probability logit thresholds to try (comma-separated; default "
                        f"{','.join(map(str, default.cellprob_thresholds))})")
    p.add_argument("--flow-grid", type=_numbers(float), default=default.flow_thresholds,
                   help="flow-error thresholds to try, 0 = no check (default "
                        f"{','.join(map(str, default.flow_thresholds))})")
    p.add_argument("--min-size-grid", type=_numbers(int), default=default.min_sizes,
                   help=f"minimum sizes to try (default {','.join(map(str, default.min_sizes))})")
    p.add_argument("--min-flow-grid", type=_numbers(float), default=(),
                   help="SegmentConfig.min_flow values to try, one for all classes (each repeats "
                        "the whole search; default: keep the model's)")
    p.add_argument("--min-gain", type=float, default=DEFAULT_MIN_GAIN,
                   help="mean score a class's own values must gain over the best global values "
                        f"on its images to be kept (default {DEFAULT_MIN_GAIN})")
    p.add_argument("--class-source", choices=CLASS_SOURCES, default=None,
                   help="whose cell type selects an instance's values (default: the model's)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="tune on flip-averaged maps (4x network cost) and record that choice in "
                        "the model, so flowseg-segment runs it with flips by default; --no-tta: "
                        "without (default: the model's own choice)")
    p.add_argument("--batch-size", type=int, default=8, help="network tiles per batch")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE, help="network tile side; 0 = whole images")
    p.add_argument("--scale", type=float, default=1.0,
                   help="resize the images by this factor before the network, as flowseg-segment "
                        "--scale will (default 1; min sizes are tuned in the network's pixels)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="network arithmetic, as flowseg-segment --precision (tune with the one you "
                        "segment with)")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return p


def _check_checkpoint(path: Path) -> None:
    """The tuned thresholds are written into a checkpoint: refuse an exported model before the
    search (``save_model`` would refuse it only at the end, minutes later)."""
    kind = exported_kind(path)
    if kind is not None:
        raise InputError(f"--model {path}: is an exported {kind} model; tuning needs a flowseg "
                         "checkpoint (.pt), e.g. the one it was exported from (export it again "
                         "after tuning)")


def _read_data(directory: Path, class_names: tuple[str, ...]):
    items = list_folder(directory)
    if not items:
        raise InputError(f"{directory}: no <name>.tif + <name>_masks.tif pairs")
    if not (directory / CELL_TYPES_FILE).is_file():
        raise InputError(f"{directory}: needs {CELL_TYPES_FILE} (header name,cell_type) naming "
                         f"each image's cell type, one of {list(class_names)}")
    unknown = sorted({i.cell_type for i in items} - set(class_names))
    if unknown:
        logger.warning("%s: cell type(s) %s are not classes of the model %s: their images are "
                       "scored but tune no class", directory, unknown, list(class_names))
    return items


def format_tuning_table(result: TuningResult) -> str:
    """One line per cell type: images, score before and after, tuned values (own or global)."""
    head = (f"{'cell type':<12} {'images':>6} {'before':>7} {'after':>7} {'cellprob':>8} "
            f"{'flow':>5} {'min_size':>8} values")
    lines = [head]
    for c in result.per_class.values():
        v = c.values
        lines.append(f"{c.cell_type:<12} {c.n_images:>6} {c.before:>7.4f} {c.after:>7.4f} "
                     f"{v.cellprob_threshold:>8.2f} {v.flow_threshold:>5.2f} {v.min_size:>8d} "
                     + ("own" if c.own else "global"))
    n = sum(c.n_images for c in result.per_class.values())
    lines += ["-" * len(head), f"{'all':<12} {n:>6} {result.before:>7.4f} {result.after:>7.4f}"
              f"   min_flow {result.config.min_flow:g}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    for path in args.model:
        _check_checkpoint(path)
    if args.in_place and len(args.model) > 1:
        raise InputError("--in-place: several --model files are tuned as a new ensemble; write "
                         "it with --out ENSEMBLE.pt")
    out = args.model[0] if args.in_place else args.out
    if not args.in_place and out.resolve() in {m.resolve() for m in args.model}:
        raise InputError(f"--out {out}: is an input model; pass --in-place to replace it")
    grid = TuningGrid(args.cellprob_grid, args.flow_grid, args.min_size_grid, args.min_flow_grid)
    model = load_model(args.model if len(args.model) > 1 else args.model[0], device=args.device)
    items = _read_data(args.data, model.class_names)
    images = [check_image(read_image(i.image_path), model.model_config.in_channels,
                          f"image {i.image_path}") for i in items]
    predict = PredictConfig(batch_size=args.batch_size, tile=args.tile, tta=args.tta,
                            precision=args.precision)
    tta = resolve_tta(predict, model)
    maps = predict_maps(images, model, predict=predict, scale=args.scale)
    data = TuningData(maps, [read_labels(i.masks_path) for i in items],
                      tuple(i.cell_type for i in items), model.class_names, scale=args.scale)
    config = model.segment_config
    if args.class_source is not None:
        config = dataclasses.replace(config, class_source=args.class_source)
    result = tune(data, config=config, grid=grid, min_gain=args.min_gain, batch_size=args.batch_size,
                  progress=lambda it: tqdm(it, desc="tune", unit="threshold", disable=args.quiet))
    model.segment_config = result.config
    model.tta = tta
    model.metadata = {**model.metadata, "tuning": {
        "data": str(args.data), "n_images": len(items), "tta": tta, "before": result.before,
        "after": result.after, "n_trials": result.n_trials}}
    if len(args.model) > 1:
        model.metadata["ensemble_sources"] = [str(m) for m in args.model]
    save_model(out, model)
    logger.info("score %.4f -> %.4f over %d images (%d grid points, %.1f s); wrote %s",
                result.before, result.after, len(items), result.n_trials, result.seconds, out)
    if not args.quiet:
        print(format_tuning_table(result))
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    return run_main("flowseg-evaluate tune", main, argv)
