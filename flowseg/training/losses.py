"""The three-term training loss: flows, cell probability, cell type.

Pixels of an optional ignore mask (no known target, e.g. where a pseudo-labelling teacher was
unsure) are left out of every term: their weight is exactly 0, so neither their targets nor
the network's predictions there change the loss or its gradient. The flow and cell-probability
terms stay means over **all** pixels of the batch (ignored ones count as zero loss), so every
crop has the same weight and a crop that is mostly ignored teaches little.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flowseg.model.unet import FLOW_SCALE, NetOutput

__all__ = ["LossTerms", "segmentation_loss", "class_pixels"]


@dataclass
class LossTerms:
    """Weighted total and the unweighted terms (scalar tensors).

    Attributes
    ----------
    total : tensor
        ``flow_weight * flow + cellprob_weight * cellprob + class_weight * classes``.
    flow : tensor
        Mean squared error of the network-scale flows (targets x ``FLOW_SCALE``), all pixels.
    cellprob : tensor
        Binary cross-entropy of the cell-probability logits against ``labels > 0``.
    classes : tensor
        Cross-entropy of the class logits over cell pixels only (0 when a batch has none);
        ignored pixels are not cell pixels here.
    """

    total: torch.Tensor
    flow: torch.Tensor
    cellprob: torch.Tensor
    classes: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        """``{"loss", "flow", "cellprob", "classes"}`` as python floats."""
        values = (self.total, self.flow, self.cellprob, self.classes)
        return dict(zip(("loss", "flow", "cellprob", "classes"), (float(v.detach()) for v in values)))


def class_pixels(labels: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, W) bool: the pixels the class term is computed over (cells, not ignored)."""
    cells = labels > 0
    return cells if ignore is None else cells & ~ignore


def segmentation_loss(output: NetOutput, flows: torch.Tensor, labels: torch.Tensor,
                      class_index: torch.Tensor, *, flow_weight: float = 0.5,
                      cellprob_weight: float = 1.0, class_weight: float = 0.5,
                      ignore: torch.Tensor | None = None) -> LossTerms:
    """Loss of a batch, computed in float32 (also under autocast).

    Parameters
    ----------
    output : NetOutput
        Network output for B images of size H x W.
    flows : (B, 2, H, W) tensor of float32
        Unit flow targets (:func:`flowseg.flows.labels_to_flows`); scaled by ``FLOW_SCALE`` here,
        as the network predicts (Cellpose's loss, whose ``/ 2`` is ``flow_weight = 0.5``).
    labels : (B, H, W) tensor of int
        Instance labels (0 = background).
    class_index : (B,) tensor of int64
        Cell-type index of each image, the target of all its cell pixels.
    flow_weight, cellprob_weight, class_weight : float
    ignore : (B, H, W) tensor of bool, optional
        Pixels that contribute no loss (weight 0 in every term); None: none.

    Returns
    -------
    LossTerms
    """
    if ignore is not None and ignore.shape != labels.shape:
        raise ValueError(f"ignore: expected the labels' shape {tuple(labels.shape)}, got "
                         f"{tuple(ignore.shape)}")
    pred_flows = output.flows.float()
    cells = labels > 0
    if ignore is None or not bool(ignore.any()):
        flow = F.mse_loss(pred_flows, flows.float() * FLOW_SCALE)
        cellprob = F.binary_cross_entropy_with_logits(output.cellprob.float(), cells.float())
    else:
        keep = ~ignore
        sq = torch.where(keep[:, None], (pred_flows - flows.float() * FLOW_SCALE) ** 2, 0.0)
        flow = sq.sum() / sq.numel()
        bce = F.binary_cross_entropy_with_logits(output.cellprob.float(), cells.float(),
                                                 reduction="none")
        cellprob = torch.where(keep, bce, 0.0).sum() / bce.numel()
    cells = class_pixels(labels, ignore)
    target = torch.where(cells, class_index.view(-1, 1, 1).to(labels.device), -100).long()
    per_pixel = F.cross_entropy(output.class_logits.float(), target, ignore_index=-100,
                                reduction="sum")
    classes = per_pixel / cells.sum().clamp(min=1)
    total = flow_weight * flow + cellprob_weight * cellprob + class_weight * classes
    return LossTerms(total, flow, cellprob, classes)
