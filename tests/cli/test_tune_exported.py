"""`flowseg-evaluate tune` refuses an exported model before tuning (it could not save the result)."""

import pytest
import torch

from flowseg.cli import tune
from flowseg.cli.evaluate import run
from flowseg.model.exported import TORCHSCRIPT_EXTRA, torch_notices_silenced


def _torchscript(path):
    """A TorchScript archive holding flowseg's extra file (what ``flowseg-export`` writes)."""
    with torch_notices_silenced():
        torch.jit.save(torch.jit.script(torch.nn.Identity()), str(path),
                       _extra_files={TORCHSCRIPT_EXTRA: "{}"})
    return path


@pytest.mark.parametrize("name, kind", [("m.onnx", "onnx"), ("m.ts", "torchscript"),
                                        ("m.bin", "torchscript")])   # .bin: told by its contents
def test_an_exported_model_is_refused_up_front(tmp_path, capsys, monkeypatch, name, kind):
    model = tmp_path / name
    if name == "m.onnx":
        model.write_bytes(b"not read")
    else:
        _torchscript(model)

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded: the check came too late")

    monkeypatch.setattr(tune, "load_model", no_loading)
    out = tmp_path / "tuned.pt"
    status = run(["tune", "--model", str(model), "--data", str(tmp_path / "val"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"--model {model}: is an exported {kind} model" in err
    assert "needs a flowseg checkpoint (.pt)" in err
