import numpy as np
import pytest
import torch

from flowseg.rescale import check_scale, rescale_pair, resize_stack, scaled_shape
from flowseg.synthetic import make_synthetic


def test_halving_keeps_dtypes_ids_and_cell_positions():
    image, labels = make_synthetic("round", shape=(96, 80), seed=1)
    image16 = (image * 1000).astype(np.uint16)
    small, small_labels = rescale_pair(image16, labels, 0.5)
    assert small.shape == small_labels.shape == (48, 40)
    assert small.dtype == np.uint16 and small_labels.dtype == labels.dtype
    assert set(np.unique(small_labels)) <= set(np.unique(labels))  # nearest: no new ids
    for cell in np.unique(small_labels)[1:]:  # each cell stays where it was
        y, x = np.argwhere(labels == cell).mean(0)
        ys, xs = np.argwhere(small_labels == cell).mean(0)
        assert abs(2 * ys + 0.5 - y) < 1.5 and abs(2 * xs + 0.5 - x) < 1.5


def test_doubling_and_channels_and_identity():
    image = np.random.default_rng(0).random((2, 10, 12)).astype(np.float32)
    labels = np.zeros((10, 12), np.int32)
    labels[2:6, 3:9] = 7
    big, big_labels = rescale_pair(image, labels, 2.0)
    assert big.shape == (2, 20, 24) and big.dtype == np.float32
    assert (big_labels == 7).sum() == 4 * (labels == 7).sum()
    np.testing.assert_allclose(big[1].mean(), image[1].mean(), atol=0.05)  # channels not mixed
    same, same_labels = rescale_pair(image, labels, 1.0)
    assert same is image and same_labels is labels


def test_integer_images_are_rounded_and_clipped():
    image = np.array([[0, 255], [255, 0]], np.uint8).repeat(4, 0).repeat(4, 1)
    out, _ = rescale_pair(image, np.zeros(image.shape, np.int32), 1.5)
    assert out.dtype == np.uint8 and out.min() >= 0 and out.max() <= 255


@pytest.mark.parametrize("bad", [0, -1, float("nan"), 11, "x", None])
def test_bad_scale_is_named(bad):
    with pytest.raises((ValueError, TypeError), match="scale"):
        check_scale(bad)


def test_mismatched_labels_are_named():
    with pytest.raises(ValueError, match=r"labels: expected shape \(4, 4\)"):
        rescale_pair(np.zeros((4, 4)), np.zeros((4, 5), np.int32), 0.5)


def test_resize_stack_shapes():
    maps = torch.rand(3, 20, 30)
    assert resize_stack(maps, (20, 30)) is maps
    assert resize_stack(maps, (10, 15)).shape == (3, 10, 15)
    assert resize_stack(maps, (41, 61)).shape == (3, 41, 61)
    assert scaled_shape((3, 5), 0.1) == (1, 1)
