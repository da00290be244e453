"""``flowseg-export``: write a model's network as ONNX and/or TorchScript for serving.

    flowseg-export [--model default|PATH] [--onnx OUT.onnx] [--torchscript OUT.ts]
                   [--opset 17] [--no-verify] [--overwrite] [--quiet]

Each output gets its metadata beside it (``OUT.onnx.json``, ``OUT.ts.json``: model config,
class names, tuned thresholds, input normalisation, output meanings) and embedded in it; both
load back with ``flowseg.load_model(OUT)`` and ``flowseg-segment --model OUT``. Every export is
first run on probe inputs and compared with the torch network (``--no-verify`` skips this);
a file is written whole or not at all. Needs ``pip install 'flowseg[export]'`` for ONNX.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from flowseg.cli._common import run_main, setup_logging

__all__ = ["build_parser", "main", "run"]

log = logging.getLogger("flowseg.export")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    from flowseg.model.export import DEFAULT_OPSET, DEFAULT_TOLERANCE, OPSETS

    p = argparse.ArgumentParser(prog="flowseg-export", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default",
                   help="flowseg checkpoint (.pt) to export; default: the model shipped with flowseg")
    p.add_argument("--onnx", type=Path, metavar="OUT.onnx", help="write the network as ONNX here")
    p.add_argument("--torchscript", type=Path, metavar="OUT.ts",
                   help="write the network as TorchScript here (.ts; model.pt for Triton loads too)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, {OPSETS.start}-{OPSETS.stop - 1} (default {DEFAULT_OPSET})")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help=f"skip running the export against the torch network (by default an export "
                        f"whose maps differ by more than {DEFAULT_TOLERANCE:g} is not written)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    return p


def _check_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.onnx is None and args.torchscript is None:
        parser.error("nothing to write: give --onnx OUT.onnx and/or --torchscript OUT.ts")
    if args.onnx is not None and args.onnx == args.torchscript:
        parser.error(f"--onnx and --torchscript name the same file {args.onnx}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the program; returns the exit code."""
    from flowseg.api import load_model
    from flowseg.model.export import export_onnx, export_torchscript

    parser = build_parser()
    args = parser.parse_args(argv)
    _check_outputs(parser, args)
    setup_logging(args.quiet)
    model = load_model(None if args.model == "default" else args.model, device="cpu")
    options = {"verify": args.verify, "overwrite": args.overwrite}
    results = []
    if args.onnx is not None:
        results.append(export_onnx(model, args.onnx, opset=args.opset, **options))
    if args.torchscript is not None:
        results.append(export_torchscript(model, args.torchscript, **options))
    for result in results:
        checked = ("not checked" if result.max_difference is None else
                   f"max |exported - torch| = {result.max_difference:.2g} on the probe inputs")
        log.info("wrote %s and %s (%s)", result.path, result.metadata_path, checked)
    return 0


def run() -> int:
    """Console-script entry point."""
    try:
        return run_main("flowseg-export", main)
    except ModuleNotFoundError as exc:  # onnx / onnxruntime not installed: say how to get them
        print(f"flowseg-export: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
