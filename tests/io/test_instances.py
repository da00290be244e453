import numpy as np
import pytest

from flowseg.io.instances import fill_instance_holes, fill_label_holes, paint_instances


def _indices(mask):
    return np.flatnonzero(np.asarray(mask).ravel())


def test_smallest_instance_on_top_and_label_is_list_position():
    big = np.zeros((6, 6), bool)
    big[:4, :4] = True
    small = np.zeros((6, 6), bool)
    small[3:5, 3:5] = True
    labels = paint_instances([_indices(small), _indices(big)], (6, 6))
    assert labels.dtype == np.int32
    assert (labels[small] == 1).all()
    assert (labels[big & ~small] == 2).all()
    assert labels[~(big | small)].sum() == 0


def test_tie_goes_to_later_instance_and_covered_instance_disappears():
    a = np.array([0, 1])
    b = np.array([1, 2])
    labels = paint_instances([a, b], (1, 3))
    assert labels.tolist() == [[1, 2, 2]]
    covered = paint_instances([np.arange(4), np.array([0, 1]), np.array([2, 3])], (2, 2))
    assert set(np.unique(covered)) == {2, 3}


def test_fill_holes_before_painting():
    ring = np.ones((5, 5), bool)
    ring[1:4, 1:4] = False
    inner = np.zeros((5, 5), bool)
    inner[2, 2] = True
    labels = paint_instances([_indices(ring), _indices(inner)], (5, 5), fill_holes=True)
    assert labels[2, 2] == 2 and (labels[1:4, 1:4][inner[1:4, 1:4] == 0] == 1).all()
    assert (paint_instances([_indices(ring)], (5, 5))[1:4, 1:4] == 0).all()


def test_fill_instance_holes_offset_in_image():
    mask = np.zeros((8, 9), bool)
    mask[3:7, 4:8] = True
    mask[4:6, 5:7] = False
    filled = fill_instance_holes(_indices(mask), (8, 9))
    expected = np.zeros((8, 9), bool)
    expected[3:7, 4:8] = True
    assert filled.tolist() == _indices(expected).tolist()


def test_fill_label_holes_keeps_other_labels():
    labels = np.zeros((7, 7), np.int32)
    labels[1:6, 1:6] = 4
    labels[2:5, 2:5] = 0
    labels[3, 3] = 9
    out = fill_label_holes(labels)
    assert out[3, 3] == 9 and out[2, 2] == 4 and (out[1:6, 1:6] > 0).all()
    assert labels[2, 2] == 0   # input untouched


def test_out_of_image_indices_refused():
    with pytest.raises(ValueError, match=r"indices\[0\] must lie in \[0, 4\)"):
        paint_instances([np.array([4])], (2, 2))


def test_relabel_consecutive_keeps_order():
    from flowseg.io.instances import relabel_consecutive

    labels = np.array([[0, 7, 7], [3, 0, 12]])
    out = relabel_consecutive(labels)
    assert out.dtype == np.int32 and out.tolist() == [[0, 2, 2], [1, 0, 3]]
    same = np.array([[0, 2], [1, 0]], np.uint16)
    assert relabel_consecutive(same).tolist() == same.tolist()


def test_drop_edge_instances():
    from flowseg.io.instances import drop_edge_instances

    labels = np.zeros((6, 6), np.int32)
    labels[0, 0], labels[2:4, 2:4], labels[5, 3] = 1, 2, 3
    np.testing.assert_array_equal(drop_edge_instances(labels), np.where(labels == 2, 1, 0))
    with pytest.raises(ValueError, match="labels: expected a 2-D"):
        drop_edge_instances(labels[None])
