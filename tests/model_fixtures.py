"""Small models shared by the API tests: a tiny random UNet and a network that returns the exact
maps of fixed labels."""

import numpy as np
import torch
from torch import nn

from flowseg.config import ModelConfig
from flowseg.flows import labels_to_flows
from flowseg.model.checkpoint import Model
from flowseg.model.unet import FLOW_SCALE, NetOutput, UNet


def tiny_model(*, style: bool = True, n_classes: int = 2, seed: int = 0) -> Model:
    torch.manual_seed(seed)
    config = ModelConfig(n_classes=n_classes, widths=(8, 16, 32), style=style)
    net = UNet(config).eval()
    return Model(net, config, tuple(f"type{k}" for k in range(n_classes)))


class OracleNet(nn.Module):
    """Returns the exact maps of fixed labels: the targets' flows, +/-8 logits, class ``k``."""

    def __init__(self, labels: np.ndarray, k: int, n_classes: int) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        lab = torch.from_numpy(labels)
        self.flows = torch.from_numpy(labels_to_flows(labels)) * FLOW_SCALE
        self.cellprob = torch.where(lab > 0, 8.0, -8.0)
        self.classes = torch.full((n_classes, *labels.shape), -4.0)
        self.classes[k] = 4.0

    def forward(self, x: torch.Tensor) -> NetOutput:
        assert x.shape[-2:] == self.cellprob.shape
        b = x.shape[0]
        return NetOutput(self.flows.expand(b, -1, -1, -1), self.cellprob.expand(b, -1, -1),
                         self.classes.expand(b, -1, -1, -1))
