"""Load exported networks (ONNX, TorchScript) as flowseg models that ``segment`` runs unchanged.

An exported file (written by :mod:`flowseg.model.export` / ``flowseg-export``) holds the network
and, embedded, one JSON document with what a server needs besides the weights (model config,
class names, tuned thresholds, input normalisation, output meanings): the ONNX model's
``metadata_props`` under the key :data:`METADATA_KEY`, the TorchScript archive's extra file
:data:`TORCHSCRIPT_EXTRA`. The same document lies beside the file as ``<file>.json`` for people
and servers (Triton); loading reads the embedded copy only, so a moved file needs no sidecar.

:func:`load_exported` returns a :class:`~flowseg.model.checkpoint.Model` whose ``net`` is a
``torch.nn.Module`` returning :class:`~flowseg.model.unet.NetOutput`: :class:`OnnxNet` runs an
onnxruntime session on the CPU (numpy in and out; the outputs go to the device of the net, see
``.to``), :class:`TorchScriptNet` the traced network on its device. Tiling, test-time
augmentation, batching and flow following are flowseg's own, as for a checkpoint. Exported
networks compute in float32 whatever ``precision`` asks: onnxruntime ignores torch's autocast.

Like :mod:`flowseg.model.checkpoint`, this module reads model files; onnxruntime is an optional
dependency (``pip install 'flowseg[export]'``), imported when an ONNX file is loaded.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from flowseg.config import ModelConfig, SegmentConfig, TrainConfig
from flowseg.errors import InputError, one_line
from flowseg.model.checkpoint import Model
from flowseg.model.unet import NetOutput

__all__ = ["EXPORT_FORMAT", "EXPORT_FORMAT_VERSION", "INPUT_NAME", "METADATA_KEY", "ONNX_SUFFIXES",
           "OUTPUT_NAMES", "TORCHSCRIPT_EXTRA", "TORCHSCRIPT_SUFFIXES", "OnnxNet",
           "TorchScriptNet", "exported_kind", "load_exported", "model_from_metadata",
           "onnx_session", "require_export_module", "require_onnxruntime", "sidecar_path",
           "torch_notices_silenced"]

#: ``format`` of the embedded JSON document, and its version.
EXPORT_FORMAT = "flowseg-exported-model"
EXPORT_FORMAT_VERSION = 1
#: Name of the network input: (batch, C, height, width) float32, normalised images.
INPUT_NAME = "images"
#: Names of the network outputs, in order: (batch, 2, H, W) flows (dy, dx) x flow scale,
#: (batch, H, W) cell-probability logits, (batch, K, H, W) class logits.
OUTPUT_NAMES = ("flows", "cellprob", "class_logits")
#: Key of the JSON document in an ONNX model's ``metadata_props``.
METADATA_KEY = "flowseg"
#: Name of the JSON document among a TorchScript archive's extra files.
TORCHSCRIPT_EXTRA = "flowseg.json"
#: File suffixes read as ONNX / TorchScript (other files are sniffed for the flowseg extra file,
#: so a TorchScript export named ``model.pt``, as Triton wants it, loads too).
ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript")

def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON written beside an exported file: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def require_export_module(name: str, purpose: str) -> ModuleType:
    """The module ``name`` of the ``export`` extra (``onnx``, ``onnxruntime``);
    ModuleNotFoundError that says what needs it and how to install it when missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ModuleNotFoundError(f"{purpose} needs {name}, which is not installed; install it "
                                  f"with: pip install 'flowseg[export]' (or pip install {name})"
                                  ) from exc


def require_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module; ModuleNotFoundError with an install hint when missing."""
    return require_export_module("onnxruntime", "running an ONNX model")


@contextlib.contextmanager
def torch_notices_silenced() -> Iterator[None]:
    """Silence torch's tracer warnings and the deprecation notices of its TorchScript tracer,
    TorchScript-based ONNX exporter and ``torch.jit.save`` / ``load``: a user cannot act on
    them, and every export is checked against the torch network instead
    (:mod:`flowseg.model.export`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        warnings.filterwarnings("ignore", message=r"The feature will be removed",
                                category=DeprecationWarning)
        yield


def _is_flowseg_torchscript(path: Path) -> bool:
    """Whether ``path`` is a zip archive holding ``<archive>/extra/flowseg.json``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(f"/extra/{TORCHSCRIPT_EXTRA}") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def exported_kind(path: str | os.PathLike) -> str | None:
    """``"onnx"``, ``"torchscript"`` or None (not an exported file: a checkpoint, presumably).

    ``.onnx`` is ONNX; ``.ts`` and ``.torchscript`` are TorchScript; any other existing file is
    TorchScript when it is a zip archive holding flowseg's extra file (a checkpoint is not).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in TORCHSCRIPT_SUFFIXES or (path.is_file() and _is_flowseg_torchscript(path)):
        return "torchscript"
    return None


def _check_input(x: torch.Tensor, in_channels: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor (B, {in_channels}, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"x: expected shape (B, {in_channels}, H, W), got {tuple(x.shape)}")


class _ExportedNet(nn.Module):
    """What the two runtimes share: the model config and an empty parameter that says where
    the outputs go (``.to(device)`` moves it), so that code asking a network for its device
    (``next(net.parameters()).device``) works unchanged."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def _output(self, flows: Any, cellprob: Any, class_logits: Any) -> NetOutput:
        """Outputs (numpy arrays or tensors) as a NetOutput of tensors on this net's device."""
        flows, cellprob, class_logits = (torch.as_tensor(a).to(self.device_anchor.device)
                                         for a in (flows, cellprob, class_logits))
        return NetOutput(flows=flows, cellprob=cellprob, class_logits=class_logits)


class OnnxNet(_ExportedNet):
    """An onnxruntime session behind the :class:`~flowseg.model.unet.UNet` call signature.

    ``forward(x (B, C, H, W) tensor of float) -> NetOutput`` of float32 tensors on the device
    of this module (CPU unless moved with ``.to``). The session runs on the CPU with
    ``torch.get_num_threads()`` threads (as read when the file was loaded).

    Parameters
    ----------
    session : onnxruntime.InferenceSession
        With the input :data:`INPUT_NAME` and the outputs :data:`OUTPUT_NAMES`.
    config : ModelConfig
    """

    def __init__(self, session: Any, config: ModelConfig) -> None:
        super().__init__(config)
        self.session = session

    def forward(self, x: torch.Tensor, *, class_grad: float = 1.0) -> NetOutput:
        """Run the session on ``x``; ``class_grad`` is accepted and ignored (no gradients)."""
        _check_input(x, self.config.in_channels)
        feed = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return self._output(*self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: feed}))


class TorchScriptNet(_ExportedNet):
    """A traced network (tuple outputs) behind the :class:`~flowseg.model.unet.UNet` call
    signature: ``forward(x (B, C, H, W) tensor of float) -> NetOutput``.

    Parameters
    ----------
    module : torch.jit.ScriptModule
        ``module(x) -> (flows, cellprob, class_logits)``.
    config : ModelConfig
    """

    def __init__(self, module: torch.jit.ScriptModule, config: ModelConfig) -> None:
        super().__init__(config)
        self.module = module

    def forward(self, x: torch.Tensor, *, class_grad: float = 1.0) -> NetOutput:
        """Run the traced network on ``x``; ``class_grad`` is accepted and ignored."""
        _check_input(x, self.config.in_channels)
        return self._output(*self.module(x.to(self.device_anchor.device)))


def model_from_metadata(document: Any, make_net: Callable[[ModelConfig], nn.Module],
                        source: str | os.PathLike) -> Model:
    """The :class:`Model` of an exported network and its embedded JSON document (parsed).

    Parameters
    ----------
    document : dict
        Written by :func:`flowseg.model.export.export_metadata`.
    make_net : callable
        ``make_net(model_config)``: the runtime wrapper (:class:`OnnxNet`, :class:`TorchScriptNet`).
    source : path-like
        Named by error messages.

    Raises
    ------
    InputError
        Not a flowseg document, another format version, or values of the wrong kind.
    """
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise InputError(f"{source}: not a flowseg export (expected an embedded document with "
                         f"format {EXPORT_FORMAT!r})")
    if document.get("format_version") != EXPORT_FORMAT_VERSION:
        raise InputError(f"{source}: export format version {document.get('format_version')!r} "
                         f"is not supported (this flowseg reads version {EXPORT_FORMAT_VERSION})")
    try:
        train_config = document["train_config"]
        model_config = ModelConfig.from_dict(document["model_config"])
        return Model(net=make_net(model_config), model_config=model_config,
                     class_names=tuple(document["class_names"]),
                     segment_config=SegmentConfig.from_dict(document["segment_config"]),
                     train_config=None if train_config is None else TrainConfig.from_dict(train_config),
                     metadata={**document["metadata"], "export": document["export"]},
                     tta=document.get("tta", False))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{source}: damaged flowseg export metadata: {one_line(exc)}") from exc


def _parse(text: str | bytes | None, path: Path, where: str) -> Any:
    if not text:
        raise InputError(f"{path}: no flowseg metadata ({where} is missing); export the model "
                         f"with flowseg-export")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError(f"{path}: damaged flowseg metadata in {where}: {one_line(exc)}") from exc


def onnx_session(model: str | os.PathLike | bytes) -> Any:
    """An onnxruntime CPU session of an ONNX file or serialised model, with
    ``torch.get_num_threads()`` threads (so ``OMP_NUM_THREADS`` and ``torch.set_num_threads``
    apply to it as to torch)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _load_onnx(path: Path) -> Model:
    require_onnxruntime()
    try:
        session = onnx_session(path)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors have no common base
        raise InputError(f"{path}: not an ONNX model file ({one_line(exc)})") from exc
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names[0] != [INPUT_NAME] or set(names[1]) != set(OUTPUT_NAMES):
        raise InputError(f"{path}: not a flowseg network: expected the input {INPUT_NAME!r} and "
                         f"the outputs {list(OUTPUT_NAMES)}, got {names[0]} and {names[1]}")
    metadata = session.get_modelmeta().custom_metadata_map
    document = _parse(metadata.get(METADATA_KEY), path, f"metadata_props[{METADATA_KEY!r}]")
    return model_from_metadata(document, lambda config: OnnxNet(session, config), path)


def _load_torchscript(path: Path, device: torch.device | str) -> Model:
    extra = {TORCHSCRIPT_EXTRA: ""}
    try:
        with torch_notices_silenced():
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - torch.jit.load raises RuntimeError and others
        raise InputError(f"{path}: not a TorchScript file ({one_line(exc)})") from exc
    document = _parse(extra[TORCHSCRIPT_EXTRA], path, f"the extra file {TORCHSCRIPT_EXTRA!r}")
    return model_from_metadata(document, lambda config: TorchScriptNet(module, config), path)


def load_exported(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> Model:
    """Load an ONNX or TorchScript export (:func:`exported_kind`), in eval mode, on ``device``.

    ``device`` is where the outputs go (and, for TorchScript, where the network runs); an ONNX
    network runs on the CPU.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    InputError
        Not an exported flowseg model (not ONNX / TorchScript, no or damaged metadata); the
        message names the file.
    ModuleNotFoundError
        An ONNX file, and onnxruntime is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    kind = exported_kind(path)
    if kind is None:
        raise InputError(f"{path}: not an exported flowseg model (expected a .onnx file, or a "
                         f"TorchScript file written by flowseg-export)")
    model = _load_onnx(path) if kind == "onnx" else _load_torchscript(path, device)
    model.net.to(device).eval()
    return model
