"""Start training from a trained model (``flowseg-train --init``): weights, class heads, thresholds.

The new model keeps the source's architecture; its classes are the training folder's cell types.
A class the source knows keeps its head rows (and its tuned thresholds); a new class gets fresh
head rows and the source's global thresholds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from flowseg.config import ModelConfig, SegmentConfig
from flowseg.model.checkpoint import Model
from flowseg.model.ensemble import EnsembleNet
from flowseg.model.unet import UNet

__all__ = ["init_config", "init_segment_config", "init_weights"]

#: Parameters holding one row per class: (name, first class row).
_CLASS_ROWS = (("head.2.weight", 3), ("head.2.bias", 3),
               ("style_classes.weight", 0), ("style_classes.bias", 0))


def _check_single(source: Model) -> None:
    """ValueError for an ensemble: its weights are not one network's."""
    if isinstance(source.net, EnsembleNet):
        raise ValueError(f"--init: the initial model is an ensemble of {len(source.net.members)} "
                         "networks; fine-tune from the file of one of them")


def init_config(source: Model, class_names: Sequence[str], *, channels: int,
                requested: ModelConfig | None = None) -> ModelConfig:
    """The source's architecture with ``len(class_names)`` classes (an ensemble is refused).

    ``channels`` (of the training images) must equal the source's input channels, and
    ``requested`` (the architecture options a user gave, or None) must agree with the source's
    except for ``n_classes``: a ValueError names what differs.
    """
    _check_single(source)
    config = dataclasses.replace(source.model_config, n_classes=len(class_names))
    if channels != config.in_channels:
        raise ValueError(f"--init: the initial model takes {config.in_channels} channel(s), the "
                         f"training images have {channels}")
    if requested is not None:
        differ = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "n_classes"
                  and getattr(requested, f.name) != getattr(config, f.name)]
        if differ:
            raise ValueError(
                "--init: the architecture comes from the initial model; it differs in "
                + ", ".join(f"{n} ({getattr(config, n)!r}, asked {getattr(requested, n)!r})"
                            for n in differ))
    return config


def init_weights(net: UNet, source: Model, class_names: Sequence[str]) -> tuple[str, ...]:
    """Copy ``source``'s weights into ``net`` (built with :func:`init_config`), class rows by
    cell-type name; returns the class names that are new (their rows keep ``net``'s own init).
    """
    _check_single(source)
    own = net.state_dict()
    theirs = source.net.state_dict()
    rows = dict(_CLASS_ROWS)
    new = tuple(name for name in class_names if name not in source.class_names)
    state = {}
    for key, value in own.items():
        if key not in theirs:
            continue  # e.g. style_classes when the source has none: keeps its fresh init
        if key not in rows:
            state[key] = theirs[key].to(value.dtype)
            continue
        merged = value.clone()
        first = rows[key]
        merged[:first] = theirs[key][:first]
        for k, name in enumerate(class_names):
            if name in source.class_names:
                merged[first + k] = theirs[key][first + source.class_names.index(name)]
        state[key] = merged
    with torch.no_grad():
        net.load_state_dict(state, strict=False)
    return new


def init_segment_config(source: Model, class_names: Sequence[str]) -> SegmentConfig:
    """``source``'s thresholds, its per-type values kept for the types that stay."""
    config = source.segment_config
    per_class = {name: t for name, t in config.per_class.items() if name in class_names}
    return dataclasses.replace(config, per_class=per_class)
