import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from flowseg.flows import labels_to_flows
from flowseg.flows import _kernels
from flowseg.flows.targets import OFFSETS, border_distance, component_centres, geodesic_distance, pixel_graph
from flowseg.synthetic import synthetic_labels


def _centres(labels: np.ndarray, flows: np.ndarray) -> np.ndarray:
    return (labels > 0) & (np.hypot(*flows) == 0)


def test_unit_inside_zero_outside(synthetic):
    flows = labels_to_flows(synthetic)
    assert flows.shape == (2, *synthetic.shape) and flows.dtype == np.float32
    assert np.all(flows[:, synthetic == 0] == 0)
    norm = np.hypot(*flows)[synthetic > 0]
    moving = norm > 0
    np.testing.assert_allclose(norm[moving], 1.0, atol=1e-5)
    # synthetic cells are single pieces: exactly one zero-flow pixel (the sink) per cell
    assert (~moving).sum() == len(np.unique(synthetic)) - 1


def test_numpy_and_torch_kinds():
    labels = synthetic_labels("round", shape=(64, 64), seed=1)
    tensor = labels_to_flows(torch.from_numpy(labels))
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(tensor.numpy(), labels_to_flows(labels))


def test_batch_of_three_equals_singles():
    stack = np.stack([synthetic_labels(k, shape=(96, 80), seed=3) for k in ("round", "irregular", "spindly")])
    batch = labels_to_flows(stack)
    assert batch.shape == (3, 2, 96, 80)
    for b in range(3):
        np.testing.assert_array_equal(batch[b], labels_to_flows(stack[b]))


def test_non_consecutive_ids_and_dtypes():
    labels = synthetic_labels("round", shape=(64, 64), seed=2)
    sparse = np.where(labels > 0, labels * 7 + 100, 0)
    np.testing.assert_array_equal(labels_to_flows(sparse.astype(np.uint16)), labels_to_flows(labels))


def test_flip_flips_flows_and_negates_component():
    labels = synthetic_labels("irregular", shape=(96, 96), seed=5)
    flows = labels_to_flows(labels)
    for axis in (0, 1):
        flipped = labels_to_flows(np.flip(labels, axis))
        expected = np.flip(flows, axis + 1).copy()
        expected[axis] *= -1
        close = np.isclose(flipped, expected, atol=1e-5).all(axis=0)
        # only exact ties (centre choice, sector boundaries) may break the symmetry
        assert close.mean() > 0.995
        np.testing.assert_allclose(flipped, expected, atol=0.1)


def test_no_reads_across_touching_cells():
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[5:30, 5:30] = 1
    labels[5:30, 30:55] = 2          # touches cell 1 along a whole side
    changed = labels.copy()
    changed[5:12, 30:40] = 0         # cell 2 loses a corner ...
    changed[30:36, 30:55] = 2        # ... and grows below
    before, after = labels_to_flows(labels), labels_to_flows(changed)
    np.testing.assert_array_equal(before[:, labels == 1], after[:, labels == 1])
    assert not np.array_equal(before[:, changed == 2][:, :10], after[:, changed == 2][:, :10])


def test_flows_point_to_the_centre_of_a_disc():
    yy, xx = np.mgrid[0:41, 0:41]
    labels = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 15 ** 2).astype(np.int32)
    flows = labels_to_flows(labels)
    assert np.hypot(*flows[:, 20, 20]) == 0
    inward = np.stack([20 - yy, 20 - xx]) / np.maximum(np.hypot(20 - yy, 20 - xx), 1)
    cos = (flows * inward).sum(0)[(labels > 0) & ((yy != 20) | (xx != 20))]
    assert cos.min() > np.cos(np.radians(25))


def test_disconnected_piece_gets_zero_flow():
    labels = np.zeros((20, 40), dtype=np.int32)
    labels[2:15, 2:15] = 1
    labels[5:8, 30:33] = 1           # a stray piece of the same cell
    flows = labels_to_flows(labels)
    assert np.all(flows[:, 5:8, 30:33] == 0)
    assert np.hypot(*flows)[2:15, 2:15].sum() > 150


def test_torch_route_equals_numba_route_on_cpu(synthetic):
    labels = np.stack([synthetic, synthetic[::-1]])
    labels[1, 10:14, 100:104] = labels[1].max() + 1      # extra isolated cell
    labels[1, 40:42, 100:102] = labels[1].max()          # and a stray piece of it
    np.testing.assert_array_equal(labels_to_flows(labels, method="torch"), labels_to_flows(labels, method="numba"))
    graph = pixel_graph(torch.from_numpy(labels).long())
    np.testing.assert_array_equal(geodesic_distance(graph, method="torch"), geodesic_distance(graph, method="numba"))


@pytest.mark.parametrize("seed", range(4))
def test_numba_route_equals_torch_route_on_random_labels(seed):
    """Random labels: many cells in pieces, one-pixel cells, cells touching the image border."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=(2, 30, 37))
    labels[:, 5:20, 5:25] = rng.integers(1, 3)           # and one solid block
    np.testing.assert_array_equal(labels_to_flows(labels, method="numba"), labels_to_flows(labels, method="torch"))


def test_numba_shortest_paths_equal_scipy_dijkstra(synthetic):
    graph = pixel_graph(torch.from_numpy(synthetic).long()[None])
    nbr = graph.neighbours.numpy()
    keep = nbr >= 0
    rows = np.repeat(np.arange(nbr.shape[0]), 8).reshape(nbr.shape)[keep]
    weights = np.broadcast_to(np.hypot(*np.array(OFFSETS).T), nbr.shape)[keep]
    matrix = csr_matrix((weights, (rows, nbr[keep])), shape=(nbr.shape[0],) * 2)
    expected = dijkstra(matrix, indices=component_centres(graph).numpy(), min_only=True)
    np.testing.assert_array_equal(geodesic_distance(graph, method="numba").numpy(), expected)


@pytest.mark.parametrize("seed", range(3))
def test_numba_border_distance_equals_scipy_edt(seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.repeat(rng.integers(0, 3, size=(3, 12, 15)), 4, axis=1), 5, axis=2)
    labels[1] = 0                                         # an empty image in the batch
    labels[2, 3:40, 2:70] = 7                             # a big cell touching nothing
    graph = pixel_graph(torch.from_numpy(labels).long())
    nbr = _kernels.same_label_neighbours(labels.astype(np.int64))
    edt = np.zeros(labels.size)
    _kernels.subtract_inner_edt(edt, nbr, *labels.shape, -1.0)        # edt -= -1 * distance
    np.testing.assert_array_equal(edt[graph.pixels.numpy()], border_distance(graph).numpy())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_equals_cuda(synthetic):
    labels = torch.from_numpy(np.stack([synthetic, synthetic.T.copy()]))
    gpu = labels_to_flows(labels, device="cuda")
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.cpu().numpy(), labels_to_flows(labels.numpy()), atol=1e-5)


def test_empty_and_all_background():
    assert not labels_to_flows(np.zeros((8, 9), dtype=np.int32)).any()
    assert labels_to_flows(np.zeros((2, 8, 9), dtype=np.int32)).shape == (2, 2, 8, 9)


@pytest.mark.parametrize("bad, error", [
    (np.zeros((4, 4), dtype=np.float32), TypeError),
    (np.zeros((1, 1, 4, 4), dtype=np.int32), ValueError),
    (-np.ones((4, 4), dtype=np.int32), ValueError),
    ([[0, 1]], TypeError),
])
def test_bad_labels(bad, error):
    with pytest.raises(error, match="labels"):
        labels_to_flows(bad)


def test_bad_method():
    with pytest.raises(ValueError, match="method"):
        labels_to_flows(np.ones((4, 4), dtype=np.int32), method="fmm")
