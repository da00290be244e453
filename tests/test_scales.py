import numpy as np

from flowseg.api import PredictConfig, load_model
from flowseg.predict import predict_maps
from flowseg.scales import image_styles


def test_the_first_style_pass_computes_what_later_ones_do():
    """predict_maps puts the weights in the inputs' memory layout; the style pass must too, or
    its first call (before any predict_maps) runs other kernels (bf16: other last bits)."""

    model = load_model(device="cpu")   # the shipped network: a tiny one runs the same kernels
    images = [np.random.default_rng(i).random((128, 96)).astype(np.float32) for i in range(2)]
    first = image_styles(images, model, factors=[0.5] * 2, levels=4, spread=True, tile=64)
    predict_maps(images, model, predict=PredictConfig(tile=64))
    np.testing.assert_array_equal(
        image_styles(images, model, factors=[0.5] * 2, levels=4, spread=True, tile=64), first)
