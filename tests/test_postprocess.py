import dataclasses

import numpy as np
import pytest
import torch

from flowseg.config import SegmentConfig
from flowseg.flows import labels_to_flows
from flowseg.metrics import image_score
from flowseg.postprocess import segment_maps


# ----------------------------------------------------------------------------- class decisions
def _two_type_maps(rim_logit: float = 8.0):
    """Maps of 6 squares of type "a" (10x10, left) and 6 of type "b" (6x6, right); the cell
    probability logit is 8 inside and ``rim_logit`` on each square's one-pixel rim."""
    labels = np.zeros((64, 96), np.int32)
    classes = np.full((2, 64, 96), -4.0, np.float32)
    n = 0
    for row in range(3):
        for col in range(2):
            n += 1
            labels[3 + 20 * row:13 + 20 * row, 3 + 20 * col:13 + 20 * col] = n
            n += 1
            labels[3 + 20 * row:9 + 20 * row, 50 + 20 * col:56 + 20 * col] = n
    kind = np.where(labels % 2 == 1, 0, 1)  # odd ids: type a
    classes[0][(labels > 0) & (kind == 0)] = 4.0
    classes[1][(labels > 0) & (kind == 1)] = 4.0
    interior = _interiors(labels)
    cellprob = np.where(labels == 0, -8.0, np.where(interior, 8.0, rim_logit)).astype(np.float32)
    maps = np.concatenate([labels_to_flows(labels), cellprob[None], classes])
    return torch.from_numpy(maps.astype(np.float32)), labels, kind


def _interiors(labels):
    """Pixels of an instance whose 4 neighbours are all in the same instance."""
    inside = labels > 0
    for axis in (0, 1):
        for shift in (1, -1):
            inside &= np.roll(labels, shift, axis=axis) == labels
    return inside


@pytest.mark.parametrize("source", ["image", "instance"])
def test_class_source_selects_whose_values_filter_an_instance(source):
    from flowseg.config import ClassThresholds

    maps, labels, kind = _two_type_maps()
    config = SegmentConfig(min_size=0, class_source=source,
                           per_class={"b": ClassThresholds(min_size=50)})
    (res,) = segment_maps([maps], ("a", "b"), config=config)
    assert res.image_cell_type == "a"   # type a covers more pixels
    if source == "image":               # every instance filtered with type a's values
        assert res.n_instances == 12 and sorted(set(res.cell_types)) == ["a", "b"]
    else:                               # the 36-px type-b instances fall under b's min size
        assert res.n_instances == 6 and set(res.cell_types) == {"a"}
        assert image_score(np.where(kind == 0, labels, 0), res.labels).score == 1.0


def test_instance_source_trims_pixels_below_the_class_cellprob_threshold():
    from flowseg.config import ClassThresholds

    maps, labels, kind = _two_type_maps(rim_logit=2.0)
    config = SegmentConfig(min_size=0, class_source="instance", fill_holes=False,
                           per_class={"b": ClassThresholds(cellprob_threshold=4.0)})
    (res,) = segment_maps([maps], ("a", "b"), config=config)
    assert res.n_instances == 12
    fg = res.labels > 0
    rim = (labels > 0) & ~_interiors(labels)
    np.testing.assert_array_equal(fg[rim & (kind == 1)], False)   # b's rims trimmed
    np.testing.assert_array_equal(fg[rim & (kind == 0)], True)    # a's kept
    (res,) = segment_maps([maps], ("a", "b"), config=dataclasses.replace(config, class_source="image"))
    assert fg.sum() < (res.labels > 0).sum() == (labels > 0).sum()


def test_class_source_is_validated_and_stored():
    with pytest.raises(ValueError, match="class_source: expected one of"):
        SegmentConfig(class_source="pixel")
    config = SegmentConfig(class_source="instance")
    assert SegmentConfig.from_dict(config.to_dict()) == config
    assert config.for_class("x").class_source == "instance"
    d = config.to_dict()
    del d["class_source"]   # checkpoints written before the option load with the default
    assert SegmentConfig.from_dict(d).class_source == SegmentConfig().class_source


def test_segment_maps_checks_its_maps():
    with pytest.raises(ValueError, match=r"maps\[0\]: expected shape \(3 \+ 2, H, W\)"):
        segment_maps([torch.zeros(4, 8, 8)], ("a", "b"), config=SegmentConfig())


def test_min_size_counts_the_pixels_the_network_sees():
    """A 6x6 cell (36 px) predicted at scale 2 is 144 px to the network: min_size 100 keeps it;
    at scale 1 (or in maps taken as scale 1) it is dropped."""
    labels = np.zeros((32, 32), np.int32)
    labels[4:10, 4:10] = 1
    labels[16:30, 16:30] = 2                                    # 196 px
    maps = [torch.from_numpy(np.concatenate([labels_to_flows(labels),
                                             np.where(labels > 0, 8.0, -8.0)[None],
                                             np.zeros((2, 32, 32))]).astype(np.float32))]
    config = SegmentConfig(min_size=100)
    assert segment_maps(maps, ("a", "b"), config=config)[0].n_instances == 1
    assert segment_maps(maps, ("a", "b"), config=config, scales=[2.0])[0].n_instances == 2
    assert segment_maps(maps, ("a", "b"), config=config, scales=0.5)[0].n_instances == 0
    with pytest.raises(ValueError, match="scale"):
        segment_maps(maps, ("a", "b"), config=config, scales=[1.0, 2.0])
