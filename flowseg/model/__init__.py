"""The network (:class:`UNet`) and its one-file checkpoints (:class:`Model`)."""

from flowseg.model.checkpoint import Model, load_model, save_model
from flowseg.model.unet import FLOW_SCALE, NetOutput, UNet

__all__ = ["FLOW_SCALE", "Model", "NetOutput", "UNet", "load_model", "save_model"]
