import dataclasses

import pytest
import torch

from flowseg.config import ClassThresholds, ModelConfig, SegmentConfig
from flowseg.model.checkpoint import Model
from flowseg.model.unet import UNet
from flowseg.training.finetune import init_config, init_segment_config, init_weights


def _model(names, **kw):
    torch.manual_seed(len(names))
    config = ModelConfig(n_classes=len(names), widths=(8, 16), **kw)
    thresholds = SegmentConfig(per_class={n: ClassThresholds(min_size=10 + i)
                                          for i, n in enumerate(names)})
    return Model(UNet(config), config, names, thresholds)


@pytest.mark.parametrize("style_classes", [True, False])
def test_class_rows_follow_the_names(style_classes):
    source = _model(("astro", "cort", "shsy5y"), style_classes=style_classes)
    names = ("cort", "new")
    torch.manual_seed(99)
    net = UNet(init_config(source, names, channels=1))
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    assert init_weights(net, source, names) == ("new",)
    old, new = source.net.state_dict(), net.state_dict()
    assert torch.equal(new["head.2.weight"][:3], old["head.2.weight"][:3])  # flows, cellprob
    assert torch.equal(new["head.2.weight"][3], old["head.2.weight"][4])  # cort
    assert torch.equal(new["head.2.weight"][4], fresh["head.2.weight"][4])  # new: own init
    assert torch.equal(new["bottom.units.0.conv1.2.weight"], old["bottom.units.0.conv1.2.weight"])
    if style_classes:
        assert torch.equal(new["style_classes.weight"][0], old["style_classes.weight"][1])
    else:  # an old model without the style -> class map: the new model has none either
        assert net.style_classes is None


def test_config_keeps_the_architecture_and_refuses_other_requests():
    source = _model(("a", "b"))
    config = init_config(source, ("a",), channels=1)
    assert config == dataclasses.replace(source.model_config, n_classes=1)
    with pytest.raises(ValueError, match=r"widths \(\(8, 16\), asked \(8, 32\)\)"):
        init_config(source, ("a",), channels=1,
                    requested=dataclasses.replace(config, widths=(8, 32)))
    with pytest.raises(ValueError, match="takes 1 channel"):
        init_config(source, ("a",), channels=3)


def test_thresholds_of_remaining_types_are_kept():
    source = _model(("a", "b"))
    kept = init_segment_config(source, ("b", "c"))
    assert set(kept.per_class) == {"b"} and kept.per_class["b"].min_size == 11
