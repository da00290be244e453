"""Training: the three-term loss and the engine (``fit``, ``train_one_epoch``, ``evaluate_val``)."""

from flowseg.training.engine import EpochRecord, ValResult, evaluate_val, fit, train_one_epoch
from flowseg.training.losses import LossTerms, segmentation_loss

__all__ = ["EpochRecord", "LossTerms", "ValResult", "evaluate_val", "fit",
           "segmentation_loss", "train_one_epoch"]
