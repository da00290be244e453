import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as connected_label

from flowseg.synthetic import KINDS, keep_largest_pieces, make_synthetic, synthetic_labels


@pytest.mark.parametrize("kind", KINDS)
def test_make_synthetic_types_and_determinism(kind):
    image, labels = make_synthetic(kind, shape=(96, 112), seed=3)
    assert image.shape == labels.shape == (96, 112)
    assert image.dtype == np.float32 and labels.dtype == np.int32
    again_image, again_labels = make_synthetic(kind, shape=(96, 112), seed=3)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(labels, make_synthetic(kind, shape=(96, 112), seed=4)[1])


@pytest.mark.parametrize("kind", KINDS)
def test_labels_are_consecutive_single_pieces(kind):
    labels = synthetic_labels(kind, shape=(128, 128), seed=1)
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(labels.max() + 1))
    pieces = connected_label(labels, background=0, connectivity=2)
    assert pieces.max() == labels.max()
    assert np.bincount(labels.ravel())[1:].min() >= 30


def test_morphologies_differ():
    shape = (256, 256)
    counts = {k: synthetic_labels(k, shape=shape, seed=0).max() for k in KINDS}
    assert counts["spindly"] > 200 and counts["irregular"] < 20 and counts["round"] > 100
    spindly = synthetic_labels("spindly", shape=shape, seed=0)
    touching = (spindly[:, 1:] != spindly[:, :-1]) & (spindly[:, 1:] > 0) & (spindly[:, :-1] > 0)
    assert touching.sum() > 100          # densely packed, touching cells


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_shows_the_cells(seed):
    image, labels = make_synthetic("round", shape=(128, 128), seed=seed)
    outside = ndimage.distance_transform_edt(labels == 0)
    halo, far = image[(outside > 0) & (outside <= 2)], image[outside > 6]
    assert halo.mean() - far.mean() > 0.05          # bright phase-contrast halo round every cell
    assert image[labels > 0].std() > 0.01


def test_n_cells():
    assert synthetic_labels("round", shape=(128, 128), seed=0, n_cells=0).max() == 0
    few = synthetic_labels("round", shape=(128, 128), seed=0, n_cells=5)
    assert 1 <= few.max() <= 5


def test_keep_largest_pieces():
    labels = np.zeros((10, 20), dtype=np.int32)
    labels[1:5, 1:5] = 7
    labels[7:9, 15:17] = 7                # small stray piece of 7
    labels[1:4, 10:12] = 2
    out = keep_largest_pieces(labels)
    assert out.max() == 2 and not out[7:9, 15:17].any() and (out[1:5, 1:5] > 0).all()
    assert keep_largest_pieces(labels, min_area=7).max() == 1


@pytest.mark.parametrize("kwargs, error", [
    ({"kind": "square"}, ValueError), ({"kind": "round", "shape": (16, 64)}, ValueError),
    ({"kind": "round", "n_cells": -1}, ValueError),
])
def test_bad_arguments(kwargs, error):
    kind = kwargs.pop("kind")
    with pytest.raises(error, match="kind|shape|n_cells"):
        synthetic_labels(kind, **kwargs)
