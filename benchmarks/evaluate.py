"""Benchmark: the competition metric over a synthetic data set, flowseg beside cellpose.

Synthetic, seeded: ``--n-images`` label images of 520 x 704 with about ``--instances``
ellipses each (non-overlapping). Predictions are the truth perturbed per instance: some
shifted by 1-3 px, some dropped, some split in two, some eroded, plus a few false positives.

Timed (median of ``--repeats`` runs, data generated once beforehand):

* ``flowseg labels``  - :func:`flowseg.metrics.image_score` with truth as a label image;
* ``flowseg indices`` - the same truth as flat pixel-index lists (the path ``evaluate`` uses
  for a Sartorius ``train.csv``, where instances may overlap);
* ``cellpose``        - ``cellpose.metrics.average_precision`` on the same label images (label
  images cannot express overlapping truth; cellpose matches at IoU >= t, flowseg at IoU > t,
  so scores may differ where an IoU equals a threshold exactly);
* ``evaluate program`` - the whole ``evaluate`` program on the same data written as a
  ``train.csv`` and a ``submission.csv`` (reading, RLE decoding, scoring, report); skip it with
  ``--no-program``.

Usage::

    python benchmarks/evaluate.py [--n-images 600] [--instances 120] [--repeats 3] [--seed 0]
                                  [--no-program]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import fastremap
import numpy as np
from scipy import ndimage

from flowseg.cli.evaluate import main as evaluate_main
from flowseg.io.submission import label_rles, write_submission
from flowseg.metrics import IOU_THRESHOLDS, image_score

SHAPE = (520, 704)


def _ellipse(rng: np.random.Generator) -> np.ndarray:
    """A random filled ellipse in its own bounding box, (h, w) bool."""
    ry, rx = rng.uniform(5, 16, size=2)
    angle = rng.uniform(0, np.pi)
    half = int(np.ceil(max(ry, rx)))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    u = yy * np.cos(angle) + xx * np.sin(angle)
    v = -yy * np.sin(angle) + xx * np.cos(angle)
    return (u / ry) ** 2 + (v / rx) ** 2 < 1


def _paint(labels: np.ndarray, mask: np.ndarray, y: int, x: int, value: int) -> None:
    """Paint ``mask`` with its top-left corner at (y, x), clipped, only on background."""
    h, w = labels.shape
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + mask.shape[0], h), min(x + mask.shape[1], w)
    if y1 <= y0 or x1 <= x0:
        return
    crop = mask[y0 - y:y1 - y, x0 - x:x1 - x]
    region = labels[y0:y1, x0:x1]
    region[crop & (region == 0)] = value


def synthetic_truth(rng: np.random.Generator, n_instances: int) -> np.ndarray:
    """(H, W) int32 label image (the dtype of ``read_labels``), labels 1..n consecutive."""
    labels = np.zeros(SHAPE, np.uint16)
    for k in range(1, n_instances + 1):
        mask = _ellipse(rng)
        _paint(labels, mask, rng.integers(-8, SHAPE[0]), rng.integers(-8, SHAPE[1]), k)
    return fastremap.renumber(labels, in_place=True)[0].astype(np.int32)


def perturbed_prediction(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    """Truth with instances kept, shifted, dropped, split or eroded, plus false positives."""
    pred = np.zeros_like(truth)
    next_label = 1
    for k, box in enumerate(ndimage.find_objects(truth), start=1):
        if box is None:
            continue
        mask = truth[box] == k
        action = rng.choice(["keep", "shift", "drop", "split", "erode"], p=[.4, .25, .1, .1, .15])
        y, x = box[0].start, box[1].start
        if action == "drop":
            continue
        if action == "shift":
            y, x = y + rng.integers(-3, 4), x + rng.integers(-3, 4)
        if action == "erode":
            mask = ndimage.binary_erosion(mask) if mask.sum() > 30 else mask
        if action == "split":
            half = mask.copy()
            half[: mask.shape[0] // 2] = False
            mask = mask & ~half
            _paint(pred, half, y, x, next_label)
            next_label += 1
        _paint(pred, mask, y, x, next_label)
        next_label += 1
    for _ in range(rng.integers(0, 6)):  # false positives
        _paint(pred, _ellipse(rng), rng.integers(0, SHAPE[0]), rng.integers(0, SHAPE[1]), next_label)
        next_label += 1
    return fastremap.renumber(pred, in_place=True)[0].astype(np.int32)


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-images", type=int, default=600)
    p.add_argument("--instances", type=int, default=120, help="ellipses drawn per image")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-program", action="store_true", help="skip timing the evaluate program")
    args = p.parse_args()

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    truths = [synthetic_truth(rng, args.instances) for _ in range(args.n_images)]
    preds = [perturbed_prediction(rng, t) for t in truths]
    indices = [_instance_indices(t) for t in truths]
    n_instances = sum(int(t.max()) for t in truths)
    print(f"data: {args.n_images} images of {SHAPE[0]}x{SHAPE[1]}, {n_instances} true instances "
          f"({n_instances / args.n_images:.1f}/image), generated in {time.perf_counter() - t0:.1f} s")

    rows = []
    for name, truth_set in (("flowseg labels", truths), ("flowseg indices", indices)):
        seconds, scores = _median_time(
            lambda ts=truth_set: [image_score(t, p).score for t, p in zip(ts, preds)], args.repeats)
        rows.append((name, seconds, float(np.mean(scores))))
    try:
        from cellpose import metrics as cp_metrics
    except ImportError:
        print("cellpose not installed: no cellpose row")
    else:
        cp_metrics.average_precision(truths[:1], preds[:1], threshold=IOU_THRESHOLDS)  # jit warm-up
        seconds, (ap, *_) = _median_time(
            lambda: cp_metrics.average_precision(truths, preds, threshold=IOU_THRESHOLDS),
            args.repeats)
        rows.append(("cellpose", seconds, float(np.mean(ap))))
    if not args.no_program:
        rows.append(("evaluate program", *_time_program(truths, preds, args.repeats)))

    print(f"{'method':<18} {'images':>7} {'instances':>10} {'seconds':>8} {'images/s':>9} "
          f"{'mean score':>11}")
    for name, seconds, score in rows:
        print(f"{name:<18} {args.n_images:>7} {n_instances:>10} {seconds:>8.2f} "
              f"{args.n_images / seconds:>9.1f} {score:>11.6f}")
    print(f"median of {args.repeats} runs; cellpose matches at IoU >= t, flowseg at IoU > t; "
          "cellpose on label images cannot express overlapping truth")
    if any(name == "cellpose" for name, *_ in rows):
        _print_agreement(cp_metrics, truths, preds)


def _time_program(truths: list, preds: list, repeats: int) -> tuple[float, float]:
    """Median seconds of ``evaluate --truth train.csv --pred submission.csv``, and its score."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with open(tmp / "train.csv", "w") as f:
            f.write("id,annotation,width,height,cell_type\n")
            for i, truth in enumerate(truths):
                cell_type = ("astro", "cort", "shsy5y")[i % 3]
                f.writelines(f"img{i},{rle},{SHAPE[1]},{SHAPE[0]},{cell_type}\n"
                             for rle in label_rles(truth).values())
        write_submission(tmp / "submission.csv", ((f"img{i}", p) for i, p in enumerate(preds)))
        argv = ["--truth", str(tmp / "train.csv"), "--pred", str(tmp / "submission.csv"),
                "--out", str(tmp / "report"), "--quiet"]
        seconds, _ = _median_time(lambda: evaluate_main(argv), repeats)
        return seconds, json.loads((tmp / "report" / "summary.json").read_text())["mean_ap"]


def _print_agreement(cp_metrics, truths: list, preds: list) -> None:
    """Compare with cellpose at thresholds nudged up by 1e-9, where its >= equals our >."""
    nudged = IOU_THRESHOLDS + 1e-9
    ours = [image_score(t, p, thresholds=nudged) for t, p in zip(truths, preds)]
    ap, tp, _, _ = cp_metrics.average_precision(truths, preds, threshold=nudged)
    same = int((np.array([o.tp for o in ours]) == tp).sum())
    print(f"thresholds + 1e-9: TP equal in {same}/{tp.size} (image, threshold) pairs; mean score "
          f"flowseg {np.mean([o.score for o in ours]):.6f}, cellpose {float(np.mean(ap)):.6f}")


def _instance_indices(labels: np.ndarray) -> list[np.ndarray]:
    """Flat pixel indices per label 1..max (as Sartorius truth arrives), in one sort."""
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(1, int(flat.max()) + 2))
    return [order[a:b].astype(np.int64) for a, b in zip(bounds[:-1], bounds[1:])]


if __name__ == "__main__":
    main()
