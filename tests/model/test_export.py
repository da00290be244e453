"""Exports (ONNX through onnxruntime, TorchScript) give torch's maps and masks, and carry the
model's configs and thresholds."""

import json

import numpy as np
import pytest
import torch

import flowseg
from flowseg.io.images import read_image
from flowseg.model.checkpoint import load_model, save_model
from flowseg.model.export import (DEFAULT_OPSET, check_opset, export_metadata, export_onnx,
                                  export_torchscript, max_difference, probe_inputs)
from flowseg.model.exported import OnnxNet, TorchScriptNet
from flowseg.model.pretrained import sample_paths
from flowseg.model.unet import NetOutput
from flowseg.synthetic import make_synthetic
from tests.export_fixtures import SEGMENT_CONFIG, tiny_model

FP32 = flowseg.PredictConfig(precision="fp32")

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript}
SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts"}
NETS = {"onnx": OnnxNet, "torchscript": TorchScriptNet}
TOLERANCE = 1e-3


def _export(model, folder, kind, name="model"):
    path = folder / f"{name}{SUFFIXES[kind]}"
    EXPORTERS[kind](model, path)
    return load_model(path)


@pytest.fixture(scope="module")
def default_model():
    return flowseg.load_model(device="cpu")


@pytest.fixture(scope="module")
def default_export_folder(default_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("default_exports")
    for kind, export in EXPORTERS.items():
        export(default_model, folder / f"model{SUFFIXES[kind]}")
    return folder


@pytest.fixture(scope="module")
def default_exports(default_export_folder):
    return {kind: load_model(default_export_folder / f"model{SUFFIXES[kind]}") for kind in EXPORTERS}


@pytest.mark.parametrize("kind", EXPORTERS)
@pytest.mark.parametrize("variant", [{}, {"in_channels": 2, "skip": "concat", "style": False}])
def test_tiny_model_maps_equal_torch_at_any_size(kind, variant, tmp_path):
    model = tiny_model(**variant)
    exported = _export(model, tmp_path, kind)
    assert isinstance(exported.net, NETS[kind])
    c = model.model_config.in_channels
    inputs = [torch.rand(2, c, 37, 53), torch.rand(1, c, 40, 56), torch.rand(3, c, 9, 17)]
    assert max_difference(model.net, exported.net, inputs) <= TOLERANCE


@pytest.mark.parametrize("kind", EXPORTERS)
def test_default_model_maps_equal_torch_at_full_size(kind, default_model, default_exports):
    x = torch.rand(1, 1, 520, 704, generator=torch.Generator().manual_seed(1))
    assert max_difference(default_model.net, default_exports[kind].net, [x]) <= TOLERANCE


def _masks_equal(images, model, exported):
    # An exported network has no encoder styles, so it cannot estimate cell sizes (it runs at
    # scale 1 with a warning): compare at one given scale.
    expected = flowseg.segment(images, model, predict=FP32, return_maps=True, scale=1.0)
    got = flowseg.segment(images, exported, predict=FP32, return_maps=True, scale=1.0)
    for a, b in zip(expected, got):
        assert a.n_instances > 0
        np.testing.assert_array_equal(b.labels, a.labels)
        assert b.cell_types == a.cell_types and b.image_cell_type == a.image_cell_type
        assert np.abs(b.cellprob - a.cellprob).max() <= TOLERANCE


@pytest.mark.parametrize("kind", EXPORTERS)
def test_segment_with_an_export_gives_identical_masks_on_a_synthetic_image(
        kind, default_model, default_exports):
    image, _ = make_synthetic("round", shape=(160, 200), seed=3)
    _masks_equal([image], default_model, default_exports[kind])


@pytest.mark.parametrize("kind", EXPORTERS)
def test_segment_with_an_export_gives_identical_masks_on_a_real_sample(
        kind, default_model, default_exports):
    image = read_image(next(p for p in sample_paths() if p.name.startswith("sartorius_7ae")))
    _masks_equal([image], default_model, default_exports[kind])


@pytest.mark.parametrize("kind", EXPORTERS)
def test_configs_thresholds_and_class_names_round_trip(kind, tmp_path):
    model = tiny_model()
    model.tta = True
    exported = _export(model, tmp_path, kind)
    assert exported.tta is True
    assert exported.class_names == ("round", "spindly")
    assert exported.segment_config == SEGMENT_CONFIG
    assert exported.model_config == model.model_config
    assert exported.train_config == model.train_config
    assert exported.metadata["val_score"] == 0.5
    assert exported.metadata["export"]["format"] == kind
    assert not exported.net.training and exported.device == torch.device("cpu")


@pytest.mark.parametrize("kind", EXPORTERS)
def test_the_json_beside_the_export_is_the_embedded_document(kind, tmp_path):
    model = tiny_model()
    path = tmp_path / f"m{SUFFIXES[kind]}"
    result = EXPORTERS[kind](model, path)
    assert result.path == path and result.metadata_path == tmp_path / f"m{SUFFIXES[kind]}.json"
    assert result.max_difference <= TOLERANCE
    document = json.loads(result.metadata_path.read_text())
    opset = DEFAULT_OPSET if kind == "onnx" else None
    assert document == json.loads(json.dumps(export_metadata(model, export_format=kind, opset=opset)))
    assert document["input"]["normalization"]["upper_percentile"] == 99.0
    assert document["outputs"]["class_logits"]["shape"] == ["batch", 2, "height", "width"]
    assert document["segment_config"]["per_class"]["round"]["min_size"] == 7


def test_onnx_metadata_props_hold_the_document(tmp_path):
    import onnx

    model = tiny_model()
    result = export_onnx(model, tmp_path / "m.onnx", opset=13)
    proto = onnx.load(str(result.path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["flowseg"]) == json.loads(result.metadata_path.read_text())
    assert proto.opset_import[0].version == 13
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["flows", "cellprob", "class_logits"]


def test_torchscript_named_model_pt_loads_as_torchscript(tmp_path):
    """Triton's PyTorch backend wants ``model.pt``: told apart from a checkpoint by content."""
    model = tiny_model()
    export_torchscript(model, tmp_path / "model.pt")
    save_model(tmp_path / "checkpoint.pt", model)
    assert isinstance(load_model(tmp_path / "model.pt").net, TorchScriptNet)
    assert not isinstance(load_model(tmp_path / "checkpoint.pt").net, TorchScriptNet)


@pytest.mark.parametrize("kind", EXPORTERS)
def test_export_leaves_the_callers_network_alone(kind, tmp_path):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    model.net.train()
    EXPORTERS[kind](model, tmp_path / f"m{SUFFIXES[kind]}")
    assert model.net.training
    assert all(torch.equal(before[k], v) for k, v in model.net.state_dict().items())


@pytest.mark.parametrize("kind", EXPORTERS)
def test_a_failed_check_writes_nothing(kind, tmp_path):
    with pytest.raises(RuntimeError, match="differs from the torch network.*nothing was written"):
        EXPORTERS[kind](tiny_model(), tmp_path / f"m{SUFFIXES[kind]}", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", EXPORTERS)
def test_existing_outputs_are_replaced_only_when_asked(kind, tmp_path):
    path = tmp_path / f"m{SUFFIXES[kind]}"
    path.with_name(path.name + ".json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"m\.\w+\.json: exists"):
        EXPORTERS[kind](tiny_model(), path)
    assert not path.exists()
    EXPORTERS[kind](tiny_model(), path, overwrite=True, verify=False)
    assert load_model(path).class_names == ("round", "spindly")


@pytest.mark.parametrize("kind", EXPORTERS)
def test_an_export_cannot_be_exported_again(kind, tmp_path):
    exported = _export(tiny_model(), tmp_path, kind)
    with pytest.raises(TypeError, match="expected a UNet.*export the checkpoint"):
        EXPORTERS[kind](exported, tmp_path / f"again{SUFFIXES[kind]}")


@pytest.mark.parametrize(("opset", "exc"), [(10, ValueError), (21, ValueError), ("17", TypeError),
                                            (True, TypeError)])
def test_opset_is_checked(opset, exc):
    with pytest.raises(exc, match="opset: expected an int from 11 to 20"):
        check_opset(opset)


def test_probe_inputs_trace_the_padding_branch_and_check_other_sizes():
    inputs = probe_inputs(2, 8)
    assert inputs[0].shape[-2] % 8 and inputs[0].shape[-1] % 8  # the example pads
    assert any(x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0 for x in inputs[1:])
    assert all(x.shape[1] == 2 and x.dtype == torch.float32 for x in inputs)
    assert all(torch.equal(a, b) for a, b in zip(inputs, probe_inputs(2, 8)))


def test_max_difference_sees_any_map_and_shape():
    net = tiny_model().net

    def shifted(x):
        out = net(x)
        return NetOutput(out.flows, out.cellprob, out.class_logits + 0.25)

    def cropped(x):
        out = net(x)
        return NetOutput(out.flows[..., 1:], out.cellprob, out.class_logits)

    x = [torch.rand(1, 1, 16, 24)]
    assert max_difference(net, net, x) == 0.0
    assert max_difference(net, shifted, x) == pytest.approx(0.25)
    assert max_difference(net, cropped, x) == float("inf")


def test_the_documented_serving_recipe_gives_segments_masks(default_export_folder,
                                                            default_exports):
    """onnxruntime alone + the JSON beside the file (README "Export") = ``segment`` untiled."""
    import onnxruntime as ort

    from flowseg.config import SegmentConfig
    from flowseg.data.normalize import normalize_image

    path = default_export_folder / "model.onnx"
    meta = json.loads((default_export_folder / "model.onnx.json").read_text())
    image, _ = make_synthetic("irregular", shape=(120, 136), seed=5)
    flows, cellprob, class_logits = ort.InferenceSession(str(path)).run(
        None, {meta["input"]["name"]: normalize_image(image)[None]})
    maps = torch.from_numpy(np.concatenate([flows[0] / meta["flow_scale"], cellprob,
                                            class_logits[0]]))
    (served,) = flowseg.segment_maps([maps], meta["class_names"],
                                     config=SegmentConfig.from_dict(meta["segment_config"]))
    whole = flowseg.PredictConfig(tile=0, tta=False)   # the recipe runs the network once
    (expected,) = flowseg.segment([image], default_exports["onnx"], predict=whole)
    assert expected.n_instances > 0
    np.testing.assert_array_equal(served.labels, expected.labels)


def test_an_onnx_file_name_must_end_in_onnx(tmp_path):
    with pytest.raises(ValueError, match=r"ending in \.onnx .*model\.bin"):
        export_onnx(tiny_model(), tmp_path / "model.bin")
    assert list(tmp_path.iterdir()) == []
