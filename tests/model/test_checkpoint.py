import pytest
import torch

from flowseg.config import ClassThresholds, ModelConfig, SegmentConfig, TrainConfig
from flowseg.errors import InputError
from flowseg.model.checkpoint import Model, load_model, load_train_state, save_model
from flowseg.model.unet import UNet


def _model(n_classes=2, **kw):
    torch.manual_seed(0)
    config = ModelConfig(n_classes=n_classes, widths=(8, 16))
    net = UNet(config)
    # Non-trivial BatchNorm statistics, so that reloading them is tested too.
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 1, 16, 16) * 3 + 1)
    return Model(net.eval(), config, tuple("ab"[:n_classes]), **kw)


def test_reload_gives_identical_outputs_and_configs(tmp_path):
    segment = SegmentConfig(cellprob_threshold=-0.5, per_class={"a": ClassThresholds(min_size=3)})
    model = _model(segment_config=segment, train_config=TrainConfig(epochs=3),
                   metadata={"val_score": 0.5})
    path = save_model(tmp_path / "m.pt", model)
    loaded = load_model(path)
    x = torch.randn(1, 1, 21, 30)
    with torch.no_grad():
        a, b = model.net(x), loaded.net(x)
    assert torch.equal(a.flows, b.flows) and torch.equal(a.cellprob, b.cellprob)
    assert torch.equal(a.class_logits, b.class_logits)
    assert loaded.class_names == ("a", "b")
    assert loaded.segment_config == segment
    assert loaded.train_config == TrainConfig(epochs=3)
    assert loaded.metadata["val_score"] == 0.5 and "flowseg_version" in loaded.metadata
    assert not loaded.net.training


def test_the_tta_choice_is_stored_and_files_without_it_read_false(tmp_path):
    path = save_model(tmp_path / "m.pt", _model(tta=True))
    assert load_model(path).tta is True
    payload = torch.load(path, weights_only=True)
    del payload["tta"]                      # a file written before the choice was stored
    torch.save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").tta is False
    with pytest.raises(TypeError, match="tta: expected a bool, got 1"):
        _model(tta=1)


def test_train_state_round_trip(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.net.parameters())
    state = {"optimizer": opt.state_dict(), "epoch": 4, "rng": {"torch": torch.get_rng_state()},
             "history": [{"epoch": 1, "loss": 0.5}]}
    save_model(tmp_path / "m.pt", model, train_state=state)
    loaded = load_train_state(tmp_path / "m.pt")
    assert loaded["epoch"] == 4 and loaded["history"] == state["history"]
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert load_train_state(save_model(tmp_path / "n.pt", model)) == {}


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model(tmp_path / "nope.pt")


def test_wrong_format_version_names_file(tmp_path):
    save_model(tmp_path / "m.pt", _model())
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(InputError, match=r"future\.pt.*version 99"):
        load_model(tmp_path / "future.pt")


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_other_files_are_refused(tmp_path, content):
    path = tmp_path / "other.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match="other.pt.*not a flowseg model"):
        load_model(path)


def test_class_names_must_match_n_classes():
    with pytest.raises(ValueError, match="class_names"):
        Model(UNet(ModelConfig(n_classes=2, widths=(8, 16))), ModelConfig(n_classes=2, widths=(8, 16)),
              ("a",))


def test_default_model_checkpoint_is_at_most_25_mb(tmp_path):
    config = ModelConfig(n_classes=3)
    path = save_model(tmp_path / "default.pt", Model(UNet(config), config, ("a", "b", "c")))
    assert path.stat().st_size <= 25e6


@pytest.mark.parametrize("key", ["state_dict", "model_config", "class_names", "metadata"])
def test_missing_keys_name_the_file_and_the_keys(tmp_path, key):
    save_model(tmp_path / "m.pt", _model())
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    del payload[key]
    torch.save(payload, tmp_path / "cut.pt")
    with pytest.raises(InputError, match=rf"cut\.pt: incomplete flowseg model file: missing {key}"):
        load_model(tmp_path / "cut.pt")


@pytest.mark.parametrize("key, value", [("model_config", "widths=8"), ("class_names", 3),
                                        ("segment_config", {"min_size": 2.5}),
                                        ("metadata", [1, 2, 3]), ("state_dict", None),
                                        ("tta", "yes")])
def test_values_of_the_wrong_kind_name_the_file(tmp_path, key, value):
    save_model(tmp_path / "m.pt", _model())
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload[key] = value
    torch.save(payload, tmp_path / "odd.pt")
    with pytest.raises(InputError, match=r"odd\.pt: damaged flowseg model file: \w+"):
        load_model(tmp_path / "odd.pt")
