"""Export a flowseg network to ONNX or TorchScript, with its configs and thresholds alongside.

What a serving system needs besides the weights (model config, class names, tuned
post-processing thresholds, the input normalisation, what each output means) is one JSON
document (:func:`export_metadata`), embedded in the file (ONNX ``metadata_props["flowseg"]``,
TorchScript extra file ``flowseg.json``) and written beside it as ``<file>.json``. The network
takes ``images`` (batch, C, height, width) float32 of any batch size, height and width (the
graph pads to a multiple of ``size_multiple`` by edge replication and crops the outputs back)
and returns ``flows``, ``cellprob`` and ``class_logits``
(:data:`~flowseg.model.exported.OUTPUT_NAMES`). :func:`flowseg.load_model` reads both formats
back (:mod:`flowseg.model.exported`). An ensemble (:mod:`flowseg.model.ensemble`) is exported
as one network that averages its members' maps.

Both formats are traced (``torch.onnx.export(dynamo=False)``, ``torch.jit.trace``): the
TorchScript-based exporter needs only the ``onnx`` package, exports in a fraction of a second,
and records the padding arithmetic on the input's size, where the ``torch.export``-based one
needs onnxscript and several seconds. Tracing keeps the graph of the example's branch, so the
example's height and width are deliberately not multiples of ``size_multiple`` (the padding
branch, which pads by zero on a multiple); every export is then checked against the torch
network on inputs of other sizes, multiples included, and nothing is written when it differs by
more than ``tolerance``. torch's deprecation notices of these tracers and their tracer warnings
are silenced (:func:`~flowseg.model.exported.torch_notices_silenced`): the check is what stands
behind the trace. torch 2.13 marks both tracers deprecated; when they go, the
``torch.export``-based ONNX exporter (``dynamo=True``, ``Dim.AUTO`` for batch, height and width)
is the way: it exported the same dynamic-size graph in a trial with torch 2.13 and onnxscript.
Like :mod:`flowseg.model.checkpoint`, this module writes model files (atomically).
"""

from __future__ import annotations

import copy
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowseg.config import ModelConfig
from flowseg.data.normalize import LOWER_PERCENTILE, UPPER_PERCENTILE
from flowseg.io.atomic import atomic_path
from flowseg.model.checkpoint import Model
from flowseg.model.ensemble import members
from flowseg.model.exported import (EXPORT_FORMAT, EXPORT_FORMAT_VERSION, INPUT_NAME, METADATA_KEY,
                                    ONNX_SUFFIXES, OUTPUT_NAMES, TORCHSCRIPT_EXTRA, OnnxNet,
                                    TorchScriptNet, onnx_session, require_export_module,
                                    sidecar_path, torch_notices_silenced)
from flowseg.model.unet import FLOW_SCALE, UNet

__all__ = ["DEFAULT_OPSET", "DEFAULT_TOLERANCE", "OPSETS", "ExportResult", "check_opset",
           "export_metadata", "export_onnx", "export_torchscript", "max_difference",
           "probe_inputs"]

#: ONNX opset written by default (``--opset`` changes it for older or newer runtimes).
DEFAULT_OPSET = 17
#: Opsets the TorchScript-based exporter writes that have a Pad with computed pads (>= 11).
OPSETS = range(11, 21)
#: Largest |exported - torch| accepted on the probe inputs (any map, any pixel).
DEFAULT_TOLERANCE = 1e-3

_DYNAMIC_AXES = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                 "flows": {0: "batch", 2: "height", 3: "width"},
                 "cellprob": {0: "batch", 1: "height", 2: "width"},
                 "class_logits": {0: "batch", 2: "height", 3: "width"}}


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote.

    Attributes
    ----------
    path : Path
        The exported network.
    metadata_path : Path
        The JSON document beside it (``<path>.json``).
    max_difference : float or None
        Largest |exported - torch| over the probe inputs' maps (None: not checked).
    """

    path: Path
    metadata_path: Path
    max_difference: float | None


def check_opset(opset: object) -> int:
    """``opset`` if it is an int in :data:`OPSETS`, else a TypeError / ValueError naming it."""
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset: expected an int from {OPSETS.start} to {OPSETS.stop - 1}, "
                        f"got {type(opset).__name__} {opset!r}")
    if opset not in OPSETS:
        raise ValueError(f"opset: expected an int from {OPSETS.start} to {OPSETS.stop - 1} (the "
                         f"ONNX opsets this exporter writes with computed padding), got {opset}")
    return opset


def export_metadata(model: Model, *, export_format: str, opset: int | None = None) -> dict[str, Any]:
    """The JSON document stored with an exported network (plain python values).

    Parameters
    ----------
    model : Model
    export_format : {"onnx", "torchscript"}
    opset : int, optional
        The ONNX opset (ONNX only).

    Returns
    -------
    dict
        ``format``, ``format_version``, ``model_config``, ``class_names``, ``segment_config``
        (tuned thresholds per class), ``train_config``, ``metadata`` (the checkpoint's), ``tta``
        (whether the model runs with flip test-time augmentation by default), and for
        servers ``input`` (name, shape, dtype, normalisation), ``outputs`` (shape and meaning
        of each), ``flow_scale`` and ``export`` (format, opset, flowseg and torch versions).
    """
    from flowseg import __version__

    config = model.model_config
    return {
        "format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION,
        "model_config": config.to_dict(), "class_names": list(model.class_names),
        "segment_config": model.segment_config.to_dict(),
        "train_config": None if model.train_config is None else model.train_config.to_dict(),
        "metadata": {"flowseg_version": __version__, **model.metadata},
        "tta": model.tta,
        "flow_scale": FLOW_SCALE,
        "input": {
            "name": INPUT_NAME, "dtype": "float32", "shape": ["batch", config.in_channels,
                                                            "height", "width"],
            "size": (f"any height and width: the network pads to a multiple of "
                     f"{config.size_multiple} by edge replication and crops its outputs back"),
            "normalization": {
                "function": "flowseg.data.normalize.normalize_image", "per_channel": True,
                "lower_percentile": LOWER_PERCENTILE, "upper_percentile": UPPER_PERCENTILE,
                "formula": ("(x - p_lower) / (p_upper - p_lower) per channel, in float32; "
                            "min and max when the percentiles are equal; 0 for a constant "
                            "channel")}},
        "outputs": {
            "flows": {"shape": ["batch", 2, "height", "width"],
                      "meaning": f"flows (dy, dx) times flow_scale ({FLOW_SCALE})"},
            "cellprob": {"shape": ["batch", "height", "width"],
                         "meaning": "cell-probability logits"},
            "class_logits": {"shape": ["batch", config.n_classes, "height", "width"],
                             "meaning": "cell-type logits; channel k is class_names[k]"}},
        "export": {"format": export_format, "opset": opset, "flowseg_version": __version__,
                   "torch_version": torch.__version__},
    }


def probe_inputs(in_channels: int, size_multiple: int) -> list[torch.Tensor]:
    """Deterministic inputs in [0, 1): the tracing example first (height and width not
    multiples of ``size_multiple``), then two more sizes for the check (one a multiple).

    Returns
    -------
    list of (B, in_channels, H, W) tensors of float32
    """
    m = size_multiple
    generator = torch.Generator().manual_seed(0)
    shapes = [(2, 3 * m + 1, 5 * m + 3), (1, 4 * m, 2 * m), (3, 2 * m + 5, 3 * m + 1)]
    return [torch.rand(b, in_channels, h, w, generator=generator) for b, h, w in shapes]


def max_difference(reference: Callable, exported: Callable, inputs: list[torch.Tensor]) -> float:
    """Largest |exported - reference| over all maps of all ``inputs``.

    Parameters
    ----------
    reference, exported : callable
        ``net(x) -> NetOutput``.
    inputs : list of (B, C, H, W) tensors of float32

    Returns
    -------
    float
        ``inf`` when a shape differs.
    """
    worst = 0.0
    with torch.inference_mode():
        for x in inputs:
            a, b = reference(x), exported(x)
            for name in OUTPUT_NAMES:
                u, v = getattr(a, name).float().cpu(), getattr(b, name).float().cpu()
                if u.shape != v.shape:
                    return float("inf")
                worst = max(worst, float((u - v).abs().max()))
    return worst


class _TupleOutputs(nn.Module):
    """``net(x)`` as the tuple (flows, cellprob, class_logits): what exporters and servers take."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(x)
        return out.flows, out.cellprob, out.class_logits


def _cpu_net(model: Model) -> nn.Module:
    """A float32 CPU copy of ``model.net`` (a UNet or an ensemble of UNets) in eval mode (the
    caller's network is left alone)."""
    if not isinstance(model, Model):
        raise TypeError(f"model: expected a flowseg Model (flowseg.load_model(path)), got "
                        f"{type(model).__name__}")
    nets = [m.net for m in members(model)]  # an ensemble is exported as one network
    if not all(isinstance(net, UNet) for net in nets):
        raise TypeError(f"model.net: expected a UNet (a model loaded from a flowseg checkpoint), "
                        f"got {', '.join(type(n).__name__ for n in nets)}: export the checkpoint, "
                        "not an export")
    return copy.deepcopy(model.net).to("cpu", torch.float32).eval()


def _onnx_bytes(net: nn.Module, example: torch.Tensor, document: dict[str, Any],
                opset: int) -> bytes:
    """``net`` traced on ``example`` as a serialised ONNX model, ``document`` in its
    ``metadata_props``."""
    onnx = require_export_module("onnx", "exporting to ONNX")
    buffer = io.BytesIO()
    with torch_notices_silenced(), torch.no_grad():
        torch.onnx.export(_TupleOutputs(net).eval(), (example,), buffer, dynamo=False,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes=_DYNAMIC_AXES, opset_version=opset)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(document)})
    proto.doc_string = ("flowseg cell segmentation network; configs, class names, thresholds "
                        f"and input normalisation: metadata_props[{METADATA_KEY!r}] (JSON)")
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _torchscript_bytes(net: nn.Module, example: torch.Tensor, document: dict[str, Any]) -> bytes:
    """``net`` traced on ``example`` as a saved TorchScript module, ``document`` its extra file
    ``flowseg.json``."""
    with torch_notices_silenced(), torch.no_grad():
        traced = torch.jit.trace(_TupleOutputs(net).eval(), example, check_trace=False)
    buffer = io.BytesIO()
    with torch_notices_silenced():
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_EXTRA: json.dumps(document)})
    return buffer.getvalue()


def _onnx_net(data: bytes, config: ModelConfig) -> OnnxNet:
    return OnnxNet(onnx_session(data), config)


def _torchscript_net(data: bytes, config: ModelConfig) -> TorchScriptNet:
    with torch_notices_silenced():
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    return TorchScriptNet(module, config)


def _check_path(path: str | os.PathLike, overwrite: bool, suffixes: tuple[str, ...] = ()) -> Path:
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"path: expected a file name ending in {' or '.join(suffixes)} (how "
                         f"flowseg.load_model recognises the format), got {str(path)!r}")
    for target in (path, sidecar_path(path)):
        if target.is_dir():
            raise IsADirectoryError(f"{target}: is a folder (expected a file name)")
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target}: exists (pass overwrite=True / --overwrite to "
                                  f"replace it)")
    return path


def _check_export(path: Path, net: nn.Module, exported: nn.Module, tolerance: float) -> float:
    """Largest difference of ``exported`` to ``net`` on :func:`probe_inputs`; RuntimeError
    (naming ``path``) beyond ``tolerance``."""
    config = net.config
    inputs = probe_inputs(config.in_channels, config.size_multiple)
    difference = max_difference(net, exported, inputs)
    if not difference <= tolerance:
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        raise RuntimeError(f"{path}: the exported network differs from the torch network by "
                           f"{difference:.3g} (> tolerance {tolerance:g}) on inputs of shapes "
                           f"{shapes}; nothing was written")
    return difference


def _write(path: Path, data: bytes, document: dict[str, Any], difference: float | None
           ) -> ExportResult:
    """Write the file and its JSON atomically (a failure leaves neither behind)."""
    metadata_path = sidecar_path(path)
    with atomic_path(path) as tmp, atomic_path(metadata_path) as tmp_json:
        tmp.write_bytes(data)
        tmp_json.write_text(json.dumps(document, indent=2) + "\n")
    return ExportResult(path, metadata_path, difference)


def export_onnx(model: Model, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                verify: bool = True, tolerance: float = DEFAULT_TOLERANCE,
                overwrite: bool = False) -> ExportResult:
    """Write ``model``'s network as ONNX to ``path`` and its metadata to ``<path>.json``.

    Parameters
    ----------
    model : Model
        Loaded from a flowseg checkpoint (its ``net`` a :class:`~flowseg.model.unet.UNet`).
    path : path-like
        Ending in ``.onnx`` (how :func:`flowseg.load_model` recognises ONNX).
    opset : int
        ONNX opset, in :data:`OPSETS`.
    verify : bool
        Run the export in onnxruntime on :func:`probe_inputs` and refuse it (RuntimeError,
        nothing written) when a map differs from torch's by more than ``tolerance``.
    tolerance : float
    overwrite : bool
        Replace existing files (else FileExistsError).

    Returns
    -------
    ExportResult

    Raises
    ------
    ModuleNotFoundError
        onnx (or, with ``verify``, onnxruntime) is not installed.
    """
    path = _check_path(path, overwrite, ONNX_SUFFIXES)
    opset = check_opset(opset)
    net = _cpu_net(model)
    config = model.model_config
    document = export_metadata(model, export_format="onnx", opset=opset)
    data = _onnx_bytes(net, probe_inputs(config.in_channels, config.size_multiple)[0], document,
                       opset)
    difference = _check_export(path, net, _onnx_net(data, config), tolerance) if verify else None
    return _write(path, data, document, difference)


def export_torchscript(model: Model, path: str | os.PathLike, *, verify: bool = True,
                       tolerance: float = DEFAULT_TOLERANCE, overwrite: bool = False) -> ExportResult:
    """Write ``model``'s network as TorchScript to ``path`` and its metadata to ``<path>.json``.

    ``path`` is conventionally ``*.ts``; any other name loads too, recognised by the
    ``flowseg.json`` extra file (``model.pt`` is the name Triton's PyTorch backend wants).
    ``verify``, ``tolerance`` and ``overwrite`` as in :func:`export_onnx` (the check runs the
    saved module).
    """
    path = _check_path(path, overwrite)
    net = _cpu_net(model)
    config = model.model_config
    document = export_metadata(model, export_format="torchscript")
    data = _torchscript_bytes(net, probe_inputs(config.in_channels, config.size_multiple)[0],
                              document)
    difference = (_check_export(path, net, _torchscript_net(data, config), tolerance)
                  if verify else None)
    return _write(path, data, document, difference)
