"""Train flowseg's network on cellpose 3.1's flow targets instead of its own.

Is a score gap between flowseg and cellpose in the flow *targets* the network learns? This runs
``flowseg-train`` unchanged (same arguments, data, augmentation, loss and schedule) except that
each batch's targets come from ``cellpose.dynamics.masks_to_flows`` (heat diffusion from the
cell's centre, unit vectors, (dy, dx) order like flowseg's). Score the run as any other::

    python benchmarks/target_swap.py --data .devdata/dev05 --out runs/cp_targets --epochs 400 \\
        --batch-size 8 --crop 256 --widths 16,32,64,128 --val-every 20 --balance-classes --seed 0
    evaluate tune --model runs/cp_targets/best.pt --data .devdata/dev05/val --out runs/cp_targets/tuned.pt

and compare with the same command through ``train``. Masks are still made by flowseg's flow
following, which agrees with cellpose's on either network's output (``postprocess_swap.py``).
"""

from __future__ import annotations

import sys

import fastremap
import numpy as np
import torch

import flowseg.flows


def cellpose_targets(labels: torch.Tensor, *, device=None, method: str = "auto") -> torch.Tensor:
    """(B, H, W) int labels -> (B, 2, H, W) float32 unit flows from cellpose 3.1, on ``device``."""
    from cellpose import dynamics

    del method
    flows = [dynamics.masks_to_flows(fastremap.renumber(np.ascontiguousarray(l))[0],
                                     device=torch.device("cpu"))
             for l in labels.cpu().numpy()]
    return torch.from_numpy(np.stack(flows).astype(np.float32)).to(device or labels.device)


def main() -> int:
    """``flowseg-train`` with :func:`cellpose_targets`; same arguments, exit code."""
    from flowseg.cli.train import run

    flowseg.flows.labels_to_flows = cellpose_targets  # the training loop looks it up per epoch
    return run()


if __name__ == "__main__":
    sys.exit(main())
