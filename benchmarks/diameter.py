"""Benchmark: automatic cell-size estimation (``segment`` without ``scale`` / ``diameter``).

Two tables, each run the way a user runs ``flowseg.segment`` (model thresholds, no other option):

1. **Usiigaci** full-size images (1022 x 1024, cells about twice the Sartorius training size;
   never trained on): mean competition score without flags ("auto") beside every hand-picked
   ``scale`` of ``--scales``, and the scales the estimate chose.
2. **Sartorius** folder (e.g. the val fold of the ``data_prep`` split): the images as they are,
   at ``scale=1`` (flowseg before the estimate) and without flags; then the same images resized
   2x and 0.5x (image: linear, anti-aliased when shrinking), segmented without flags and at
   ``scale=1``, and the masks resized back (nearest) to score against the 1x truth. "kept" is the
   score as a fraction of the 1x score without flags. The "truth" rows score the true masks
   resized to that size and back: the most any method can keep when its masks are resized.
   "at size" scores the same masks where they were made, against the truth resized (nearest) to
   the resized image: the question a user with a lower- or higher-magnification image asks.

3. With a Sartorius folder, the zoom estimate's error on whole images and on random crops.

Truth: Usiigaci's ``instances_ids.png``; the Sartorius folder's ``<name>_masks.tif`` (with
``data_prep --fill-holes``, astro holes filled; fine for comparing settings, not for leaderboard
numbers).

Usage::

    python benchmarks/diameter.py --model runs/sartorius_sc/sized.pt \\
        --usiigaci ../shared/data/usiigaci --sartorius .devdata/sartorius/val [--scales 0.4,0.5,0.6]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from skimage.transform import resize

import flowseg
from flowseg.api import image_styles, model_size
from flowseg.io.folders import list_folder
from flowseg.io.images import read_image, read_labels
from flowseg.metrics import image_score, mean_score

TYPES = ("astro", "cort", "shsy5y")


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _run(images, model, **options):
    """Results of ``segment`` and its seconds per image."""
    t0 = time.perf_counter()
    results = flowseg.segment(images, model, **options)
    return results, (time.perf_counter() - t0) / max(1, len(images))


def _scales_text(results) -> str:
    s = np.array([r.scale for r in results])
    return f"{np.median(s):.2f} [{s.min():.2f}-{s.max():.2f}]"


def usiigaci_table(model, folder: Path, scales: tuple[float, ...]) -> list[str]:
    sets = sorted(p for p in folder.glob("set*") if (p / "raw.tif").is_file())
    images = [read_image(p / "raw.tif") for p in sets]
    truths = [read_labels(p / "instances_ids.png") for p in sets]
    lines = [f"Usiigaci full size: {len(sets)} images {images[0].shape}",
             f"{'setting':<14} {'mAP':>6} {'cells/truth':>11} {'scale chosen':>20} {'s/image':>8}"]
    n_truth = sum(int(t.max()) for t in truths)
    for name, options in [("no flags", {}), *((f"--scale {s:g}", {"scale": s}) for s in scales)]:
        results, sec = _run(images, model, **options)
        score = mean_score(truths, [r.labels for r in results])
        cells = sum(r.n_instances for r in results)
        lines.append(f"{name:<14} {score:>6.3f} {cells:>5}/{n_truth:<5} {_scales_text(results):>20} "
                     f"{sec:>8.2f}")
    return lines


def _resized(image: np.ndarray, factor: float) -> np.ndarray:
    shape = _size(image.shape[-2:], factor)
    return resize(image.astype(np.float32), image.shape[:-2] + shape, order=1, mode="reflect",
                  anti_aliasing=factor < 1, preserve_range=True)


def _back(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return resize(labels, shape, order=0, mode="edge", anti_aliasing=False,
                  preserve_range=True).astype(np.int32)


def sartorius_table(model, folder: Path, resized_scales: tuple[float, ...] = ()) -> list[str]:
    items = list_folder(folder)
    images = [read_image(i.image_path) for i in items]
    truths = [read_labels(i.masks_path) for i in items]
    types = [i.cell_type for i in items]
    lines = [f"Sartorius {folder}: {len(items)} images",
             f"{'images':<6} {'setting':<10} {'mAP':>6} " + " ".join(f"{t:>7}" for t in TYPES)
             + f" {'kept':>6} {'at size':>7} {'kept':>6} {'scale chosen':>20} {'s/image':>8}"]
    base = None
    for factor in (1.0, 2.0, 0.5):
        inputs = images if factor == 1.0 else [_resized(im, factor) for im in images]
        settings = [("no flags", {}), ("scale 1", {"scale": 1.0})]
        if factor != 1.0:   # hand-picked scales for the resized images (--resized-scales)
            settings += [(f"scale {f:g}", {"scale": f}) for f in resized_scales]
        for name, options in settings:
            results, sec = _run(inputs, model, **options)
            preds = [_back(r.labels, t.shape) if factor != 1.0 else r.labels
                     for r, t in zip(results, truths)]
            scores = np.array([image_score(t, p).score for t, p in zip(truths, preds)])
            mean = float(scores.mean())
            if factor == 1.0 and name == "no flags":
                base = mean
            # the same masks scored at the size they were made, against the truth resized there
            at_size = np.mean([image_score(_back(t, r.labels.shape), r.labels).score
                               for t, r in zip(truths, results)])
            per = " ".join(f"{scores[[k == t for k in types]].mean():>7.3f}"
                           if t in types else f"{'-':>7}" for t in TYPES)
            lines.append(f"{factor:<6g} {name:<10} {mean:>6.3f} {per} {mean / base:>6.1%} "
                         f"{at_size:>7.3f} {at_size / base:>6.1%} "
                         f"{_scales_text(results):>20} {sec:>8.2f}")
        if factor != 1.0:  # the ceiling: the truth itself at this size, resized back
            ceiling = np.mean([image_score(t, _back(_back(t, _size(t.shape, factor)), t.shape)).score
                               for t in truths])
            lines.append(f"{factor:<6g} {'truth':<10} {ceiling:>6.3f} {'':>23} {'':>6} "
                         f"{'(masks resized back)':>20}")
    return lines


def _size(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    return tuple(max(1, round(n * factor)) for n in shape)


def crop_table(model, folder: Path, *, seed: int = 0) -> list[str]:
    """Zoom estimate error of every third image of ``folder`` at zooms 0.5, 1, 2, whole and as
    random square crops of 128 and 256 px (the error, |estimated / true zoom - 1|, in %)."""
    size = model_size(model)
    rng = np.random.default_rng(seed)
    items = list_folder(folder)[::3]
    errors: dict[str, list[float]] = {"whole": [], "256 px crop": [], "128 px crop": []}
    for item in items:
        image = read_image(item.image_path).astype(np.float32)
        for zoom in (0.5, 1.0, 2.0):
            zoomed = _resized(image, zoom)
            for name, side in (("whole", None), ("256 px crop", 256), ("128 px crop", 128)):
                crop = zoomed
                if side is not None:
                    top = rng.integers(0, zoomed.shape[-2] - side + 1)
                    left = rng.integers(0, zoomed.shape[-1] - side + 1)
                    crop = zoomed[..., top:top + side, left:left + side]
                styles = image_styles([crop], model, factors=[size.low_res], levels=size.levels,
                                      spread=size.spread, tile=size.tile)
                errors[name].append(abs(float(size.zooms(styles)[0]) / zoom - 1))
    lines = [f"Zoom estimate error, {len(items)} images of {folder} at zooms 0.5, 1, 2",
             f"{'input':<12} {'median':>7} {'p90':>7} {'max':>7}"]
    for name, e in errors.items():
        lines.append(f"{name:<12} {np.median(e):>7.1%} {np.quantile(e, 0.9):>7.1%} {np.max(e):>7.1%}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model file (default: the shipped model)")
    p.add_argument("--usiigaci", type=Path, default=None, help="folder of setN/raw.tif + instances_ids.png")
    p.add_argument("--sartorius", type=Path, default=None, help="Cellpose-style folder with cell_types.csv")
    p.add_argument("--scales", type=_floats, default=(0.33, 0.4, 0.5, 0.6, 0.75, 1.0),
                   help="hand-picked scales for the Usiigaci table")
    p.add_argument("--resized-scales", type=_floats, default=(),
                   help="hand-picked scales also run on the resized Sartorius images, e.g. 1.8,2")
    args = p.parse_args()
    model = flowseg.load_model(args.model)
    size = model_size(model)
    print(f"model {args.model or 'default'}: " + (
        "no size model" if size is None else
        f"training diameter {size.diameter:.1f} px, zoom error {100 * (np.exp(size.fit_error) - 1):.1f} %, "
        f"tolerance {size.tolerance:g}, low_res {size.low_res:g}, levels {size.levels}"))
    if args.usiigaci:
        print("\n".join(usiigaci_table(model, args.usiigaci, args.scales)), "\n")
    if args.sartorius:
        print("\n".join(sartorius_table(model, args.sartorius, args.resized_scales)), "\n")
        if size is not None and size.can_estimate:
            print("\n".join(crop_table(model, args.sartorius)))


if __name__ == "__main__":
    main()
