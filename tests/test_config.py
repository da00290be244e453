import pytest

from flowseg.config import ClassThresholds, SegmentConfig


def test_defaults_are_valid():
    cfg = SegmentConfig()
    assert cfg.cellprob_threshold == 0.0 and cfg.min_size >= 0 and cfg.niter >= 1


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"cellprob_threshold": float("nan")}, ValueError, "cellprob_threshold"),
    ({"cellprob_threshold": "0.5"}, TypeError, "cellprob_threshold"),
    ({"flow_threshold": -0.1}, ValueError, "flow_threshold"),
    ({"min_size": -1}, ValueError, "min_size"),
    ({"min_size": 2.5}, TypeError, "min_size"),
    ({"niter": 0}, ValueError, "niter"),
    ({"per_class": {"astro": {"min_size": 3}}}, TypeError, "per_class['astro']"),
])
def test_invalid_values_name_the_parameter(kwargs, exc, words):
    with pytest.raises(exc, match=words.replace("[", r"\[").replace("]", r"\]")):
        SegmentConfig(**kwargs)


def test_for_class_applies_only_given_overrides():
    cfg = SegmentConfig(min_size=15, flow_threshold=0.4,
                        per_class={"astro": ClassThresholds(min_size=150, cellprob_threshold=-0.5)})
    astro = cfg.for_class("astro")
    assert (astro.min_size, astro.cellprob_threshold, astro.flow_threshold) == (150, -0.5, 0.4)
    assert astro.per_class == {}
    assert cfg.for_class("cort").min_size == 15
    assert cfg.for_class(None).min_size == 15


def test_dict_round_trip():
    cfg = SegmentConfig(niter=100, per_class={"cort": ClassThresholds(flow_threshold=0.6)})
    assert SegmentConfig.from_dict(cfg.to_dict()) == cfg


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown keys"):
        SegmentConfig.from_dict({"cellprob": 0.1})


def test_train_config_from_before_class_grad_keeps_the_full_class_gradient():
    from flowseg.config import TrainConfig

    stored = TrainConfig().to_dict()
    assert stored.pop("class_grad") == 0.0
    assert TrainConfig.from_dict(stored).class_grad == 1.0
    assert TrainConfig.from_dict(TrainConfig(class_grad=0.3).to_dict()).class_grad == 0.3


def test_model_config_from_before_style_classes_has_none():
    from flowseg.config import ModelConfig

    stored = ModelConfig().to_dict()
    assert stored.pop("style_classes") is True
    assert ModelConfig.from_dict(stored).style_classes is False
