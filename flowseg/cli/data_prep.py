"""The ``data_prep`` program: turn a source data set into Cellpose-style train/val folders.

Examples
--------
``data_prep sartorius --csv train.csv --images train/ --out prepared/ --fill-holes``
``data_prep sartorius --csv train.csv --train-only-csv extra.csv --images train/ --out prepared/
--val-fraction 0.1 --test-fraction 0.2`` (train/val/test folders)
``data_prep coco --json livecell_train.json --images images/ --out prepared/``
``data_prep usiigaci --root usiigaci/ --out prepared/``
``data_prep pseudo --images unlabelled/ --out pseudo/ --cell-type shsy5y`` (pseudo-labels by
the shipped model, or ``--model M.pt``, repeatable for an ensemble; train with
``flowseg-train --pseudo pseudo/``)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from flowseg.cli._common import run_main, setup_logging
from flowseg.errors import InputError
from flowseg.io.folders import check_out_folder
from flowseg.io.prep import PrepItem, coco_items, format_summary, prepare_dataset, sartorius_items, usiigaci_items
from flowseg.rescale import check_scale

__all__ = ["build_parser", "main", "run"]

#: The record of a pseudo-label folder: options and per-image counts.
PSEUDO_FILE = "pseudo.json"
#: Images segmented by the teacher at once (their maps are held in memory).
PSEUDO_CHUNK = 8


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


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _add_pseudo(sub) -> None:
    from flowseg.training.pseudo import PseudoConfig

    d = PseudoConfig()
    p = sub.add_parser(
        "pseudo", help="pseudo-labels: a teacher model's confident cells on unlabelled images",
        description="Segment unlabelled images with a teacher model (or ensemble) and write a "
                    "training folder of its confident instances (<name>_masks.tif), an ignore "
                    "mask of where it was unsure (<name>_ignore.tif: no loss there) and "
                    "cell_types.csv; train with flowseg-train --pseudo OUT.")
    p.add_argument("--images", required=True, nargs="+",
                   help="image files, or folders of images (outputs such as *_masks.* skipped)")
    p.add_argument("--model", action="append", default=None,
                   help="teacher checkpoint (default: the model shipped with flowseg); repeat "
                        "for an ensemble")
    p.add_argument("--out", required=True, type=Path, help="output folder (Cellpose-style)")
    p.add_argument("--cell-type", help="cell type of every image (default: the teacher's "
                                       "image cell type)")
    p.add_argument("--min-score", type=_probability, default=d.min_score,
                   help=f"keep an instance whose teacher score (mean cell probability x class "
                        f"probability) is at least this (default {d.min_score})")
    p.add_argument("--max-flow-error", type=float, default=d.max_flow_error,
                   help=f"keep an instance whose flow error is at most this (default "
                        f"{d.max_flow_error})")
    p.add_argument("--background-prob", type=_probability, default=d.background_prob,
                   help=f"outside kept instances, teach background only where the teacher's "
                        f"cell probability is at most this; ignore the rest (default "
                        f"{d.background_prob})")
    p.add_argument("--margin", type=int, default=d.margin,
                   help=f"also ignore this many pixels around dropped instances (default {d.margin})")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="teacher with (or without) flip test-time augmentation (default: as the "
                        "teacher model chose when it was tuned)")
    p.add_argument("--scale", type=_scale, default=None,
                   help="resize images by this factor before the teacher (default: as "
                        "flowseg-segment); 1 for images at the teacher's training magnification")
    p.add_argument("--batch-size", type=int, default=8, help="network tiles per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="teacher arithmetic (as flowseg-segment --precision)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")


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
    _add_pseudo(sub)
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


def _pseudo(args: argparse.Namespace) -> int:
    """``data_prep pseudo``: teacher pseudo-labels into a Cellpose-style folder + pseudo.json."""
    from tqdm import tqdm

    from flowseg.api import PredictConfig, load_model
    from flowseg.cli.segment import find_images
    from flowseg.io.folders import write_cell_types, write_folder_item
    from flowseg.io.images import read_image
    from flowseg.io.prep import replacing_folder
    from flowseg.training.pseudo import PseudoConfig, pseudo_label

    config = PseudoConfig(min_score=args.min_score, max_flow_error=args.max_flow_error,
                          background_prob=args.background_prob, margin=args.margin)
    predict = PredictConfig(batch_size=args.batch_size, tta=args.tta, precision=args.precision)
    paths = find_images(args.images)
    teachers = args.model or [None]  # None: the shipped model; several: their ensemble
    model = load_model(teachers[0] if len(teachers) == 1 else teachers, device=args.device)
    cell_types, rows = {}, []
    with replacing_folder(args.out, overwrite=args.overwrite, sources=paths) as tmp:
        bar = tqdm(total=len(paths), desc="pseudo-labels", unit="image", disable=args.quiet)
        for start in range(0, len(paths), PSEUDO_CHUNK):
            chunk = paths[start:start + PSEUDO_CHUNK]
            images = [read_image(p) for p in chunk]
            found = pseudo_label(images, model, config=config, predict=predict, scale=args.scale)
            for path, image, pseudo in zip(chunk, images, found):
                cell_types[path.stem] = args.cell_type or pseudo.cell_type
                write_folder_item(tmp, path.stem, image, pseudo.labels, cell_types[path.stem],
                                  ignore=pseudo.ignore)
                rows.append({"name": path.stem, "teacher_cell_type": pseudo.cell_type,
                             "teacher_instances": len(pseudo.kept), "kept": pseudo.n_kept,
                             "ignored_fraction": round(float(pseudo.ignore.mean()), 4)})
            bar.update(len(chunk))
        bar.close()
        write_cell_types(tmp, cell_types)
        record = {"options": {k: _plain(v) for k, v in vars(args).items()},
                  "config": dataclasses.asdict(config), "images": rows}
        (tmp / PSEUDO_FILE).write_text(json.dumps(record, indent=2) + "\n")
    if not args.quiet:
        print(_pseudo_summary(rows))
    return 0


def _pseudo_summary(rows: Sequence[dict]) -> str:
    teacher = sum(r["teacher_instances"] for r in rows)
    kept = sum(r["kept"] for r in rows)
    ignored = sum(r["ignored_fraction"] for r in rows) / max(len(rows), 1)
    return (f"{len(rows)} images: kept {kept} of the teacher's {teacher} instances "
            f"({kept / max(teacher, 1):.0%}); {ignored:.1%} of the pixels ignored (mean)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``data_prep``; returns the exit status (user errors raise, see ``run``)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    check_out_folder(args.out)
    if args.source == "pseudo":
        return _pseudo(args)
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
