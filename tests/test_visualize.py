import numpy as np
import pytest

from flowseg.visualize import CLASS_COLORS, overlay_outlines, to_display_gray


def test_outlines_take_class_colours():
    image = np.full((20, 30), 100, np.uint16)
    labels = np.zeros((20, 30), np.int32)
    labels[2:8, 2:8] = 1
    labels[10:18, 10:25] = 2
    rgb = overlay_outlines(image, labels, [0, 1])
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[2, 4]) == CLASS_COLORS[0]          # edge of instance 1
    assert tuple(rgb[10, 12]) == CLASS_COLORS[1]        # edge of instance 2
    assert rgb[5, 5, 0] == rgb[5, 5, 1] == rgb[5, 5, 2]  # interior stays gray


def test_constant_and_nan_images_do_not_crash():
    assert to_display_gray(np.zeros((4, 4))).max() == 0
    img = np.ones((4, 4), np.float32)
    img[0, 0] = np.nan
    assert to_display_gray(img).dtype == np.uint8


def test_mismatches_are_errors():
    with pytest.raises(ValueError, match="labels: expected shape"):
        overlay_outlines(np.zeros((4, 4)), np.zeros((5, 4), np.int32), [])
    with pytest.raises(ValueError, match="instance_classes"):
        overlay_outlines(np.zeros((4, 4)), np.ones((4, 4), np.int32), [])


def test_flow_picture_is_cellposes():
    from cellpose.plot import dx_to_circ

    from flowseg.visualize import flows_to_rgb

    flows = np.random.default_rng(0).normal(size=(2, 20, 30)).astype(np.float32)
    diff = flows_to_rgb(flows).astype(int) - dx_to_circ(flows)  # float rounding: +-1 at most
    assert np.abs(diff).max() <= 1 and (diff != 0).mean() < 0.01
