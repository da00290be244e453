import numpy as np
import pytest
from cellpose import utils

from flowseg.outlines import outline_image, outline_polygons
from flowseg.synthetic import make_synthetic


@pytest.mark.parametrize("kind, seed", [("round", 0), ("spindly", 1)])
def test_outlines_are_cellposes(kind, seed):
    _, labels = make_synthetic(kind, shape=(96, 96), seed=seed)
    ours = outline_polygons(labels)
    theirs = utils.outlines_list(labels, multiprocessing=False)
    assert len(ours) == len(theirs) == labels.max()
    for a, b in zip(ours, theirs):
        assert set(map(tuple, a)) == set(map(tuple, b))  # same (x, y) boundary pixels
        assert np.abs(np.diff(a, axis=0)).max() <= 1        # in order: each step to a neighbour
    np.testing.assert_array_equal(outline_image(labels), labels * utils.masks_to_outlines(labels))


def test_missing_ids_and_stacks():
    labels = np.zeros((10, 12), np.int32)
    labels[2:6, 3:8] = 2
    polygons = outline_polygons(labels)
    assert len(polygons) == 2 and polygons[0].shape == (0, 2)
    assert set(map(tuple, polygons[1])) == {(x, y) for y in range(2, 6) for x in range(3, 8)
                                            if y in (2, 5) or x in (3, 7)}
    stack = outline_image(np.stack([labels, labels * 0]))
    assert stack.shape == (2, 10, 12) and stack[1].max() == 0 and stack[0].max() == 2
    with pytest.raises(ValueError, match="labels: expected a 2-D"):
        outline_polygons(labels.astype(float))
