"""Pseudo-labels: a teacher model's confident instances on unlabelled images, for training.

A teacher (one model or an ensemble) segments the images; each of its instances is **kept**
when its score (:attr:`flowseg.SegmentResult.scores`: mean cell probability times the winning
class probability) is high enough and its flow error (:func:`flowseg.flows.flow_error`: how far
the teacher's flows are from the flows of the instance's own shape) is low enough. The student
is taught

* the kept instances, as labels;
* background only where the teacher is confident of background: its cell probability is at
  most ``PseudoConfig.background_prob`` and the pixel is not within ``margin`` pixels of a
  dropped instance;
* nothing (an **ignore** pixel: no loss) everywhere else outside the kept instances, so cells
  the teacher missed or doubted are never taught as background.

A pixel the teacher left out of every instance is never a pseudo-label, and a dropped instance
contributes no label pixel. :func:`pseudo_label` runs the teacher; :func:`select_pseudo_labels`
is the pure selection from one :class:`~flowseg.api.SegmentResult`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from flowseg.api import PredictConfig, SegmentResult, segment
from flowseg.model.checkpoint import Model

__all__ = ["PseudoConfig", "PseudoLabels", "select_pseudo_labels", "pseudo_label"]


@dataclass(frozen=True)
class PseudoConfig:
    """Which teacher instances become pseudo-labels and where the student is taught nothing.

    Attributes
    ----------
    min_score : float
        Keep an instance only when its teacher score is at least this (0-1).
    max_flow_error : float
        Keep an instance only when its flow error is at most this (the teacher's own flow
        threshold is usually 0.4; lower is stricter).
    background_prob : float
        Outside kept instances, a pixel is taught as background only where the teacher's cell
        probability (sigmoid of its logit) is at most this (0-1); elsewhere it is ignored.
    margin : int
        Dropped instances are ignored together with the pixels within this many pixels of
        them (their uncertain borders).

    Notes
    -----
    The defaults come from the shipped model on the 6 shsy5y images of the Sartorius val fold
    (``benchmarks/README.md``, Pseudo-labels): of its instances, 72 % match a true cell at IoU
    > 0.5; of those with flow error <= 0.25, 80 % (63 % of them kept), and with <= 0.2, 85 %
    (42 % kept).
    Its score hardly separates good from bad instances there (90 % of them score 0.75-0.85).
    Of the pixels outside its instances with cell probability <= 0.1, 1.6 % are in true cells;
    0.1-0.2: 18 %.
    """

    min_score: float = 0.5
    max_flow_error: float = 0.25
    background_prob: float = 0.1
    margin: int = 3

    def __post_init__(self) -> None:
        for name in ("min_score", "background_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
        if not isinstance(self.max_flow_error, (int, float)) or not self.max_flow_error >= 0:
            raise ValueError(f"max_flow_error: expected a number >= 0, got {self.max_flow_error!r}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise ValueError(f"margin: expected an int >= 0, got {self.margin!r}")


@dataclass(frozen=True)
class PseudoLabels:
    """The pseudo-labels of one image.

    Attributes
    ----------
    labels : (H, W) ndarray of int32
        The kept teacher instances, renumbered 1..K in the teacher's order.
    ignore : (H, W) ndarray of bool
        Pixels without a target (never a pixel of ``labels``).
    kept : (N,) ndarray of bool
        Per teacher instance 1..N: kept or dropped.
    flow_errors : (N,) ndarray of float64
        Per teacher instance: its flow error.
    cell_type : str
        The teacher's image cell type.
    """

    labels: np.ndarray
    ignore: np.ndarray
    kept: np.ndarray
    flow_errors: np.ndarray
    cell_type: str

    @property
    def n_kept(self) -> int:
        """Number of kept instances K."""
        return int(self.kept.sum())


def select_pseudo_labels(result: SegmentResult, config: PseudoConfig | None = None) -> PseudoLabels:
    """Keep a teacher's confident instances and mark where the student learns nothing.

    Parameters
    ----------
    result : SegmentResult
        The teacher's segmentation with its maps (``segment(..., return_maps=True)``).
    config : PseudoConfig, optional
        ``None``: the defaults.

    Returns
    -------
    PseudoLabels
    """
    from flowseg.flows import flow_error

    config = PseudoConfig() if config is None else config
    if result.flows is None or result.cellprob is None:
        raise ValueError("result: expected the teacher's flows and cell probability "
                         "(segment(..., return_maps=True)), got a result without maps")
    teacher = np.asarray(result.labels)
    n = result.n_instances
    errors = (np.asarray(flow_error(result.flows, teacher), dtype=np.float64)[:n] if n
              else np.zeros(0))
    kept = ((np.asarray(result.scores) >= config.min_score)
            & (np.nan_to_num(errors, nan=np.inf) <= config.max_flow_error))
    new_ids = np.zeros(n + 1, dtype=np.int32)
    new_ids[1:][kept] = np.arange(1, int(kept.sum()) + 1, dtype=np.int32)
    labels = new_ids[teacher]
    dropped = (teacher > 0) & (labels == 0)
    if config.margin and dropped.any():
        dropped = ndimage.binary_dilation(dropped, iterations=config.margin)
    probable = 1.0 / (1.0 + np.exp(-np.asarray(result.cellprob, np.float64))) > config.background_prob
    ignore = (dropped | probable) & (labels == 0)
    return PseudoLabels(labels, ignore, kept, errors, result.image_cell_type)


def pseudo_label(images: Sequence[np.ndarray], model: Model | Sequence[Model], *,
                 config: PseudoConfig | None = None, predict: PredictConfig | None = None,
                 scale: float | None = None) -> list[PseudoLabels]:
    """Segment ``images`` with a teacher and select its pseudo-labels (:func:`select_pseudo_labels`).

    Parameters
    ----------
    images : sequence of (H, W) or (C, H, W) ndarrays
    model : Model or list of Model
        The teacher (a list: their ensemble), with its own tuned thresholds.
    config : PseudoConfig, optional
    predict : PredictConfig, optional
        How the teacher's network runs (as in :func:`flowseg.segment`; None: the defaults).
    scale : float, optional
        Resize factor of the images before the teacher (as in :func:`flowseg.segment`); None:
        :func:`flowseg.segment`'s default. Give 1 for images at the teacher's training
        magnification: the cell-size estimate can be far off on sparse images.

    Returns
    -------
    list of PseudoLabels
        One per image, in order.
    """
    size = {} if scale is None else {"scale": scale}
    results = segment(images, model, predict=predict, return_maps=True, **size)
    return [select_pseudo_labels(r, config) for r in results]
