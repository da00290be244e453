"""One-file model checkpoints: format version, configs, weights, class names, tuned thresholds.

A checkpoint is a ``torch.save`` of plain python containers and tensors only, so it loads with
``torch.load(weights_only=True)`` (no code runs on load)::

    {"format": "flowseg-model", "format_version": 1,
     "model_config": {...}, "state_dict": {...}, "class_names": [...],
     "segment_config": {...}, "train_config": {...} or None, "metadata": {...},
     "train_state": {...}}            # optional: optimizer, scheduler, epoch, RNG, history

An ensemble (:mod:`flowseg.model.ensemble`) is version 2: its networks in ``members``, each
with its own configs, weights, thresholds and metadata; the thresholds of the ensemble itself
(tuned on it) at the top. A single network is still written as version 1, which older flowseg
reads::

    {"format": "flowseg-model", "format_version": 2,
     "members": [{"model_config": {...}, "state_dict": {...}, "segment_config": {...},
                  "train_config": {...} or None, "metadata": {...}}, ...],
     "class_names": [...], "segment_config": {...}, "train_config": None, "metadata": {...}}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flowseg.config import ModelConfig, SegmentConfig, TrainConfig
from flowseg.errors import InputError, one_line
from flowseg.io.atomic import atomic_path
from flowseg.model.unet import FLOW_SCALE, UNet

__all__ = ["ENSEMBLE_FORMAT_VERSION", "FORMAT_NAME", "FORMAT_VERSION", "Model", "save_model", "load_model", "load_train_state"]

FORMAT_NAME = "flowseg-model"
FORMAT_VERSION = 1
#: Format version of a file holding several networks (an ensemble).
ENSEMBLE_FORMAT_VERSION = 2


@dataclass
class Model:
    """A network with everything needed to use it.

    Attributes
    ----------
    net : UNet
    model_config : ModelConfig
    class_names : tuple of str
        ``class_names[k]`` is the cell type of class logit ``k``.
    segment_config : SegmentConfig
        Tuned post-processing thresholds (used when ``segment(config=None)``).
    train_config : TrainConfig or None
        How the weights were trained.
    metadata : dict
        Plain python values (flowseg version, epochs, validation score, ...).
    tta : bool
        The model's own choice of flip test-time augmentation, used where
        ``PredictConfig.tta`` is None (the default); ``flowseg-evaluate tune --tta`` sets it
        when the thresholds are tuned on flip-averaged maps. False for files that record none.
    """

    net: UNet
    model_config: ModelConfig
    class_names: tuple[str, ...]
    segment_config: SegmentConfig = field(default_factory=SegmentConfig)
    train_config: TrainConfig | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tta: bool = False

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        if not isinstance(self.tta, bool):
            raise TypeError(f"tta: expected a bool, got {self.tta!r}")
        if len(self.class_names) != self.model_config.n_classes:
            raise ValueError(f"class_names: expected {self.model_config.n_classes} names "
                             f"(model_config.n_classes), got {self.class_names}")

    @property
    def flow_scale(self) -> float:
        """``net`` predicts ``flow_scale`` x unit flows."""
        return FLOW_SCALE

    @property
    def device(self) -> torch.device:
        """Device of the network's weights."""
        return next(self.net.parameters()).device


def _entry(model: Model, path: Path, what: str = "a model") -> dict[str, Any]:
    """One network's configs, weights, thresholds and metadata (plain containers, CPU tensors)."""
    from flowseg import __version__

    if not isinstance(model.net, UNet):  # e.g. an exported (ONNX / TorchScript) network
        raise TypeError(f"{path}: only {what} with a flowseg UNet can be saved as a checkpoint, "
                        f"got a {type(model.net).__name__} (an exported model stays in its "
                        "exported file; tune or fine-tune the checkpoint it was exported from)")
    return {
        "model_config": model.model_config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.net.state_dict().items()},
        "segment_config": model.segment_config.to_dict(),
        "train_config": None if model.train_config is None else model.train_config.to_dict(),
        "metadata": {"flowseg_version": __version__, **model.metadata},
    }


def _payload(model: Model, path: Path, train_state: dict[str, Any] | None) -> dict[str, Any]:
    from flowseg import __version__
    from flowseg.model.ensemble import EnsembleNet  # imports this module

    if isinstance(model.net, EnsembleNet):
        if train_state is not None:
            raise ValueError(f"{path}: train_state: an ensemble is not trained, so it has no "
                             "train state to save")
        entries = [_entry(m, path, f"an ensemble member (members[{i}])")
                   for i, m in enumerate(model.net.members)]
        return {"format": FORMAT_NAME, "format_version": ENSEMBLE_FORMAT_VERSION,
                "members": entries, "class_names": list(model.class_names),
                "segment_config": model.segment_config.to_dict(), "train_config": None,
                "metadata": {"flowseg_version": __version__, **model.metadata}, "tta": model.tta}
    payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
               "class_names": list(model.class_names), **_entry(model, path), "tta": model.tta}
    if train_state is not None:
        payload["train_state"] = train_state
    return payload


def save_model(path: str | os.PathLike, model: Model, *, train_state: dict[str, Any] | None = None
               ) -> Path:
    """Write ``model`` to one file atomically (a failed write leaves ``path`` untouched).

    Parameters
    ----------
    path : path-like
    model : Model
    train_state : dict, optional
        Plain python containers and tensors only (optimizer / scheduler ``state_dict()``,
        epoch, RNG states, history) to resume training.

    Returns
    -------
    Path
    """
    path = Path(path)
    payload = _payload(model, path, train_state)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


#: Keys every model file holds (``train_state`` and ``tta`` are optional).
REQUIRED_KEYS = ("model_config", "state_dict", "class_names", "segment_config", "train_config",
                 "metadata")
#: Keys of a file of several networks (format version 2), and of each entry of its ``members``.
ENSEMBLE_KEYS = ("members", "class_names", "segment_config", "metadata")
MEMBER_KEYS = ("model_config", "state_dict", "segment_config", "train_config", "metadata")


def _read(path: Path, device: torch.device | str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise InputError(f"{path}: not a flowseg model file ({one_line(exc)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise InputError(f"{path}: not a flowseg model file (expected format {FORMAT_NAME!r})")
    if payload.get("format_version") not in (FORMAT_VERSION, ENSEMBLE_FORMAT_VERSION):
        raise InputError(f"{path}: model format version {payload.get('format_version')!r} is not "
                         f"supported (this flowseg reads versions {FORMAT_VERSION} and "
                         f"{ENSEMBLE_FORMAT_VERSION})")
    return payload


def _check_keys(payload: Any, path: Path, keys: tuple[str, ...] = REQUIRED_KEYS,
                where: str = "") -> None:
    """InputError naming the file and the missing keys (of the entry ``where``) unless
    ``payload`` is a dict holding ``keys``."""
    if not isinstance(payload, dict):
        raise InputError(f"{path}: damaged flowseg model file: {where or 'the file'} holds a "
                         f"{type(payload).__name__}, expected a dict")
    missing = [where + k for k in keys if k not in payload]
    if missing:
        raise InputError(f"{path}: incomplete flowseg model file: missing {', '.join(missing)} "
                         f"(expected the keys {', '.join(keys)})")


def _model(payload: dict[str, Any], path: Path) -> Model:
    """The Model of a payload with all :data:`REQUIRED_KEYS` (weights on the CPU / map location)."""
    model_config = ModelConfig.from_dict(payload["model_config"])
    net = UNet(model_config)
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not match the stored model config: "
                         f"{str(exc).splitlines()[0]}") from exc
    train_config = payload["train_config"]
    return Model(net=net, model_config=model_config, class_names=tuple(payload["class_names"]),
                 segment_config=SegmentConfig.from_dict(payload["segment_config"]),
                 train_config=None if train_config is None else TrainConfig.from_dict(train_config),
                 metadata=dict(payload["metadata"]), tta=payload.get("tta", False))


def _ensemble(payload: dict[str, Any], path: Path) -> Model:
    """The ensemble Model of a version-2 payload with all :data:`ENSEMBLE_KEYS`."""
    from flowseg.model.ensemble import ensemble  # imports this module

    entries = payload["members"]
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{path}: damaged flowseg model file: members: expected a non-empty "
                         f"list of networks, got {type(entries).__name__} {entries!r:.40}")
    models = []
    for i, entry in enumerate(entries):
        _check_keys(entry, path, MEMBER_KEYS, f"members[{i}].")
        models.append(_model({**entry, "class_names": payload["class_names"]}, path))
    return ensemble(models, names=[f"{path} members[{i}]" for i in range(len(models))],
                    segment_config=SegmentConfig.from_dict(payload["segment_config"]),
                    metadata=dict(payload["metadata"]), tta=payload.get("tta", False))


def load_model(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> Model:
    """Load a model written by :func:`save_model`, in eval mode, on ``device``.

    An ensemble file (format version 2) gives an ensemble Model
    (:func:`flowseg.model.ensemble.ensemble`). An ONNX or TorchScript export
    (``flowseg-export``) loads too, through :func:`flowseg.model.exported.load_exported`.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    InputError
        Not a flowseg checkpoint, an unsupported format version, missing keys or stored values
        of the wrong kind (the message names the file).
    """
    from flowseg.model.exported import exported_kind, load_exported  # imports this module

    path = Path(path)
    if exported_kind(path) is not None:
        return load_exported(path, device=device)
    payload = _read(path, device)
    several = payload["format_version"] == ENSEMBLE_FORMAT_VERSION
    _check_keys(payload, path, ENSEMBLE_KEYS if several else REQUIRED_KEYS)
    try:
        model = (_ensemble if several else _model)(payload, path)
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{path}: damaged flowseg model file: {one_line(exc)}") from exc
    model.net.to(device).eval()
    return model


def load_train_state(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The ``train_state`` stored with a checkpoint (empty dict when none)."""
    return dict(_read(Path(path), device).get("train_state") or {})
