"""The numba kernels of the host route against the torch / numpy reference code."""

import numpy as np
import pytest
import torch

from flowseg.flows import _kernels, labels_to_flows
from flowseg.flows.follow import pointer_jump, successors
from flowseg.flows.masks import _renumber, fill_holes
from flowseg.synthetic import synthetic_labels


def _noisy_flows(seed: int, shape=(3, 40, 56)):
    rng = np.random.default_rng(seed)
    labels = np.stack([synthetic_labels(k, shape=shape[1:], seed=seed) for k in ("round", "irregular", "spindly")])
    flows = labels_to_flows(labels) + rng.normal(0, 0.3, (shape[0], 2, *shape[1:])).astype(np.float32)
    flows[0, :, :3] = 0.0                                   # some zero flow
    flows[1, :, 10, 10] = np.array([0.0, -1.0])             # exactly along an axis ...
    flows[1, :, 11, 11] = np.array([1.0, 1.0])              # ... and a diagonal
    return flows.astype(np.float32), labels > 0


@pytest.mark.parametrize("seed", range(3))
def test_follow_flows_equals_torch_successors_and_pointer_jumping(seed):
    flows, foreground = _noisy_flows(seed)
    min_flow, jumps = np.array([0.3, 0.0, 0.5]), np.array([3, 10, 1])
    pixels, end, sinks = _kernels.follow_flows(flows, foreground, min_flow, jumps)
    ref_pixels, succ = successors(torch.from_numpy(flows), torch.from_numpy(foreground),
                                  min_flow=torch.from_numpy(min_flow))
    image = ref_pixels // foreground[0].size
    ref_end = pointer_jump(succ, torch.from_numpy(jumps)[image])
    np.testing.assert_array_equal(pixels, ref_pixels.numpy())
    np.testing.assert_array_equal(end, ref_end.numpy())
    expected_sinks = np.zeros(foreground.size, dtype=bool)
    expected_sinks[ref_pixels.numpy()[ref_end.numpy()]] = True
    np.testing.assert_array_equal(sinks, expected_sinks)


def _renumber_reference(labels):
    out = np.zeros(labels.shape, dtype=np.int32)
    for b in range(labels.shape[0]):
        ids = np.unique(labels[b])
        ids = ids[ids > 0]
        out[b] = np.where(labels[b] > 0, np.searchsorted(ids, labels[b]) + 1, 0)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_renumber_equals_unique_searchsorted(seed):
    labels = np.random.default_rng(seed).choice([0, 3, 9, 17, 40], size=(3, 20, 25))
    labels[2] = 0
    np.testing.assert_array_equal(_renumber(labels), _renumber_reference(labels))


def _fill_holes_reference(labels):
    """The previous numpy implementation (4-neighbour owners via np.roll)."""
    from scipy import ndimage
    holes, n = ndimage.label(labels == 0, structure=ndimage.generate_binary_structure(3, 1) & np.eye(3, dtype=bool)[1][:, None, None])
    enclosed = np.ones(n + 1, dtype=bool)
    for edge in (holes[:, 0], holes[:, -1], holes[:, :, 0], holes[:, :, -1]):
        enclosed[edge.ravel()] = False
    enclosed[0] = False
    lowest, highest = np.full(n + 1, np.iinfo(np.int64).max), np.full(n + 1, -1)
    for axis in (1, 2):
        for shift in (1, -1):
            neighbour = np.roll(labels, shift, axis=axis)
            touch = enclosed[holes] & (neighbour > 0)
            np.minimum.at(lowest, holes[touch], neighbour[touch])
            np.maximum.at(highest, holes[touch], neighbour[touch])
    fill = enclosed & (lowest == highest)
    return np.where(fill[holes], np.where(fill, highest, 0)[holes], labels)


@pytest.mark.parametrize("seed", range(3))
def test_fill_holes_equals_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.repeat(rng.choice([0, 0, 0, 1, 2, 5], size=(2, 10, 12)), 3, 1), 3, 2)
    labels[:, 5:25, 5:25] = np.where(rng.random((20, 20)) < 0.15, 0, 4)   # a cell full of holes
    out = fill_holes(labels.astype(np.int32))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, _fill_holes_reference(labels))


@pytest.mark.parametrize("density", [0.02, 0.3, 0.7])
def test_label_sparse_equals_ndimage_label(density):
    from scipy import ndimage
    mask = np.random.default_rng(int(density * 100)).random((3, 30, 41)) < density
    mask[1] = False
    expected, _ = ndimage.label(mask, structure=np.stack([np.zeros((3, 3), bool), np.ones((3, 3), bool),
                                                          np.zeros((3, 3), bool)]))
    np.testing.assert_array_equal(_kernels.label_sparse(mask), expected)
