"""Shared fixtures of the batch-segmentation tests: a tiny untrained model and image files."""

import numpy as np
import torch

from flowseg.config import ModelConfig, SegmentConfig
from flowseg.io.images import write_image
from flowseg.model.checkpoint import Model, save_model
from flowseg.model.unet import UNet
from flowseg.synthetic import make_synthetic


def write_tiny_model(path):
    """An untrained 2-level model whose loose thresholds still give instances."""
    torch.manual_seed(0)
    config = ModelConfig(n_classes=2, widths=(8, 16))
    segment_config = SegmentConfig(cellprob_threshold=-6.0, flow_threshold=0.0, min_size=5,
                                   min_flow=0.0, niter=200)
    save_model(path, Model(UNet(config).eval(), config, ("round", "spindly"), segment_config))
    return path


def write_images(directory, n=5, *, corrupt=True):
    """``n`` synthetic uint16 TIFs (64 x 80) and, when ``corrupt``, an unreadable ``bad.tif``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        image, _ = make_synthetic(("round", "spindly")[i % 2], shape=(64, 80), seed=i)
        paths.append(directory / f"img{i}.tif")
        write_image(paths[-1], (image * 1000).astype(np.uint16))
    if corrupt:
        paths.insert(2, directory / "bad.tif")
        paths[2].write_bytes(b"this is not a TIF file")
    return paths
