import numpy as np
import pytest
import torch
from torch import nn

from flowseg.api import PredictConfig, load_model, predict_maps, segment
from flowseg.config import ClassThresholds, ModelConfig, SegmentConfig
from flowseg.errors import InputError
from flowseg.model.checkpoint import ENSEMBLE_FORMAT_VERSION, FORMAT_VERSION, Model, save_model
from flowseg.model.ensemble import EnsembleNet, ensemble, members
from flowseg.model.export import export_torchscript
from flowseg.model.unet import UNet
from flowseg.size import SIZE_MODEL_KEY
from flowseg.synthetic import make_synthetic
from flowseg.training.finetune import init_config, init_weights

FP32 = PredictConfig(precision="fp32")

#: Loose thresholds, so that the untrained models give instances.
LOOSE = SegmentConfig(cellprob_threshold=-6.0, flow_threshold=0.0, min_size=5, min_flow=0.0,
                      niter=200)


def _model(seed=0, *, widths=(8, 16, 32), names=("round", "spindly"), in_channels=1):
    torch.manual_seed(seed)
    config = ModelConfig(in_channels=in_channels, n_classes=len(names), widths=widths)
    net = UNet(config)
    net.train()  # non-trivial BatchNorm statistics
    with torch.no_grad():
        net(torch.randn(2, in_channels, 32, 32) * 3 + 1)
    return Model(net.eval(), config, names, LOOSE, metadata={"seed": seed})


@pytest.fixture(scope="module")
def images():
    return [make_synthetic(kind, shape=shape, seed=i)[0] for i, (kind, shape) in
            enumerate([("round", (64, 64)), ("spindly", (70, 90)), ("round", (64, 64))])]


def _probs(maps):
    return torch.softmax(maps[3:], 0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("tile,tta", [(None, False), (32, False), (32, True)])
def test_an_ensemble_of_a_model_with_itself_is_that_model(images, tile, tta, precision):
    model = _model()
    predict = PredictConfig(tile=tile, tta=tta, precision=precision, batch_size=2)
    single = predict_maps(images, model, predict=predict)
    double = predict_maps(images, [model, model], predict=predict)
    for a, b in zip(single, double):
        assert torch.equal(a[:3], b[:3])  # flows, cell probability: exactly
        torch.testing.assert_close(_probs(a), _probs(b), atol=1e-6, rtol=0)
    single = segment(images, model, predict=predict)
    double = segment(images, ensemble([model, model]), predict=predict)
    assert sum(r.n_instances for r in single) > 0
    for a, b in zip(single, double):
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.cell_types == b.cell_types and a.image_cell_type == b.image_cell_type
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_maps_are_the_mean_of_the_members_maps_and_of_their_class_probabilities(images):
    a, b = _model(0), _model(1)
    predict = PredictConfig(tile=None, precision="fp32")
    maps_a = predict_maps(images, a, predict=predict)
    maps_b = predict_maps(images, b, predict=predict)
    for ma, mb, me in zip(maps_a, maps_b, predict_maps(images, [a, b], predict=predict)):
        torch.testing.assert_close(me[:3], (ma[:3] + mb[:3]) / 2)
        torch.testing.assert_close(_probs(me), (_probs(ma) + _probs(mb)) / 2)
        assert not torch.allclose(ma[:3], mb[:3])  # the members differ


def test_members_must_share_cell_types_channels_and_device():
    a = _model()
    with pytest.raises(ValueError, match=r"same cell types.*a\.pt has \['round', 'spindly'\], "
                                         r"b\.pt has \['spindly', 'round'\]"):
        ensemble([a, _model(names=("spindly", "round"))], names=["a.pt", "b.pt"])
    with pytest.raises(ValueError, match=r"same channels; models\[0\] takes 1, models\[1\] takes 2"):
        ensemble([a, _model(in_channels=2)])
    with pytest.raises(TypeError, match="non-empty list"):
        ensemble([])
    with pytest.raises(TypeError, match="non-empty list"):
        ensemble(a)
    with pytest.raises(TypeError, match=r"models\[1\]: expected a loaded flowseg Model"):
        ensemble([a, "b.pt"])


def test_save_load_round_trip_keeps_members_and_the_ensembles_thresholds(tmp_path, images):
    tuned = SegmentConfig(cellprob_threshold=-5.0, min_size=3,
                          per_class={"round": ClassThresholds(min_size=7)})
    model = ensemble([_model(0), _model(1, widths=(8, 16))], segment_config=tuned,
                     metadata={"tuning": {"after": 0.5}})
    assert model.model_config.widths == (8, 16, 32)  # the member with the most poolings
    path = save_model(tmp_path / "ens.pt", model)
    assert torch.load(path, weights_only=True)["format_version"] == ENSEMBLE_FORMAT_VERSION
    loaded = load_model(path, device="cpu")
    assert isinstance(loaded.net, EnsembleNet) and not loaded.net.training
    assert loaded.segment_config == tuned and loaded.metadata["tuning"] == {"after": 0.5}
    assert loaded.class_names == model.class_names and loaded.train_config is None
    assert [m.model_config.widths for m in members(loaded)] == [(8, 16, 32), (8, 16)]
    assert [m.metadata["seed"] for m in members(loaded)] == [0, 1]
    assert all(m.segment_config == LOOSE for m in members(loaded))
    for a, b in zip(predict_maps(images, model, predict=FP32),
                    predict_maps(images, loaded, predict=FP32)):
        assert torch.equal(a, b)
    # A single network is still written as version 1 (older flowseg reads it).
    single = save_model(tmp_path / "one.pt", _model())
    assert torch.load(single, weights_only=True)["format_version"] == FORMAT_VERSION


def test_a_list_of_files_loads_as_their_ensemble_and_ensembles_do_not_nest(tmp_path):
    paths = [save_model(tmp_path / f"m{i}.pt", _model(i)) for i in range(3)]
    pair = load_model(paths[:2], device="cpu")
    assert len(members(pair)) == 2 and pair.segment_config == LOOSE
    save_model(tmp_path / "pair.pt", pair)
    three = load_model([tmp_path / "pair.pt", paths[2]], device="cpu")
    assert [m.metadata["seed"] for m in members(three)] == [0, 1, 2]
    other = save_model(tmp_path / "other.pt", _model(names=("a", "b")))
    with pytest.raises(ValueError, match=r"m0\.pt has \['round', 'spindly'\], .*other\.pt has"):
        load_model([paths[0], other], device="cpu")


def test_damaged_ensemble_files_name_the_file_and_entry(tmp_path):
    path = save_model(tmp_path / "ens.pt", ensemble([_model(0), _model(1)]))
    payload = torch.load(path, weights_only=True)
    del payload["members"][1]["state_dict"]
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(InputError, match=r"bad\.pt: incomplete .*missing members\[1\]\.state_dict"):
        load_model(tmp_path / "bad.pt", device="cpu")
    payload["members"] = []
    torch.save(payload, tmp_path / "empty.pt")
    with pytest.raises(InputError, match=r"empty\.pt: damaged .*members: expected a non-empty list"):
        load_model(tmp_path / "empty.pt", device="cpu")


def test_an_ensemble_has_no_train_state_and_is_not_fine_tuned(tmp_path):
    model = ensemble([_model(0), _model(1)])
    with pytest.raises(ValueError, match="no train state"):
        save_model(tmp_path / "ens.pt", model, train_state={"epoch": 1})
    with pytest.raises(ValueError, match="ensemble of 2 networks; fine-tune from the file of one"):
        init_config(model, model.class_names, channels=1)
    with pytest.raises(ValueError, match="ensemble of 2 networks"):
        init_weights(UNet(model.model_config), model, model.class_names)


def test_an_ensemble_exports_as_one_network(tmp_path, images):
    model = ensemble([_model(0), _model(1)])
    result = export_torchscript(model, tmp_path / "ens.ts")  # verified against the torch maps
    assert result.max_difference is not None and result.max_difference < 1e-3
    exported = load_model(tmp_path / "ens.ts", device="cpu")
    for a, b in zip(segment(images, model, predict=PredictConfig(precision="fp32", tile=None)),
                    segment(images, exported, predict=PredictConfig(precision="fp32", tile=None))):
        np.testing.assert_array_equal(a.labels, b.labels)


def test_an_ensemble_estimates_cell_sizes_as_its_first_member():
    first, second = _model(0), _model(1)
    first.metadata[SIZE_MODEL_KEY] = {"diameter": 12.0}
    first.net.level_styles = lambda x, levels=1, spread=False: torch.full((len(x), 3), float(levels) + spread)
    model = ensemble([first, second])
    assert model.metadata[SIZE_MODEL_KEY] == {"diameter": 12.0}
    assert torch.equal(model.net.level_styles(torch.zeros(2, 1, 16, 16), 2, True), torch.full((2, 3), 3.0))
    # the ensemble's own (e.g. from its file) wins; a first member without styles gives none
    assert ensemble([first, second], metadata={SIZE_MODEL_KEY: {"diameter": 9.0}}
                    ).metadata[SIZE_MODEL_KEY] == {"diameter": 9.0}
    plain = Model(_NoStyles(first.net), first.model_config, first.class_names,
                  metadata=dict(first.metadata))
    assert SIZE_MODEL_KEY not in ensemble([plain, second]).metadata


class _NoStyles(nn.Module):
    """A network without ``level_styles`` (as an exported one)."""

    def __init__(self, net):
        super().__init__()
        self.inner = net

    def forward(self, x, **kw):
        return self.inner(x, **kw)
