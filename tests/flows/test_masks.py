import numpy as np
import pytest
import torch

from flowseg.config import SegmentConfig
from flowseg.flows import fill_holes, flow_error, flows_to_labels, labels_to_flows
from flowseg.flows.masks import connected_components
from flowseg.metrics import image_score
from flowseg.synthetic import keep_largest_pieces, synthetic_labels
from tests.flows.conftest import cellprob_for, real_samples


def _round_trip(labels, **kw):
    return flows_to_labels(labels_to_flows(labels), cellprob_for(labels), **kw)


def test_round_trip_synthetic(synthetic):
    pred = _round_trip(synthetic)
    assert pred.dtype == np.int32 and pred.shape == synthetic.shape
    assert image_score(synthetic, pred).score >= 0.99


@pytest.mark.parametrize("name, labels", real_samples(), ids=lambda v: v if isinstance(v, str) else "")
def test_round_trip_real_samples(name, labels):
    # A cell cut into several pieces (by overlaps or by the crop) cannot come back whole from
    # any flow field; the reachable truth keeps each cell's largest piece.
    assert image_score(keep_largest_pieces(labels), _round_trip(labels)).score >= 0.99


def test_round_trip_is_exact_without_filters(synthetic):
    pred = _round_trip(synthetic, config=SegmentConfig(min_size=0, flow_threshold=0.0, fill_holes=False))
    # same partition: every true cell maps to exactly one predicted id and vice versa
    pairs = np.unique(np.stack([synthetic.ravel(), pred.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(synthetic)) and pred.max() == synthetic.max()


def test_batch_of_three_equals_singles():
    labels = np.stack([synthetic_labels(k, shape=(80, 96), seed=11) for k in ("round", "irregular", "spindly")])
    flows, cellprob = labels_to_flows(labels), cellprob_for(labels)
    batch = flows_to_labels(flows, cellprob)
    for b in range(3):
        np.testing.assert_array_equal(batch[b], flows_to_labels(flows[b], cellprob[b]))


def test_torch_input_and_unbatched():
    labels = synthetic_labels("round", shape=(64, 64), seed=4)
    flows = labels_to_flows(torch.from_numpy(labels))
    pred = flows_to_labels(flows, torch.from_numpy(cellprob_for(labels)))
    assert isinstance(pred, np.ndarray) and pred.shape == (64, 64)
    np.testing.assert_array_equal(pred, _round_trip(labels))


def test_per_image_config():
    labels = np.stack([synthetic_labels("round", shape=(64, 64), seed=5)] * 2)
    flows, cellprob = labels_to_flows(labels), cellprob_for(labels)
    configs = [SegmentConfig(), SegmentConfig(cellprob_threshold=20.0)]
    pred = flows_to_labels(flows, cellprob, config=configs)
    assert pred[0].max() == labels[0].max() and pred[1].max() == 0
    with pytest.raises(ValueError, match="config"):
        flows_to_labels(flows, cellprob, config=configs[:1])


def test_min_size():
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[2:22, 2:22] = 1                       # 400 px
    labels[30:35, 30:35] = 2                     # 25 px
    kept = _round_trip(labels, config=SegmentConfig(min_size=25))
    dropped = _round_trip(labels, config=SegmentConfig(min_size=26))
    assert kept.max() == 2 and dropped.max() == 1 and not dropped[30:35, 30:35].any()


def test_flow_error_qc_removes_scrambled_instance():
    yy, xx = np.mgrid[0:64, 0:96]
    labels = np.zeros((64, 96), dtype=np.int32)
    for k, (cy, cx) in enumerate([(16, 16), (40, 48), (20, 78)], start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 12 ** 2] = k
    flows = labels_to_flows(labels)
    victim = labels == 2
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, victim.sum())
    flows[:, victim] = np.stack([np.sin(angle), np.cos(angle)])
    off = flows_to_labels(flows, cellprob_for(labels), config=SegmentConfig(flow_threshold=0.0, min_size=0))
    on = flows_to_labels(flows, cellprob_for(labels), config=SegmentConfig(flow_threshold=0.4, min_size=0))
    assert off[victim].any() and not on[victim].any()
    np.testing.assert_array_equal(on[~victim] > 0, labels[~victim] > 0)


def test_flow_error_values():
    labels = synthetic_labels("spindly", shape=(64, 64), seed=8)
    flows = labels_to_flows(labels)
    errors = flow_error(flows, labels)
    assert errors.shape == (labels.max(),) and np.all(errors == 0)
    # negated flows: squared difference 4 at every moving pixel, 0 at the sink
    moving = np.bincount(labels.ravel(), weights=(np.hypot(*flows) > 0).ravel())[1:]
    expected = 4.0 * moving / np.bincount(labels.ravel())[1:]
    np.testing.assert_allclose(flow_error(-flows, labels), expected, rtol=1e-6)
    batch = flow_error(np.stack([flows, -flows]), np.stack([labels, labels]))
    assert isinstance(batch, list) and len(batch) == 2
    np.testing.assert_allclose(batch[1], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="flows"):
        flow_error(flows[:, :-1], labels)


def test_flow_error_absent_ids_are_nan():
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[2:10, 2:10] = 3
    errors = flow_error(labels_to_flows(labels), labels)
    assert errors.shape == (3,) and np.isnan(errors[:2]).all() and errors[2] == 0


def test_fill_holes_in_flows_to_labels():
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[5:30, 5:30] = 1
    labels[14:20, 14:20] = 0                     # hole
    flows, cellprob = labels_to_flows(labels), cellprob_for(labels)
    filled = flows_to_labels(flows, cellprob)
    kept = flows_to_labels(flows, cellprob, config=SegmentConfig(fill_holes=False))
    assert filled[14:20, 14:20].min() == 1 and not kept[14:20, 14:20].any()


def test_fill_holes_only_single_owner_and_not_border():
    labels = np.zeros((1, 30, 30), dtype=np.int64)
    labels[0, 2:12, 2:12] = 1
    labels[0, 5:8, 5:8] = 0                      # hole of 1 -> filled
    labels[0, 15:25, 2:12] = 2
    labels[0, 15:25, 12:22] = 3
    labels[0, 18:22, 10:14] = 0                  # hole shared by 2 and 3 -> kept
    labels[0, 0:8, 20:30] = 4
    labels[0, 0:3, 24:27] = 0                    # notch on the image border -> kept
    out = fill_holes(labels)
    assert np.all(out[0, 5:8, 5:8] == 1)
    assert not out[0, 18:22, 10:14].any() and not out[0, 0:3, 24:27].any()
    np.testing.assert_array_equal(out[labels > 0], labels[labels > 0])


def test_connected_components_torch_equals_scipy():
    rng = np.random.default_rng(3)
    mask = torch.from_numpy(rng.random((3, 40, 50)) > 0.6)
    scipy_ids = connected_components(mask, method="scipy")
    torch_ids = connected_components(mask, method="torch")
    assert torch.equal(scipy_ids > 0, mask) and torch.equal(torch_ids > 0, mask)
    pairs = torch.unique(torch.stack([scipy_ids[mask], torch_ids[mask]]), dim=1)
    assert pairs.shape[1] == int(scipy_ids.max())            # a bijection between the two
    assert len(torch.unique(pairs[1])) == pairs.shape[1]


def test_no_foreground_gives_empty_labels():
    flows = np.zeros((2, 2, 16, 16), np.float32)
    out = flows_to_labels(flows, -np.ones((2, 16, 16), np.float32))
    assert out.shape == (2, 16, 16) and out.dtype == np.int32 and not out.any()


def test_zero_flow_plateau_is_dropped():
    flows = np.zeros((2, 16, 16), np.float32)
    assert not flows_to_labels(flows, np.ones((16, 16), np.float32)).any()


@pytest.mark.parametrize("flows, cellprob, error", [
    (np.zeros((3, 8, 8), np.float32), np.zeros((8, 8), np.float32), ValueError),
    (np.zeros((2, 8, 8), np.float32), np.zeros((8, 9), np.float32), ValueError),
    (np.zeros((2, 8, 8), np.int32), np.zeros((8, 8), np.float32), TypeError),
])
def test_bad_inputs(flows, cellprob, error):
    with pytest.raises(error):
        flows_to_labels(flows, cellprob)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_equals_cuda():
    labels = np.stack([synthetic_labels(k, shape=(96, 96), seed=2) for k in ("round", "irregular", "spindly")])
    flows, cellprob = labels_to_flows(labels), cellprob_for(labels)
    np.testing.assert_array_equal(flows_to_labels(flows, cellprob, device="cuda"), flows_to_labels(flows, cellprob))


def test_device_route_on_cpu_equals_cpu_route(monkeypatch):
    """The torch-only route (what CUDA runs) gives the same flows and labels as the numba route,
    bit for bit, also with noisy flows (QC drops instances, holes, plateaus)."""
    from flowseg.flows import _ops
    labels = np.stack([synthetic_labels(k, shape=(64, 72), seed=9) for k in ("round", "irregular", "spindly")])
    labels[1, 5:9, 5:9] = labels[1].max() + 1           # a cell in two pieces
    labels[1, 50:53, 60:63] = labels[1].max()
    flows, cellprob = labels_to_flows(labels), cellprob_for(labels)
    expected = flows_to_labels(flows, cellprob)
    noisy = flows + np.random.default_rng(0).normal(0, 0.4, flows.shape).astype(np.float32)
    expected_noisy = flows_to_labels(noisy, cellprob, config=SegmentConfig(min_size=5))
    monkeypatch.setattr(_ops, "host_path", lambda tensor: False)
    np.testing.assert_array_equal(labels_to_flows(labels), flows)
    np.testing.assert_array_equal(flows_to_labels(flows, cellprob), expected)
    np.testing.assert_array_equal(flows_to_labels(noisy, cellprob, config=SegmentConfig(min_size=5)), expected_noisy)


def test_min_flow_makes_short_flows_sinks():
    labels = synthetic_labels("round", shape=(64, 64), seed=12)
    flows, cellprob = 0.2 * labels_to_flows(labels), cellprob_for(labels)
    configs = [SegmentConfig(min_flow=0.1, flow_threshold=0.0), SegmentConfig(min_flow=0.3, flow_threshold=0.0)]
    moving, still = flows_to_labels(np.stack([flows, flows]), np.stack([cellprob, cellprob]), config=configs)
    assert image_score(labels, moving).score >= 0.99
    assert not still.any()           # nothing moves: every cell is a plateau and is dropped
