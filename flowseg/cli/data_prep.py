"""The ``data_prep`` program: turn a source data set into Cellpose-style train/val folders.

Examples
--------
``data_prep sartorius --csv train.csv --images train/ --out prepared/ --fill-holes``
``data_prep sartorius --csv train.csv --train-only-csv extra.csv --images train/ --out prepared/
--val-fraction 0.1 --test-fraction 0.2`` (train/val/test folders)
``data_prep coco --json livecell_train.json --images images/ --out prepared/``
``data_prep usiigaci --root usiigaci/ --out prepared/``
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from flowseg.cli._common import run_main, setup_logging
from flowseg.data.rescale import check_scale
from flowseg.errors import InputError
from flowseg.io.folders import check_out_folder
from flowseg.io.prep import PrepItem, coco_items, format_summary, prepare_dataset, sartorius_items, usiigaci_items

__all__ = ["build_parser", "main", "run"]


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _scale(text: str) -> float:
    try:
        return check_scale(float(text))
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("scale: ", "")) from None


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder: OUT/train/, OUT/val/ (Cellpose-style) and OUT/prep.json")
    parser.add_argument("--fill-holes", action="store_true",
                        help="fill holes enclosed by each instance (hollow astro annotations)")
    parser.add_argument("--val-fraction", type=_fraction, default=0.2,
                        help="fraction of each cell type's images for validation (default 0.2; a "
                             "cell type with >= 2 images gets >= 1 val image, one with 1 image none)")
    parser.add_argument("--test-fraction", type=_fraction, default=0.0,
                        help="fraction of each cell type's images for OUT/test, a fold held out of "
                             "every choice (checkpoints, thresholds) to report final scores on "
                             "(default 0: no test folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split (default 0)")
    parser.add_argument("--scale", type=_scale, default=1.0,
                        help="resize images and masks by this factor (default 1: unchanged), e.g. "
                             "0.5 to halve cells twice the size of the ones the model should see")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary table")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``data_prep`` (one sub-command per source format)."""
    parser = argparse.ArgumentParser(
        prog="data_prep",
        description="Convert annotated images into OUT/train and OUT/val folders of "
                    "<name>.tif + <name>_masks.tif + cell_types.csv, split by cell type.")
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    p = sub.add_parser("sartorius", help="Kaggle Sartorius train.csv + PNG folder")
    p.add_argument("--csv", required=True, type=Path, help="competition train.csv")
    p.add_argument("--images", required=True, type=Path, help="folder of <id>.png")
    p.add_argument("--train-only-csv", type=Path, action="append", default=[], metavar="CSV",
                   help="more annotations in train.csv format whose images always go to train and "
                        "are never scored (e.g. incomplete, visible-part-only masks); repeatable")
    _add_common(p)
    p = sub.add_parser("coco", help="COCO instances json (LIVECell format)")
    p.add_argument("--json", required=True, type=Path, help="COCO annotation file")
    p.add_argument("--images", required=True, type=Path, help="folder holding each image's file_name")
    _add_common(p)
    p = sub.add_parser("usiigaci", help="Usiigaci setN/raw.tif + setN/instances_ids.png")
    p.add_argument("--root", required=True, type=Path, help="folder holding set1/, set2/, ...")
    _add_common(p)
    return parser


def _plain(value):
    """An option value as JSON can hold it (paths as strings, lists of paths as lists)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def _check_new_names(items: Sequence[PrepItem], extra: Sequence[PrepItem], csv: Path) -> None:
    """An image may be annotated in one csv only."""
    known = {i.name for i in items}
    both = sorted(i.name for i in extra if i.name in known)
    if both:
        raise InputError(f"--train-only-csv {csv}: {len(both)} image(s) already annotated in another "
                         f"csv, e.g. {both[0]}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``data_prep``; returns the exit status (user errors raise, see ``run``)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    check_out_folder(args.out)
    train_only: list[str] = []
    if args.source == "sartorius":
        items = sartorius_items(args.csv, args.images, fill_holes=args.fill_holes)
        for csv in args.train_only_csv:
            extra = sartorius_items(csv, args.images, fill_holes=args.fill_holes)
            _check_new_names(items, extra, csv)
            items += extra
            train_only += [i.name for i in extra]
        sources = [args.csv, args.images, *args.train_only_csv]
    elif args.source == "coco":
        items = coco_items(args.json, args.images, fill_holes=args.fill_holes)
        sources = [args.json, args.images]
    else:
        items = usiigaci_items(args.root, fill_holes=args.fill_holes)
        sources = [args.root]
    options = {k: _plain(v) for k, v in vars(args).items()}
    result = prepare_dataset(items, args.out, val_fraction=args.val_fraction,
                             test_fraction=args.test_fraction, train_only=train_only, seed=args.seed,
                             scale=args.scale, overwrite=args.overwrite, options=options, sources=sources,
                             progress=not args.quiet)
    if not args.quiet:
        print(format_summary(result))
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``flowseg-data-prep``)."""
    return run_main("flowseg-data-prep", main, argv)
