"""``flowseg-segment``: segment images with a model; write masks, overlays and a submission.

    flowseg-segment IMAGES...|DIR [--model PATH] --out DIR [--tta] [--overlay]
                    [--submission submission.csv] [--batch-size 8] [--device auto]
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from flowseg.cli._common import run_main, setup_logging

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
#: Images held in memory (and segmented together) at a time.
CHUNK = 32


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowseg-segment", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="image files, or folders of images (*_masks.* skipped)")
    p.add_argument("--model", default=None, help="checkpoint (.pt); default: the model shipped with flowseg")
    p.add_argument("--out", required=True, help="output folder for <name>_masks.tif (and overlays)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation (4x network cost)")
    p.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png (outlines by cell type)")
    p.add_argument("--submission", default=None, help="also write a competition submission CSV here")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tile", type=int, default=None, help="network tile side (default: flowseg.api.DEFAULT_TILE)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    return p


def find_images(inputs: Sequence[str]) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of image files."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.stem.endswith(("_masks", "_overlay")))
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    from flowseg.api import DEFAULT_TILE, load_model, segment
    from flowseg.io.images import read_image, write_labels
    from flowseg.io.png import write_rgb_png
    from flowseg.io.submission import write_submission
    from flowseg.visualize import overlay_outlines

    paths = find_images(args.inputs)
    model = load_model(args.model, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, submission = [], []
    class_index = {n: k for k, n in enumerate(model.class_names)}
    with tqdm(total=len(paths), unit="img", disable=args.quiet) as bar:
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start:start + CHUNK]
            images = [read_image(p) for p in chunk]
            results = segment(images, model, batch_size=args.batch_size, tta=args.tta,
                              tile=args.tile or DEFAULT_TILE)
            for path, image, res in zip(chunk, images, results):
                write_labels(out / f"{path.stem}_masks.tif", res.labels)
                if args.overlay:
                    classes = [class_index[t] for t in res.cell_types]
                    write_rgb_png(out / f"{path.stem}_overlay.png", overlay_outlines(image, res.labels, classes))
                if args.submission:
                    submission.append((path.stem, res.labels))
                rows.append((path.stem, res.image_cell_type, Counter(res.cell_types)))
            bar.update(len(chunk))
    if args.submission:
        write_submission(args.submission, submission)
    print_summary(rows, model.class_names)
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    return run_main("flowseg-segment", main, argv)
