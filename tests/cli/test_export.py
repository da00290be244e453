"""``flowseg-export``: writes loadable exports with their metadata; user errors exit 2."""

import json
import sys

import pytest
import torch

from flowseg.cli._common import run_main
from flowseg.cli.export import main
from flowseg.model.checkpoint import load_model, save_model
from flowseg.model.export import max_difference
from tests.export_fixtures import tiny_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture()
def checkpoint(tmp_path):
    return save_model(tmp_path / "tiny.pt", tiny_model())


def test_writes_onnx_and_torchscript_that_load_and_match(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--model", str(checkpoint), "--onnx", str(out / "m.onnx"),
                 "--torchscript", str(out / "m.ts"), "--opset", "15"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["m.onnx", "m.onnx.json", "m.ts", "m.ts.json"]
    assert json.loads((out / "m.onnx.json").read_text())["export"]["opset"] == 15
    assert "max |exported - torch|" in capsys.readouterr().err
    torch_model = load_model(checkpoint)
    for name in ("m.onnx", "m.ts"):
        exported = load_model(out / name)
        assert exported.class_names == torch_model.class_names
        assert max_difference(torch_model.net, exported.net, [torch.rand(2, 1, 37, 53)]) <= 1e-3


def test_exports_the_shipped_model_by_default(tmp_path):
    assert main(["--onnx", str(tmp_path / "default.onnx"), "--quiet"]) == 0
    assert set(load_model(tmp_path / "default.onnx").class_names) == {"astro", "cort", "shsy5y"}


@pytest.mark.parametrize("args", [[], ["--onnx", "same", "--torchscript", "same"]])
def test_nothing_or_one_file_twice_is_a_usage_error(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "--onnx" in capsys.readouterr().err


def test_user_errors_exit_2_and_name_the_file(checkpoint, tmp_path, capsys):
    assert run_main("flowseg-export", main, ["--model", str(tmp_path / "nope.pt"),
                                             "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "nope.pt: no such model file" in capsys.readouterr().err
    (tmp_path / "m.onnx").write_text("keep me")
    assert run_main("flowseg-export", main, ["--model", str(checkpoint),
                                             "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "m.onnx: exists" in capsys.readouterr().err
    assert (tmp_path / "m.onnx").read_text() == "keep me"
    assert run_main("flowseg-export", main, ["--model", str(checkpoint), "--opset", "9",
                                             "--onnx", str(tmp_path / "n.onnx")]) == 2
    assert "opset: expected an int from 11 to 20" in capsys.readouterr().err


def test_overwrite_replaces_and_no_verify_skips_the_check(checkpoint, tmp_path, capsys):
    (tmp_path / "m.ts").write_text("old")
    assert main(["--model", str(checkpoint), "--torchscript", str(tmp_path / "m.ts"),
                 "--overwrite", "--no-verify"]) == 0
    assert "not checked" in capsys.readouterr().err
    assert load_model(tmp_path / "m.ts").class_names == ("round", "spindly")


def test_flowseg_segment_runs_an_export_to_the_same_masks(tmp_path):
    from flowseg.cli.segment import main as segment_main
    from flowseg.io.images import read_image
    from tests.batch_fixtures import write_images, write_tiny_model

    images = write_images(tmp_path / "images", n=2, corrupt=False)
    checkpoint = write_tiny_model(tmp_path / "tiny.pt")
    assert main(["--model", str(checkpoint), "--onnx", str(tmp_path / "tiny.onnx")]) == 0
    for name in ("tiny.pt", "tiny.onnx"):
        assert segment_main([str(tmp_path / "images"), "--model", str(tmp_path / name),
                             "--out", str(tmp_path / name.replace(".", "_")),
                             "--precision", "fp32", "--quiet"]) == 0
    for image in images:
        masks = [read_image(tmp_path / d / f"{image.stem}_masks.tif") for d in ("tiny_pt", "tiny_onnx")]
        assert masks[0].max() > 0 and (masks[0] == masks[1]).all()


def test_missing_onnx_is_one_line_with_the_install_command(checkpoint, tmp_path, capsys,
                                                           monkeypatch):
    from flowseg.cli.export import run

    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setattr(sys, "argv", ["flowseg-export", "--model", str(checkpoint),
                                      "--onnx", str(tmp_path / "m.onnx")])
    assert run() == 2
    err = capsys.readouterr().err
    assert err.startswith("flowseg-export: error: exporting to ONNX needs onnx")
    assert "pip install 'flowseg[export]'" in err and not (tmp_path / "m.onnx").exists()
