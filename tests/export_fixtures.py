"""Shared fixture of the export tests: a tiny model with everything an export must carry."""

import torch

from flowseg.config import ClassThresholds, ModelConfig, SegmentConfig, TrainConfig
from flowseg.model.checkpoint import Model
from flowseg.model.unet import UNet

#: Tuned-looking thresholds, per class, that an export must carry.
SEGMENT_CONFIG = SegmentConfig(cellprob_threshold=-0.5, per_class={
    "round": ClassThresholds(cellprob_threshold=0.25, min_size=7),
    "spindly": ClassThresholds(flow_threshold=0.3)})


def tiny_model(*, in_channels: int = 1, skip: str = "add", style: bool = True) -> Model:
    """A 2-level model (widths 8, 16) with non-trivial BatchNorm statistics, two classes,
    per-class thresholds, a train config and metadata."""
    torch.manual_seed(0)
    config = ModelConfig(in_channels=in_channels, n_classes=2, widths=(8, 16), skip=skip,
                         style=style)
    net = UNet(config).train()
    with torch.no_grad():
        net(torch.rand(4, in_channels, 24, 24) * 2)
    return Model(net.eval(), config, ("round", "spindly"), SEGMENT_CONFIG,
                 TrainConfig(epochs=3), {"val_score": 0.5})

