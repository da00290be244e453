"""``flowseg-segment``: segment images with a model; write masks, overlays and a submission.

    flowseg-segment --demo --out DIR          # the shipped samples with the shipped model
    flowseg-segment IMAGES...|DIR [--model PATH] --out DIR [--tta] [--overlay]
                    [--submission submission.csv] [--batch-size 8] [--device auto]
                    [--dask SCHEDULER_ADDRESS|local [--workers N]] [--chunk 8] [--overwrite]

Writes ``<name>_masks.tif`` (and ``<name>_overlay.png``) per image, ``cell_types.csv`` (the
predicted cell type of every complete image in ``--out``, earlier runs' included) and, when
images failed, ``failed.csv`` into ``--out``; prints a table of cells per image and type.
Images whose outputs are complete from an earlier run are skipped (``--overwrite`` redoes them;
a damaged output is redone). A failed image (unreadable, damaged, other channels) is reported
and the others go on; the exit code is 1 when any of this run failed, 2 on a user error before
any image is segmented (bad option, model file, ``--out`` that is a file).
``--dask`` maps chunks of images over a Dask cluster
(``local``: a cluster of ``--workers`` processes on this machine); see :mod:`flowseg.batch`.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from flowseg.cli._common import run_main, setup_logging
from flowseg.errors import InputError
from flowseg.io.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

#: Images per task (held in memory and segmented together).
CHUNK = 8


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowseg-segment", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="*", help="image files, or folders of images (*_masks.* skipped)")
    p.add_argument("--demo", action="store_true",
                   help="segment the sample images shipped with flowseg (implies --overlay)")
    p.add_argument("--model", default=None, help="checkpoint (.pt); default: the model shipped with flowseg")
    p.add_argument("--out", required=True, help="output folder for <name>_masks.tif (and overlays)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation (4x network cost)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="resize images by this factor before the network, e.g. 0.5 for cells twice "
                        "the diameter of the model's training cells (masks keep the image size)")
    p.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png (outlines by cell type)")
    p.add_argument("--submission", default=None, help="also write a competition submission CSV here")
    p.add_argument("--batch-size", type=int, default=8)
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
    return p


def find_images(inputs: Sequence[str]) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of image files."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.stem.endswith(("_masks", "_overlay"))
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


def print_summary(rows: list[tuple[str, str, Counter]], class_names: Sequence[str]) -> None:
    """Cells per image (by type) and totals per type, as a table on stdout."""
    names = list(class_names)
    width = max([len("image")] + [len(r[0]) for r in rows])
    print(f"{'image':<{width}}  {'type':<10} {'cells':>6}  " + " ".join(f"{n:>8}" for n in names))
    total = Counter()
    for name, image_type, counts in rows:
        total.update(counts)
        print(f"{name:<{width}}  {image_type:<10} {sum(counts.values()):>6}  "
              + " ".join(f"{counts.get(n, 0):>8}" for n in names))
    print(f"{'total':<{width}}  {'':<10} {sum(total.values()):>6}  "
          + " ".join(f"{total.get(n, 0):>8}" for n in names))


def _client(dask: str | None, workers: int):
    """A context manager yielding the Dask client of ``--dask`` (None without it)."""
    import contextlib

    from flowseg import batch

    if dask is None:
        return contextlib.nullcontext(None)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    from flowseg.api import DEFAULT_TILE
    from flowseg.batch import BatchConfig, segment_files
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
    config = BatchConfig(device=args.device, batch_size=args.batch_size,
                         tile=DEFAULT_TILE if args.tile is None else args.tile, tta=args.tta,
                         scale=args.scale,
                         overlay=args.overlay,
                         chunk=args.chunk, worker_threads=_worker_threads(args),
                         precision=args.precision)
    with _client(args.dask, args.workers) as client:
        result = segment_files(paths, out, model_path=args.model, client=client, config=config,
                               overwrite=args.overwrite, progress=not args.quiet)
    ok = [o for o in result.outcomes if o.status != "failed"]
    if args.submission:
        _write_submission(args.submission, out, [o.name for o in ok])
    print_summary([(o.name, o.cell_type, Counter(o.counts)) for o in ok], result.class_names)
    skipped = len(result.with_status("skipped"))
    print(f"{len(ok) - skipped} segmented, {skipped} skipped (complete), "
          f"{len(result.failed)} failed")
    for o in result.failed:
        print(f"failed: {o.name}: {o.reason}")
    return 1 if result.failed else 0


def run(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    return run_main("flowseg-segment", main, argv)
