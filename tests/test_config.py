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


def test_train_config_from_before_flow_context_had_none():
    from flowseg.config import TrainConfig

    stored = TrainConfig(flow_context=64).to_dict()
    assert stored.pop("flow_context") == 64
    assert TrainConfig.from_dict(stored).flow_context == 0
    with pytest.raises(ValueError, match="flow_context"):
        TrainConfig(flow_context=-1)
    with pytest.raises(TypeError, match="flow_context"):
        TrainConfig(flow_context=1.5)


def test_model_config_from_before_style_classes_has_none():
    from flowseg.config import ModelConfig

    stored = ModelConfig().to_dict()
    assert stored.pop("style_classes") is True
    assert ModelConfig.from_dict(stored).style_classes is False


def test_override_keeps_the_tuned_values_it_does_not_name():
    tuned = SegmentConfig(min_size=15, flow_threshold=0.4, per_class={
        "astro": ClassThresholds(min_size=100, flow_threshold=0.6),
        "cort": ClassThresholds(min_size=60)})
    every = tuned.override(min_size=30)
    assert [every.for_class(t).min_size for t in ("astro", "cort", None)] == [30, 30, 30]
    assert every.for_class("astro").flow_threshold == 0.6
    some = tuned.override(min_size={"astro": 50, "shsy5y": 5}, exclude_on_edges=True)
    assert [some.for_class(t).min_size for t in ("astro", "cort", "shsy5y")] == [50, 60, 5]
    assert some.exclude_on_edges and some.for_class("astro").flow_threshold == 0.6
    assert tuned.shadowed("min_size", ["astro", "cort", "shsy5y"]) == ["astro", "cort"]
    assert every.shadowed("min_size", ["astro", "cort"]) == []
    with pytest.raises(TypeError, match="override: unknown value 'min_sise'"):
        tuned.override(min_sise=3)
    with pytest.raises(TypeError, match="niter: expected one value for all cell types"):
        tuned.override(niter={"astro": 3})
    with pytest.raises(ValueError, match="min_size: expected an int >= 0"):
        tuned.override(min_size={"astro": -1})
    with pytest.raises(TypeError, match="exclude_on_edges: expected a bool"):
        SegmentConfig(exclude_on_edges=1)


def test_configs_stored_before_exclude_on_edges_load():
    stored = SegmentConfig().to_dict()
    assert stored.pop("exclude_on_edges") is False
    assert SegmentConfig.from_dict(stored) == SegmentConfig()
