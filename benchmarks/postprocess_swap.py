"""Network or post-processing? Both networks' maps through both mask steps, on val images.

    python benchmarks/postprocess_swap.py --data .devdata/dev05/val \\
        --flowseg-model runs/s05_bal/best.pt --cellpose-weights runs/cellpose_baseline/models/cpnet

For a flowseg model and a CPnet trained by ``benchmarks/cellpose_baseline.py`` (same widths),
prints the competition score per cell type of the four combinations: {flowseg, cellpose}
network x {flowseg ``segment_maps`` (default thresholds, min_flow 0 and 0.3), cellpose
``dynamics.compute_masks`` (cellprob 0, flow error 0.4, min size 15)}. Whole images, no tiling.
cellpose's network predicts 5x unit flows (dy, dx), flowseg's maps hold unit flows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from cellpose_baseline import (  # this folder (run as a script)
    cellpose_maps,
    cellpose_masks,
)

import flowseg
from flowseg.api import PredictConfig, predict_maps, segment_maps
from flowseg.config import SegmentConfig
from flowseg.data.dataset import load_folder
from flowseg.metrics import image_score

CELLPOSE_FLOW_SCALE = 5.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path(".devdata/dev05/val"))
    p.add_argument("--flowseg-model", type=Path, default=Path("runs/s05_bal/best.pt"))
    p.add_argument("--cellpose-weights", type=Path,
                   default=Path("runs/cellpose_baseline/models/cpnet"))
    p.add_argument("--widths", default="16,32,64,128", help="CPnet nbase after the input channels")
    args = p.parse_args()
    from cellpose.resnet_torch import CPnet

    samples = load_folder(args.data)
    net = CPnet([2] + [int(w) for w in args.widths.split(",")], 3, sz=3, mkldnn=False,
                max_pool=True, diam_mean=30.0)
    net.load_model(str(args.cellpose_weights))
    net.eval()
    model = flowseg.load_model(args.flowseg_model)
    ours = predict_maps([s.image for s in samples], model,
                        predict=PredictConfig(tile=None, tta=False))
    scores: dict[str, dict[str, list[float]]] = {}
    for sample, fs in zip(samples, ours):
        cp = cellpose_maps(net, sample.image)
        # cellpose maps in flowseg's layout: unit flows, cellprob, one dummy class logit
        cp_as_fs = torch.cat([torch.from_numpy(cp[:2] / CELLPOSE_FLOW_SCALE),
                              torch.from_numpy(cp[2:3]), torch.zeros(1, *cp.shape[1:])])
        labels = {}
        for min_flow in (0.0, 0.3):
            config = SegmentConfig(min_flow=min_flow)
            labels[f"cellpose net + flowseg masks (min_flow {min_flow})"] = \
                segment_maps([cp_as_fs], ("cell",), config=config)[0].labels
            labels[f"flowseg net + flowseg masks (min_flow {min_flow})"] = \
                segment_maps([fs], model.class_names, config=config)[0].labels
        labels["cellpose net + cellpose masks"] = cellpose_masks(cp[:2], cp[2])
        f = fs.numpy()
        labels["flowseg net + cellpose masks"] = cellpose_masks(f[:2] * CELLPOSE_FLOW_SCALE, f[2])
        for name, lab in labels.items():
            scores.setdefault(name, {}).setdefault(sample.cell_type, []).append(
                image_score(sample.labels, lab).score)
    types = list(dict.fromkeys(s.cell_type for s in samples))
    print(f"| network + masks | {' | '.join(types)} | all |")
    print("|---|" + "---|" * (len(types) + 1))
    for name in sorted(scores):
        per = scores[name]
        every = [v for t in types for v in per[t]]
        print(f"| {name} | " + " | ".join(f"{np.mean(per[t]):.3f}" for t in types)
              + f" | {np.mean(every):.3f} |")


if __name__ == "__main__":
    main()
