import pytest
import torch

from flowseg.device import autocast, cpu_has_bf16, resolve_device, resolve_precision


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")


def test_bad_names():
    with pytest.raises(ValueError, match="device"):
        resolve_device("gpu0")
    with pytest.raises(TypeError, match="device"):
        resolve_device(3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_precision_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("fp32", cuda) == torch.float32
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    assert resolve_precision("auto", cuda) == torch.bfloat16
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    with pytest.raises(ValueError, match="precision.*'fp16'"):
        resolve_precision("fp16", cpu)


def test_autocast_runs_a_layer_in_the_asked_dtype():
    layer = torch.nn.Linear(4, 3)
    x = torch.ones(2, 4)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), torch.float32):
        assert layer(x).dtype == torch.float32
    with autocast(torch.device("cpu")):  # inference default on CPU: float32
        assert layer(x).dtype == torch.float32
