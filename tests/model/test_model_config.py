import pytest

from flowseg.config import AugmentConfig, ModelConfig, TrainConfig


def test_model_config_round_trip_and_size_multiple():
    config = ModelConfig(in_channels=2, n_classes=3, widths=(8, 16, 32), skip="concat")
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.size_multiple == 4


def test_train_config_round_trip_with_nested_augment():
    config = TrainConfig(epochs=3, augment=AugmentConfig(rotation=0.0, scale=(1.0, 1.0)))
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("kwargs, error, match", [
    ({"widths": (8,)}, TypeError, "widths"),
    ({"widths": (8, 0)}, ValueError, r"widths\[1\]"),
    ({"kernel_size": 4}, ValueError, "odd"),
    ({"skip": "mul"}, ValueError, "skip"),
    ({"n_classes": 0}, ValueError, "n_classes"),
    ({"style": 1}, TypeError, "style"),
])
def test_model_config_rejects(kwargs, error, match):
    with pytest.raises(error, match=match):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"epochs": 0}, ValueError, "epochs"),
    ({"lr": 0.0}, ValueError, "lr"),
    ({"lr": float("nan")}, ValueError, "lr"),
    ({"crop_size": 4}, ValueError, "crop_size"),
    ({"augment": {}}, TypeError, "augment"),
])
def test_train_config_rejects(kwargs, error, match):
    with pytest.raises(error, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"scale": (1.5, 1.0)}, "scale"), ({"rotation": 200.0}, "rotation"), ({"gamma": (0.0, 1.0)}, "gamma")])
def test_augment_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AugmentConfig(**kwargs)


def test_from_dict_refuses_unknown_keys():
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"epochs": 2, "bogus": 1})
