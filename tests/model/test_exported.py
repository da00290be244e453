"""Loading exports: what is recognised as one, the wrappers' surface, and clear errors that
name the file."""

import io
import json
import sys

import pytest
import torch

from flowseg.errors import InputError
from flowseg.model.checkpoint import load_model, save_model
from flowseg.model.export import export_metadata, export_onnx, export_torchscript
from flowseg.model.exported import (exported_kind, load_exported, model_from_metadata,
                                    require_onnxruntime, sidecar_path, torch_notices_silenced)
from tests.export_fixtures import tiny_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports")
    model = tiny_model()
    export_onnx(model, folder / "m.onnx", verify=False)
    export_torchscript(model, folder / "m.ts", verify=False)
    save_model(folder / "m.pt", model)
    return folder


def test_kind_is_told_by_suffix_or_by_the_flowseg_extra_file(exports, tmp_path):
    export_torchscript(tiny_model(), tmp_path / "model.pt", verify=False)
    assert exported_kind(exports / "m.onnx") == "onnx"
    assert exported_kind(exports / "m.ts") == "torchscript"
    assert exported_kind(tmp_path / "model.pt") == "torchscript"
    assert exported_kind(exports / "m.pt") is None
    assert exported_kind(tmp_path / "missing.onnx") == "onnx"
    assert exported_kind(tmp_path / "missing.pt") is None
    assert sidecar_path(exports / "m.onnx") == exports / "m.onnx.json"


@pytest.mark.parametrize("name", ["m.onnx", "m.ts"])
def test_wrapped_net_has_the_surface_segment_uses(exports, name):
    model = load_model(exports / name)
    net = model.net
    assert next(net.parameters()).device == torch.device("cpu") == model.device
    net.to(memory_format=torch.channels_last).eval()
    x = torch.rand(2, 1, 21, 30).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = net(x, class_grad=0.0)
    assert out.flows.shape == (2, 2, 21, 30) and out.cellprob.shape == (2, 21, 30)
    assert out.class_logits.shape == (2, 2, 21, 30) and out.flows.dtype == torch.float32
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 1, H, W\), got \(2, 3, 8, 8\)"):
        net(torch.rand(2, 3, 8, 8))


@pytest.mark.parametrize("name", ["gone.onnx", "gone.ts"])
def test_missing_file_names_it(tmp_path, name):
    with pytest.raises(FileNotFoundError, match=f"{name}: no such model file"):
        load_model(tmp_path / name)


def test_a_file_that_is_not_onnx_is_named(tmp_path):
    (tmp_path / "notes.onnx").write_text("not a model")
    with pytest.raises(InputError, match=r"notes\.onnx: not an ONNX model file"):
        load_model(tmp_path / "notes.onnx")


def test_a_checkpoint_named_ts_is_not_torchscript(exports, tmp_path):
    (tmp_path / "ckpt.ts").write_bytes((exports / "m.pt").read_bytes())
    with pytest.raises(InputError, match=r"ckpt\.ts: not a TorchScript file"):
        load_model(tmp_path / "ckpt.ts")


def test_a_file_that_is_not_an_export_is_refused_by_load_exported(exports):
    with pytest.raises(InputError, match=r"m\.pt: not an exported flowseg model"):
        load_exported(exports / "m.pt")


def test_onnx_without_flowseg_metadata_says_so(tmp_path):
    net = torch.nn.Conv2d(1, 2, 3).eval()
    with torch_notices_silenced():
        torch.onnx.export(net, (torch.rand(1, 1, 8, 8),), str(tmp_path / "other.onnx"),
                          dynamo=False, input_names=["x"], output_names=["y"])
    with pytest.raises(InputError, match=r"other\.onnx: not a flowseg network: expected the "
                                         r"input 'images'"):
        load_model(tmp_path / "other.onnx")


def test_onnx_with_flowseg_names_but_no_metadata_says_so(exports, tmp_path):
    import onnx

    proto = onnx.load(str(exports / "m.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(InputError, match=r"bare\.onnx: no flowseg metadata.*flowseg-export"):
        load_model(tmp_path / "bare.onnx")


def test_torchscript_without_flowseg_metadata_says_so(tmp_path):
    with torch_notices_silenced():
        traced = torch.jit.trace(torch.nn.Conv2d(1, 2, 3).eval(), torch.rand(1, 1, 8, 8))
        torch.jit.save(traced, str(tmp_path / "other.ts"))
    with pytest.raises(InputError, match=r"other\.ts: no flowseg metadata"):
        load_model(tmp_path / "other.ts")


@pytest.mark.parametrize(("change", "message"), [
    ({"format": "something-else"}, "not a flowseg export"),
    ({"format_version": 99}, "export format version 99 is not supported"),
    ({"class_names": ["just-one"]}, "damaged flowseg export metadata.*class_names"),
    ({"segment_config": {"typo": 1}}, "damaged flowseg export metadata.*unknown keys"),
    ({"model_config": None}, "damaged flowseg export metadata"),
])
def test_damaged_metadata_is_named(change, message):
    document = {**export_metadata(tiny_model(), export_format="onnx", opset=17), **change}
    document = json.loads(json.dumps(document))
    with pytest.raises(InputError, match=f"m.onnx: {message}"):
        model_from_metadata(document, lambda config: torch.nn.Identity(), "m.onnx")


def test_invalid_json_is_named(exports, tmp_path):
    import onnx

    proto = onnx.load(str(exports / "m.onnx"))
    proto.metadata_props[0].value = "{not json"
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(InputError, match=r"bad\.onnx: damaged flowseg metadata"):
        load_model(tmp_path / "bad.onnx")


def test_missing_onnxruntime_says_how_to_install_it(monkeypatch, exports):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'flowseg\[export\]'"):
        require_onnxruntime()
    with pytest.raises(ModuleNotFoundError, match="needs onnxruntime"):
        load_model(exports / "m.onnx")


def test_loaded_torchscript_runs_from_bytes_too(exports):
    """The archive is an ordinary TorchScript file: torch.jit.load (Triton) reads it alone."""
    with torch_notices_silenced():
        module = torch.jit.load(io.BytesIO((exports / "m.ts").read_bytes()))
    flows, cellprob, class_logits = module(torch.rand(1, 1, 19, 27))
    assert flows.shape == (1, 2, 19, 27) and class_logits.shape == (1, 2, 19, 27)


@pytest.mark.parametrize("name", ["m.onnx", "m.ts"])
def test_an_exported_model_is_not_saved_as_a_checkpoint(exports, tmp_path, name):
    with pytest.raises(TypeError, match="only a model with a flowseg UNet"):
        save_model(tmp_path / "x.pt", load_model(exports / name))
    assert not (tmp_path / "x.pt").exists()
