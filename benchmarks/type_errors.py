"""Benchmark: where one cell type's score is lost (missed cells, their cell probability, and
what the flow-error check and ``min_size`` remove).

For each true cell of ``--cell-type`` in a Cellpose-style folder with ``cell_types.csv`` (e.g.
the val fold of the ``data_prep`` split), segmented as a user would (the model's thresholds,
``scale=1`` by default):

- matched at IoU 0.5 or not; of the unmatched, those with almost no predicted pixels (< 20 %
  of the cell), and the median cell-probability logit inside them (above the type's threshold:
  the network saw a cell, post-processing removed it);
- the same with the flow-error check off, ``min_size`` 0, and both: how many cells come back
  and what the type's score does.

Usage::

    python benchmarks/type_errors.py --data .devdata/sartorius/val --cell-type astro [--model M.pt]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import flowseg
from flowseg.io.folders import list_folder
from flowseg.io.images import read_image, read_labels
from flowseg.metrics import image_score, iou_matrix

UNCOVERED = 0.2   # a true cell with less than this share of predicted pixels is "not covered"


def cell_table(truths, results) -> dict[str, float]:
    """Counts over all true cells: matched at IoU 0.5, uncovered, and the uncovered cells'
    median cell-probability logit (needs ``return_maps``)."""
    n = matched = uncovered = 0
    logits = []
    for truth, res in zip(truths, results):
        iou = iou_matrix(truth, res.labels)
        best = iou.max(axis=1) if iou.shape[1] else np.zeros(iou.shape[0])
        for k, b in enumerate(best):
            cell = truth == k + 1
            if not cell.any():
                continue
            n += 1
            matched += b > 0.5
            if (res.labels[cell] > 0).mean() < UNCOVERED:
                uncovered += 1
                if res.cellprob is not None:
                    logits.append(float(np.median(res.cellprob[cell])))
    return {"cells": n, "matched": matched, "uncovered": uncovered,
            "logit": float(np.median(logits)) if logits else float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="Cellpose-style folder with cell_types.csv")
    p.add_argument("--cell-type", required=True)
    p.add_argument("--model", default=None, help="model file (default: the shipped model)")
    p.add_argument("--scale", type=float, default=1.0, help="segment at this scale (default 1)")
    args = p.parse_args()
    model = flowseg.load_model(args.model)
    items = [i for i in list_folder(args.data) if i.cell_type == args.cell_type]
    if not items:
        raise SystemExit(f"{args.data}: no image of cell type {args.cell_type!r}")
    images = [read_image(i.image_path) for i in items]
    truths = [read_labels(i.masks_path) for i in items]
    base = model.segment_config
    own = base.for_class(args.cell_type)
    print(f"{args.cell_type}: {len(items)} images of {args.data}; thresholds cellprob "
          f"{own.cellprob_threshold:g}, flow {own.flow_threshold:g}, min_size {own.min_size}")
    print(f"{'setting':<24} {'mAP':>6} {'predicted':>9} {'cells':>6} {'matched@0.5':>11} "
          f"{'uncovered':>9} {'their logit':>11}")
    for name, changes in (("model thresholds", {}), ("flow check off", {"flow_threshold": 0.0}),
                          ("min_size 0", {"min_size": 0}),
                          ("both off", {"flow_threshold": 0.0, "min_size": 0})):
        config = base.override(**changes) if changes else base
        results = flowseg.segment(images, model, config=config, scale=args.scale,
                                  return_maps=True)
        score = np.mean([image_score(t, r.labels).score for t, r in zip(truths, results)])
        t = cell_table(truths, results)
        print(f"{name:<24} {score:>6.3f} {sum(r.n_instances for r in results):>9} {t['cells']:>6} "
              f"{t['matched']:>11} {t['uncovered']:>9} {t['logit']:>11.2f}")


if __name__ == "__main__":
    main()
