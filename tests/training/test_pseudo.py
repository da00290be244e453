"""Pseudo-labels: only confident teacher instances become labels; unsure pixels are ignored."""

import numpy as np
import pytest

import flowseg
from flowseg.api import SegmentResult
from flowseg.flows import labels_to_flows
from flowseg.io.images import read_image
from flowseg.model.pretrained import sample_paths
from flowseg.training.pseudo import PseudoConfig, pseudo_label, select_pseudo_labels

SHAPE = (40, 48)


def _teacher(labels, *, scores, flows=None, cellprob=None):
    """A SegmentResult as a teacher would give it, with maps."""
    n = int(labels.max())
    flows = np.asarray(labels_to_flows(labels), np.float32) if flows is None else flows
    if cellprob is None:
        cellprob = np.where(labels > 0, 4.0, -4.0).astype(np.float32)
    return SegmentResult(labels=labels.astype(np.int32), cell_types=("x",) * n,
                         class_probs=np.ones((n, 1), np.float32),
                         scores=np.asarray(scores, np.float32), image_cell_type="x",
                         image_class_probs=np.ones(1, np.float32), class_names=("x",),
                         flows=flows, cellprob=cellprob)


def _three_cells():
    labels = np.zeros(SHAPE, np.int32)
    labels[4:14, 4:14] = 1      # confident, good flows: kept
    labels[4:14, 24:34] = 2     # low score: dropped
    labels[24:34, 4:14] = 3     # bad flows: dropped
    flows = np.asarray(labels_to_flows(labels), np.float32)
    flows[:, labels == 3] = flows[:, labels == 3][::-1] * -1   # rotated: large flow error
    cellprob = np.where(labels > 0, 4.0, -4.0).astype(np.float32)
    cellprob[24:34, 30:40] = 0.0        # the teacher is unsure here (p = 0.5), no instance
    return _teacher(labels, scores=[0.9, 0.1, 0.9], flows=flows, cellprob=cellprob)


def test_keeps_confident_instances_and_ignores_the_rest():
    teacher = _three_cells()
    pseudo = select_pseudo_labels(teacher, PseudoConfig(min_score=0.5, max_flow_error=0.2,
                                                        background_prob=0.2, margin=2))
    assert pseudo.kept.tolist() == [True, False, False]
    assert pseudo.n_kept == 1 and pseudo.cell_type == "x"
    assert np.array_equal(pseudo.labels, (teacher.labels == 1).astype(np.int32))
    assert pseudo.flow_errors[0] < 1e-6 and pseudo.flow_errors[2] > 0.2
    for dropped in (2, 3):
        assert pseudo.ignore[teacher.labels == dropped].all()
    assert pseudo.ignore[24:34, 30:40].all()                  # unsure cell probability
    assert pseudo.ignore[4:14, 22].all() and not pseudo.ignore[4:14, 21].any()  # margin 2
    assert not pseudo.ignore[38:, 30:].any()                  # confident background is taught
    assert not (pseudo.ignore & (pseudo.labels > 0)).any()


@pytest.mark.parametrize("seed", range(6))
def test_never_labels_a_pixel_the_teacher_left_out(seed):
    """Every pseudo-labelled pixel lies in one kept teacher instance, and each pseudo instance
    is exactly one kept teacher instance: dropped instances and background are never labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.int32)
    for k in range(1, 9):
        r, c = rng.integers(0, SHAPE[0] - 8), rng.integers(0, SHAPE[1] - 8)
        labels[r:r + rng.integers(3, 9), c:c + rng.integers(3, 9)] = k   # may overwrite others
    noise = rng.normal(size=(2, *SHAPE)) * (labels % 2)           # odd ids: noisy flows
    flows = (np.asarray(labels_to_flows(labels)) + noise).astype(np.float32)
    teacher = _teacher(labels, scores=rng.uniform(0, 1, 8), flows=flows,
                       cellprob=rng.normal(0, 3, SHAPE).astype(np.float32))
    pseudo = select_pseudo_labels(teacher, PseudoConfig(min_score=0.3, max_flow_error=0.3))
    present = np.isin(np.arange(1, 9), labels)
    assert not pseudo.kept[~present].any()                   # an absent id is never kept
    kept_ids = np.flatnonzero(pseudo.kept) + 1
    assert np.array_equal(pseudo.labels > 0, np.isin(labels, kept_ids))
    for new, old in enumerate(kept_ids, start=1):
        assert np.array_equal(pseudo.labels == new, labels == old)
    assert not (pseudo.ignore & (pseudo.labels > 0)).any()
    assert pseudo.ignore[(labels > 0) & (pseudo.labels == 0)].all()


def test_no_instances_gives_empty_labels():
    teacher = _teacher(np.zeros(SHAPE, np.int32), scores=[])
    pseudo = select_pseudo_labels(teacher)
    assert pseudo.labels.max() == 0 and pseudo.kept.shape == (0,) and not pseudo.ignore.any()


def test_refuses_a_result_without_maps():
    teacher = _three_cells()
    plain = SegmentResult(**{**teacher.__dict__, "flows": None, "cellprob": None})
    with pytest.raises(ValueError, match="return_maps=True"):
        select_pseudo_labels(plain)


@pytest.mark.parametrize("field, value", [("min_score", 1.5), ("background_prob", -0.1),
                                          ("max_flow_error", -1.0), ("margin", -1),
                                          ("margin", 1.5)])
def test_config_checks_values(field, value):
    with pytest.raises(ValueError, match=field):
        PseudoConfig(**{field: value})


def test_shipped_teacher_on_a_sample_image():
    image = read_image(sample_paths()[0])[:192, :192]
    model = flowseg.load_model(device="cpu")
    (pseudo,) = pseudo_label([image], model, scale=1.0)
    (teacher,) = flowseg.segment([image], model, scale=1.0)
    assert 0 < pseudo.n_kept <= teacher.n_instances
    kept_ids = np.flatnonzero(pseudo.kept) + 1
    assert np.array_equal(pseudo.labels > 0, np.isin(teacher.labels, kept_ids))
    assert not (pseudo.ignore & (pseudo.labels > 0)).any()
