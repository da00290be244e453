"""``flowseg-evaluate size``: fit a model's size model on training images and store it.

Usage::

    flowseg-evaluate size --model M.pt --data DIR (--out M_sized.pt | --in-place)
                          [--val VALDIR] [--max-images 200] [--device auto] [--quiet]

``DIR`` is a ``data_prep`` output (``DIR/train``, and ``DIR/val`` for the error check) or one
Cellpose-style folder of training images with masks. The model's training cell diameter
(median over the masks, overall and per cell type) and the zoom regression of
:mod:`flowseg.size` are written into the model's metadata, so that ``flowseg-segment`` without
``--scale`` or ``--diameter`` estimates each image's cell size. ``flowseg-train`` does this at
the end of every run; this command adds it to a model trained before, or refits it.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from flowseg.cli._common import run_main, setup_logging
from flowseg.errors import InputError

__all__ = ["build_parser", "main", "run"]

logger = logging.getLogger("flowseg.size")


def build_parser() -> argparse.ArgumentParser:
    from flowseg.training.size_fit import SizeFitConfig

    default = SizeFitConfig()
    p = argparse.ArgumentParser(
        prog="flowseg-evaluate size",
        description="Measure a model's training cell diameter and fit its per-image cell-size "
                    "estimate on training images; store both in the model file.")
    p.add_argument("--model", required=True, type=Path, help="flowseg model file (.pt)")
    p.add_argument("--data", required=True, type=Path,
                   help="training images: a data_prep output (DIR/train, DIR/val) or one "
                        "Cellpose-style folder")
    p.add_argument("--val", type=Path, default=None,
                   help="validation folder for the error check (default: DIR/val when present)")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, help="write the model with its size model here")
    out.add_argument("--in-place", action="store_true", help="replace the input model file")
    p.add_argument("--max-images", type=int, default=default.max_images,
                   help=f"training images used, 3 zooms each (default {default.max_images})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from flowseg.api import load_model
    from flowseg.cli.train import data_folders
    from flowseg.data.dataset import load_folder
    from flowseg.model.checkpoint import save_model
    from flowseg.training.size_fit import SizeFitConfig, attach_size_model, fit_model_size

    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    out = args.model if args.in_place else args.out
    if not args.in_place and out.resolve() == args.model.resolve():
        raise InputError(f"--out {out}: is the input model; pass --in-place to replace it")
    if args.model.suffix != ".pt":
        raise InputError(f"--model {args.model}: expected a flowseg checkpoint (.pt); an exported "
                         "model cannot store a size model (fit it on the .pt, then export)")
    model = load_model(args.model, device=args.device)
    train_dir, val_dir = data_folders(args.data, args.val)
    train = load_folder(train_dir)
    if not train:
        raise InputError(f"{train_dir}: no <name>.tif + <name>_masks.tif pairs")
    val = load_folder(val_dir) if val_dir is not None else []
    size = fit_model_size(model, train, val, config=SizeFitConfig(max_images=args.max_images))
    save_model(out, attach_size_model(model, size))
    if not args.quiet:
        error = 100 * (math.exp(size.fit_error) - 1)
        print(f"training diameter {size.diameter:.1f} px ("
              + ", ".join(f"{k} {v:.1f}" for k, v in size.class_diameters.items())
              + f"); zoom estimate error {error:.1f} % (median, "
              + ("validation images" if val else "training images") + f"); wrote {out}")
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    return run_main("flowseg-evaluate size", main, argv)
