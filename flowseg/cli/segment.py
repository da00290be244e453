"""``flowseg-segment``: segment images with a model; write masks, overlays and a submission.

    flowseg-segment --demo --out DIR          # the shipped samples with the shipped model
    flowseg-segment IMAGES...|DIR [--model PATH [--model PATH2 ...]] --out DIR
                    [--tta | --no-tta] [--overlay]
                    [--diameter PX | --scale F]
                    [--save-seg] [--save-rois] [--save-outlines] [--save-png] [--save-flows]
                    [--save-coco] [--channel N] [--stitch-threshold 0.25]
                    [--cellprob-threshold X|TYPE:X,...] [--flow-threshold ...] [--min-size ...]
                    [--submission submission.csv] [--batch-size 8] [--device auto]
                    [--dask SCHEDULER_ADDRESS|local [--workers N]] [--chunk 8] [--overwrite]

Writes ``<name>_masks.tif`` (and ``<name>_overlay.png``, and cellpose's files with the
``--save-*`` options: :mod:`flowseg.io.outputs`) per image, ``cell_types.csv`` (the
predicted cell type of every complete image in ``--out``, earlier runs' included) and, when
images failed, ``failed.csv`` into ``--out``; prints a table of cells per image and type.
Images whose outputs are complete from an earlier run are skipped (``--overwrite`` redoes them;
a damaged output is redone). A failed image (unreadable, damaged, other channels) is reported
and the others go on; the exit code is 1 when any of this run failed, 2 on a user error before
any image is segmented (bad option, model file, ``--out`` that is a file).
``--dask`` maps chunks of images over a Dask cluster
(``local``: a cluster of ``--workers`` processes on this machine); see :mod:`flowseg.batch`.
A colour or multichannel image is segmented on the channel that ``--channel`` picks; a
z-stack plane by plane, its cells linked across planes (``--stitch-threshold``).
Without ``--diameter`` or ``--scale`` each image's cell size is estimated (the model's size
model, :mod:`flowseg.size`) and images whose cells look more than 25 % larger or smaller than
the model's training cells are resized; the table shows each image's scale and diameter.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flowseg.cli._common import HelpFormatter, VersionAction, run_main, setup_logging
from flowseg.errors import InputError
from flowseg.io.images import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from flowseg.batch import BatchConfig

log = logging.getLogger(__name__)

#: Images per task (held in memory and segmented together).
CHUNK = 8
#: Stems of outputs (of flowseg and cellpose) that a folder of inputs does not segment again.
OUTPUT_STEM_ENDINGS = ("_masks", "_overlay", "_flows", "_cp_masks", "_outlines")
#: ``--save-*`` options and the output kinds they ask for (:mod:`flowseg.io.outputs`).
SAVE_OPTIONS = {
    "seg": "cellpose GUI file <name>_seg.npy (masks, outlines, flows, ...): open it in "
           "cellpose's GUI to correct the masks, then train on it",
    "rois": "ImageJ/Fiji ROI set <name>_rois.zip (one polygon per cell, named by its id)",
    "outlines": "cellpose's outlines text <name>_cp_outlines.txt (x1,y1,x2,y2,... per cell; "
                "cellpose's --save_txt)",
    "png": "16-bit PNG masks <name>_cp_masks.png",
    "flows": "<name>_flows.tif: labels, cell probability, dy, dx (cellpose's flows layout)",
    "coco": "<name>_coco.json: COCO json, RLE masks, category = cell type, score = instance score",
}


def per_type(kind: type, option: str):
    """An argparse type for ``VALUE`` (every cell type) or ``TYPE:VALUE,TYPE:VALUE``."""
    def parse(text: str):
        try:
            if ":" not in text:
                return kind(text)
            pairs = [item.split(":") for item in text.split(",") if item.strip()]
            if not pairs or any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
                raise ValueError(text)
            return {name.strip(): kind(value) for name, value in pairs}
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a {kind.__name__} for every cell type (e.g. {option} 0.5) or "
                f"TYPE:VALUE pairs (e.g. astro:0.5,cort:0.2), got {text!r}") from None
    parse.__name__ = f"{kind.__name__} or TYPE:{kind.__name__},..."
    return parse


def channels(text: str) -> int | tuple[int, ...]:
    """``--channel``: ``N`` or ``N,M,...`` (1 = first channel; 0 = all merged to gray)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a channel number (1 = first; 0 = all merged "
                                         f"to gray) or numbers like 1,2, got {text!r}") from None
    return values[0] if len(values) == 1 else values


def _add_input_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("channels and z-stacks")
    g.add_argument("--channel", type=channels, default=None, metavar="N",
                   help="channel to segment, numbered from 1 as cellpose's --chan and Fiji do "
                        "(RGB: 1 red, 2 green, 3 blue); 0 merges all channels to gray; N,M for "
                        "a model of 2 channels. Default: the image as it is (a colour image "
                        "for a 1-channel model is an error naming the file)")
    g.add_argument("--channel-axis", type=int, default=None, metavar="AXIS",
                   help="axis of the file's array that holds the channels (default: from the "
                        "TIF metadata; colour PNG/TIF samples)")
    g.add_argument("--z-axis", type=int, default=None, metavar="AXIS",
                   help="axis of the file's array that holds the planes of a z-stack (default: "
                        "from the TIF metadata, e.g. ImageJ hyperstacks)")
    g.add_argument("--stitch-threshold", type=float, default=0.25, metavar="IOU",
                   help="z-stacks: each plane is segmented in 2-D and a cell takes the id of "
                        "the cell below it when their IoU is at least this (cellpose's "
                        "stitch3D); 0 links nothing. Full 3-D flows are not offered")


def _add_segment_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("post-processing (default: the model's tuned values per cell type; "
                             "a value changes it for every type, TYPE:VALUE pairs for those types)")
    g.add_argument("--cellprob-threshold", type=per_type(float, "--cellprob-threshold"),
                   default=None, metavar="X|TYPE:X,...",
                   help="cell-probability logit threshold; lower finds more and larger cells")
    g.add_argument("--flow-threshold", type=per_type(float, "--flow-threshold"), default=None,
                   metavar="X|TYPE:X,...",
                   help="largest flow error of a cell (0 turns the check off); higher keeps more")
    g.add_argument("--min-size", type=per_type(int, "--min-size"), default=None,
                   metavar="N|TYPE:N,...", help="smallest cell in pixels as the network sees it: an image resized by "
                        "--scale S (or an estimated scale) needs N / S^2 of its own (0 keeps all)")
    g.add_argument("--exclude-on-edges", action="store_true",
                   help="drop cells that touch the image border")
    g.add_argument("--no-norm", action="store_true",
                   help="do not normalise images (for images already scaled to about 0..1)")
    g.add_argument("--norm-percentile", type=float, nargs=2, default=(1.0, 99.0),
                   metavar=("LOW", "HIGH"),
                   help="percentiles of each image mapped to 0 and 1 before the network "
                        "(default: 1 99)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowseg-segment", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="*",
                   help="image files, or folders of images (outputs such as *_masks.* skipped)")
    p.add_argument("--demo", action="store_true",
                   help="segment the sample images shipped with flowseg (implies --overlay)")
    p.add_argument("--model", action="append", default=None,
                   help="checkpoint (.pt); default: the model shipped with flowseg. Repeat it for "
                        "an ensemble (maps averaged; the first file's thresholds: tune the "
                        "ensemble into one file with flowseg-evaluate tune --model A --model B "
                        "--out ENS.pt)")
    p.add_argument("--out", required=True, help="output folder for <name>_masks.tif (and overlays)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="flip test-time augmentation (4x network cost); default: as the model "
                        "chose when it was tuned (the shipped model: on)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--diameter", type=float, default=None,
                      help="mean cell diameter in the images, in pixels: images are resized by "
                           "the model's training diameter / DIAMETER (default: estimated per "
                           "image; the choice is in each image's record)")
    size.add_argument("--scale", type=float, default=None,
                      help="resize images by this factor before the network, e.g. 0.5 for cells "
                           "twice the diameter of the model's training cells (masks keep the "
                           "image size; default: estimated per image)")
    p.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png (outlines by cell type)")
    p.add_argument("--submission", default=None, help="also write a competition submission CSV here")
    p.add_argument("--batch-size", type=int, default=8, help="network tiles per forward pass")
    p.add_argument("--tile", type=int, default=None,
                   help="network tile side in pixels, a multiple of the model's size multiple "
                        "(8 for the default model); 0 = whole images, untiled (default: "
                        "flowseg.api.DEFAULT_TILE = 256)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="network arithmetic: auto (default) = bf16 on CUDA and on CPUs with native "
                        "bf16 (AVX-512 BF16 / AMX), float32 elsewhere; fp32 = always float32")
    p.add_argument("--dask", default=None, metavar="SCHEDULER_ADDRESS|local",
                   help="run on a Dask cluster: a scheduler address (tcp://host:8786) or 'local' "
                        "(a cluster of --workers processes on this machine)")
    p.add_argument("--workers", type=int, default=2, help="worker processes of --dask local (default 2)")
    p.add_argument("--chunk", type=int, default=CHUNK, help=f"images per task (default {CHUNK})")
    p.add_argument("--overwrite", action="store_true", help="redo images whose outputs are complete")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    p.add_argument("--verbose", action="store_true", help="debug messages, Dask's log lines too")
    p.add_argument("--version", action=VersionAction)
    g = p.add_argument_group("cellpose outputs (per image, into --out; a re-run adds missing ones)")
    for kind, text in SAVE_OPTIONS.items():
        g.add_argument(f"--save-{kind}", action="store_true", help=text)
    _add_input_options(p)
    _add_segment_options(p)
    return p


def find_images(inputs: Sequence[str]) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of image files."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.stem.endswith(OUTPUT_STEM_ENDINGS)
                           and not p.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image file or folder")
    stems = Counter(p.stem for p in paths)
    dup = sorted(s for s, c in stems.items() if c > 1)
    if dup:
        raise ValueError(f"inputs: several images share the name(s) {dup[:5]}; outputs would collide")
    return list(dict.fromkeys(paths))


def _size_text(scale: float | None, diameter: float | None) -> str:
    if scale is None:
        return f"{'-':>7} {'-':>8}"
    return f"{scale:>7.3g} " + (f"{'-':>8}" if diameter is None else f"{diameter:>8.1f}")


def print_summary(rows: list[tuple], class_names: Sequence[str]) -> None:
    """Cells per image (by type), the scale each was segmented at and the cell diameter (px)
    it corresponds to, and totals per type, as a table on stdout.

    ``rows``: ``(name, image_type, counts)`` or ``(name, image_type, counts, scale, diameter)``.
    """
    names = list(class_names)
    width = max([len("image")] + [len(r[0]) for r in rows])
    print(f"{'image':<{width}}  {'type':<10} {'cells':>6}  " + " ".join(f"{n:>8}" for n in names)
          + f"  {'scale':>7} {'diameter':>8}")
    total = Counter()
    for name, image_type, counts, *size in rows:
        total.update(counts)
        print(f"{name:<{width}}  {image_type:<10} {sum(counts.values()):>6}  "
              + " ".join(f"{counts.get(n, 0):>8}" for n in names)
              + "  " + _size_text(*(size or (None, None))))
    print(f"{'total':<{width}}  {'':<10} {sum(total.values()):>6}  "
          + " ".join(f"{total.get(n, 0):>8}" for n in names))


def _client(dask: str | None, workers: int, verbose: bool = False):
    """A context manager yielding the Dask client of ``--dask`` (None without it). The worker
    processes of ``local`` log errors only, unless ``verbose``."""
    import contextlib
    import os

    from flowseg import batch

    if dask is None:
        return contextlib.nullcontext(None)
    if not verbose:  # read by the worker processes, which start with this environment
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    if workers < 1:
        raise InputError(f"--workers: expected an int >= 1, got {workers}")
    try:
        batch.require_distributed()
    except ModuleNotFoundError as exc:
        raise InputError(f"--dask: {exc}") from None
    return batch.local_client(workers) if dask == "local" else batch.connect(dask)


def _worker_threads(args: argparse.Namespace) -> int | None:
    """``--dask local``: the machine's cores shared among the workers; else torch's default."""
    import os

    if args.dask != "local" or args.workers < 1:
        return None
    return max(1, (os.cpu_count() or 1) // args.workers)


def _write_submission(path: str, out: Path, names: Sequence[str]) -> None:
    """The competition CSV from the written mask files."""
    from flowseg.batch import masks_path
    from flowseg.io.images import read_labels
    from flowseg.io.submission import write_submission

    write_submission(path, ((name, read_labels(masks_path(out, name))) for name in names))


def segment_overrides(args: argparse.Namespace) -> dict:
    """The ``SegmentConfig.override`` values the options ask for (none: the model's)."""
    values = {name: getattr(args, name) for name in
              ("cellprob_threshold", "flow_threshold", "min_size")
              if getattr(args, name) is not None}
    if args.exclude_on_edges:
        values["exclude_on_edges"] = True
    return values


def batch_config(args: argparse.Namespace) -> BatchConfig:
    """The :class:`~flowseg.batch.BatchConfig` of the options."""
    from flowseg.api import DEFAULT_TILE
    from flowseg.batch import BatchConfig

    return BatchConfig(device=args.device, batch_size=args.batch_size,
                       tile=DEFAULT_TILE if args.tile is None else args.tile, tta=args.tta,
                       scale=args.scale, diameter=args.diameter, overlay=args.overlay,
                       chunk=args.chunk,
                       worker_threads=_worker_threads(args), precision=args.precision,
                       save=tuple(k for k in SAVE_OPTIONS if getattr(args, f"save_{k}")),
                       segment=segment_overrides(args),
                       normalize=None if args.no_norm else tuple(args.norm_percentile),
                       channel=args.channel, channel_axis=args.channel_axis,
                       z_axis=args.z_axis, stitch_threshold=args.stitch_threshold)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet, args.verbose)
    from flowseg.batch import segment_files
    from flowseg.io.folders import check_out_folder

    out = check_out_folder(args.out)

    if args.demo:
        from flowseg.model.pretrained import sample_paths

        args.overlay = True
        paths = find_images([*map(str, sample_paths()), *args.inputs])
    elif not args.inputs:
        raise ValueError("inputs: expected image files or folders (or --demo for the shipped samples)")
    else:
        paths = find_images(args.inputs)
    config = batch_config(args)
    model = args.model[0] if args.model and len(args.model) == 1 else args.model
    if isinstance(model, list):
        log.warning("%d --model files: segmenting with their ensemble and the thresholds of %s; "
                    "for thresholds tuned on the ensemble, write it with flowseg-evaluate tune "
                    "--model ... --data VAL --out ENS.pt", len(model), model[0])
    with _client(args.dask, args.workers, args.verbose) as client:
        result = segment_files(paths, out, model_path=model, client=client, config=config,
                               overwrite=args.overwrite, progress=not args.quiet)
    ok = [o for o in result.outcomes if o.status != "failed"]
    if args.submission:
        _write_submission(args.submission, out, [o.name for o in ok])
    print_summary([(o.name, o.cell_type, Counter(o.counts), o.scale, o.diameter) for o in ok],
                  result.class_names)
    skipped = len(result.with_status("skipped"))
    print(f"{len(ok) - skipped} segmented, {skipped} skipped (complete), "
          f"{len(result.failed)} failed")
    for o in result.failed:
        print(f"failed: {o.name}: {o.reason}")
    return 1 if result.failed else 0


def run(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    return run_main("flowseg-segment", main, argv)
