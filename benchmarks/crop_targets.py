"""Benchmark: how far the flow targets of training crops are from those of whole cells.

Training computes each crop's flow targets from its labels (``flowseg.training.engine.
crop_targets``). From the crop alone, a cell cut by the crop's edge gets its centre inside the
crop, so its flows point somewhere else than when the network sees the whole cell (whole images,
stitched tiles). ``TrainConfig.flow_context`` computes them from labels with that many extra
pixels on every side. For random training crops (the training augmentation, the training code
path: ``augment_sample`` + ``crop_targets``) of a Cellpose-style folder with ``cell_types.csv``,
this prints, per cell type and context, the share of in-crop cell pixels whose target points
more than 45 degrees away from the target computed with ``--reference`` pixels of context
(large enough to hold every cell the crop cuts).

Usage::

    python benchmarks/crop_targets.py --data .devdata/sartorius/train
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from flowseg.config import AugmentConfig
from flowseg.data.augment import augment_sample
from flowseg.data.dataset import load_folder
from flowseg.training.engine import crop_targets

CPU = torch.device("cpu")


def wrong_share(sample, *, contexts, reference: int, crop: int, crops: int, seed: int
                ) -> tuple[np.ndarray, int]:
    """Per context: in-crop cell pixels whose target is > 45 degrees off the reference, summed
    over ``crops`` random crops of ``sample``; and the number of in-crop cell pixels."""
    wrong = np.zeros(len(contexts), dtype=np.int64)
    total = 0
    for k in range(crops):
        rng = np.random.default_rng([seed, k])
        _, wide, _ = augment_sample(sample.image, sample.labels, None, crop_size=crop, rng=rng,
                                    config=AugmentConfig(), label_context=reference)
        wide = torch.from_numpy(wide)[None]
        labels, truth = crop_targets(wide, reference, device=CPU)
        inside = labels[0] > 0
        total += int(inside.sum())
        for i, c in enumerate(contexts):
            cut = wide[:, reference - c:wide.shape[1] - reference + c,
                       reference - c:wide.shape[2] - reference + c]
            _, targets = crop_targets(cut.contiguous(), c, device=CPU)
            cos = (targets[0] * truth[0]).sum(0)[inside]
            wrong[i] += int((cos < math.cos(math.pi / 4)).sum())
    return wrong, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="Cellpose-style folder with cell_types.csv")
    p.add_argument("--contexts", default="0,16,32,64,128", help="contexts to compare (pixels)")
    p.add_argument("--reference", type=int, default=256, help="context of the reference targets")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--images", type=int, default=12, help="images per cell type (first in name order)")
    p.add_argument("--crops", type=int, default=4, help="random crops per image")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    if max(contexts) > args.reference:
        raise SystemExit(f"--contexts: expected values <= --reference {args.reference}, got {contexts}")
    by_type: dict[str, list] = {}
    for s in load_folder(args.data):
        by_type.setdefault(s.cell_type, []).append(s)
    print(f"share of in-crop cell pixels whose flow target is > 45 degrees off the target with "
          f"{args.reference} px of context ({args.crop}-pixel crops, {args.crops} per image)")
    print("| cell type | images | " + " | ".join(f"context {c}" for c in contexts) + " |")
    print("|---|---|" + "---|" * len(contexts))
    for cell_type, samples in sorted(by_type.items()):
        wrong = np.zeros(len(contexts), dtype=np.int64)
        total = 0
        for j, s in enumerate(samples[:args.images]):
            w, t = wrong_share(s, contexts=contexts, reference=args.reference, crop=args.crop,
                               crops=args.crops, seed=args.seed * 1000 + j)
            wrong += w
            total += t
        shares = " | ".join(f"{w / max(total, 1):.2%}" for w in wrong)
        print(f"| {cell_type} | {min(len(samples), args.images)} | {shares} |")


if __name__ == "__main__":
    main()
