import numpy as np
import pytest
from cellpose.utils import stitch3D

import flowseg
from flowseg.io.images import read_image
from flowseg.stacks import segment_stack, stitch_planes
from flowseg.synthetic import make_synthetic


def _shuffled_planes(labels, n, seed=0):
    """``n`` planes of ``labels`` shifted by a pixel each, ids shuffled per plane."""
    rng = np.random.default_rng(seed)
    planes = []
    for z in range(n):
        plane = np.roll(labels, z, axis=1)
        perm = np.zeros(plane.max() + 1, np.int64)
        perm[1:] = rng.permutation(plane.max()) + 1
        planes.append(perm[plane])
    return np.stack(planes)


def test_stitching_is_cellposes():
    _, labels = make_synthetic("round", shape=(96, 96), seed=0)
    stack = _shuffled_planes(labels, 4)
    ours = stitch_planes(stack, threshold=0.25)
    np.testing.assert_array_equal(ours, stitch3D(stack.copy(), 0.25))
    for z in range(1, 4):  # every cell keeps its id through the planes
        np.testing.assert_array_equal(ours[z], np.roll(ours[0], z, axis=1))


def test_no_link_below_the_threshold_and_threshold_zero_links_nothing():
    a = np.zeros((2, 10, 10), np.int32)
    a[0, 0:4, 0:4] = 1
    a[1, 2:6, 2:6] = 1  # IoU 4/28
    assert stitch_planes(a, threshold=0.1)[1].max() == 1
    assert stitch_planes(a, threshold=0.2)[1].max() == 2
    assert stitch_planes(a, threshold=0)[1].max() == 2
    with pytest.raises(ValueError, match="stitch_threshold: expected an IoU in"):
        stitch_planes(a, threshold=1.5)


def test_a_three_plane_stack_keeps_its_cell_ids():
    model = flowseg.load_model(device="cpu")
    crop = read_image(flowseg.sample_paths()[0])[100:228, 100:228]
    stack = np.stack([np.roll(crop, z, axis=1) for z in range(3)])
    result = segment_stack(stack, model, predict=flowseg.PredictConfig(tile=0), return_maps=True)
    assert result.labels.shape == (3, 128, 128) and result.n_instances > 5
    assert result.flows.shape == (3, 2, 128, 128) and len(result.planes) == 3
    ids = [set(np.unique(plane)[1:]) for plane in result.labels]
    # the same cells shifted by 1-2 px: nearly all keep their id (a border cell may leave)
    assert ids[0] | ids[1] | ids[2] == set(range(1, result.n_instances + 1))
    assert len(ids[0] & ids[1] & ids[2]) >= 0.8 * result.n_instances
    for z in (1, 2):  # where a cell of the plane below moved to, it has that cell's id
        # (linking is between neighbouring planes, as in cellpose's stitch3D: a cell the
        # network misses in the middle plane comes back in the top one with a new id)
        moved = np.roll(result.labels[z - 1], 1, axis=1)
        both = (moved > 0) & (result.labels[z] > 0)
        assert (result.labels[z][both] == moved[both]).mean() > 0.98
    assert set(result.cell_types) <= set(model.class_names)


def test_a_stack_with_the_old_keywords_warns_once():
    import warnings

    from tests.model_fixtures import tiny_model

    stack = np.stack([make_synthetic("round", shape=(48, 48), seed=z)[0] for z in range(2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = segment_stack(stack, tiny_model(), tile=None, precision="fp32", scale=1.0)
    assert [w.category for w in caught] == [FutureWarning]
    new = segment_stack(stack, tiny_model(), scale=1.0,
                        predict=flowseg.PredictConfig(tile=None, precision="fp32"))
    np.testing.assert_array_equal(old.labels, new.labels)


def test_normalize_once_normalises_the_planes_and_turns_normalisation_off():
    from flowseg.data.normalize import normalize_image
    from flowseg.stacks import normalize_once

    planes = [make_synthetic("round", shape=(32, 32), seed=z)[0] * 200 for z in range(2)]
    predict = flowseg.PredictConfig(tile=None, normalize=(2, 98))
    normed, options = normalize_once(planes, {"predict": predict, "scale": 1.0})
    assert options == {"predict": flowseg.PredictConfig(tile=None, normalize=None), "scale": 1.0}
    for raw, done in zip(planes, normed):
        np.testing.assert_array_equal(done, normalize_image(raw, percentiles=(2, 98)))
    normed, options = normalize_once(planes, {})      # no predict: the defaults
    assert options["predict"] == flowseg.PredictConfig(normalize=None)
