"""Ensembles: several networks that segment as one, their maps averaged (as cellpose's model sets).

:class:`EnsembleNet` runs its networks on the same input and returns the mean of their outputs
behind the :class:`~flowseg.model.unet.UNet` call signature, so tiling, test-time augmentation,
batching, Dask and flow following use an ensemble as they use one network:

- flows (network scale) and cell-probability logits: the mean over the networks (cellpose
  averages its networks' raw outputs the same way);
- class logits: the log of the mean class probabilities (softmax of each network, mean, log),
  so the softmax that the post-processing takes of them gives back the mean probabilities.

:func:`ensemble` builds the :class:`~flowseg.model.checkpoint.Model` of an ensemble; its
thresholds are the first member's until a tune run on the ensemble replaces them
(``flowseg-evaluate tune --model a.pt --model b.pt --data VAL --out ens.pt``).
``save_model`` / ``load_model`` keep an ensemble in one file (format version 2: one entry per
network, each with its own model config, weights, train config and metadata).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from flowseg.config import SegmentConfig
from flowseg.model.checkpoint import Model
from flowseg.model.unet import NetOutput
from flowseg.size import SIZE_MODEL_KEY

__all__ = ["EnsembleNet", "ensemble", "members"]


class EnsembleNet(nn.Module):
    """Networks whose outputs are averaged: ``forward(x (B, C, H, W)) -> NetOutput``.

    Parameters
    ----------
    models : sequence of Model
        The members (their networks are shared, not copied); :func:`ensemble` checks that
        they fit together.

    Attributes
    ----------
    nets : nn.ModuleList
        The members' networks, in order.
    members : tuple of Model
        The members, for saving each with its own configs and metadata.
    config : ModelConfig
        That of the member with the most poolings (the first of them): its ``size_multiple``
        is a multiple of every member's, so the tiles it allows fit every member.
    """

    def __init__(self, models: Sequence[Model]) -> None:
        super().__init__()
        self.members = tuple(models)
        self.nets = nn.ModuleList(m.net for m in self.members)
        self.config = max((m.model_config for m in self.members), key=lambda c: c.size_multiple)

    def forward(self, x: torch.Tensor, *, class_grad: float = 1.0) -> NetOutput:
        """The members' mean maps (see the module docstring), computed in float32; flows and
        cell probability are returned in the first network's output dtype (bf16 under bf16
        autocast, as one network's), class logits in float32 (their bf16 rounding would move
        the probabilities by ~1e-3). ``class_grad`` is passed to each network."""
        outs = [net(x, class_grad=class_grad) for net in self.nets]
        dtype = outs[0].flows.dtype
        flows = torch.stack([o.flows.float() for o in outs]).mean(0)
        cellprob = torch.stack([o.cellprob.float() for o in outs]).mean(0)
        log_probs = torch.stack([torch.log_softmax(o.class_logits.float(), dim=1) for o in outs])
        class_logits = torch.logsumexp(log_probs, dim=0) - math.log(len(outs))
        return NetOutput(flows=flows.to(dtype), cellprob=cellprob.to(dtype),
                         class_logits=class_logits)

    def level_styles(self, x: torch.Tensor, levels: int = 1, spread: bool = False) -> torch.Tensor:
        """The first network's style vectors (``UNet.level_styles``): the ensemble estimates
        cell sizes with its first member's size model (:func:`ensemble`)."""
        return self.nets[0].level_styles(x, levels, spread)


def members(model: Model) -> tuple[Model, ...]:
    """The networks of ``model`` as single models: its members for an ensemble, else itself."""
    return model.net.members if isinstance(model.net, EnsembleNet) else (model,)


def _check_members(models: Sequence[Model], names: Sequence[str]) -> None:
    """TypeError / ValueError, naming the models, unless they can be averaged."""
    for name, model in zip(names, models):
        if not isinstance(model, Model):
            raise TypeError(f"{name}: expected a loaded flowseg Model (flowseg.load_model(path)), "
                            f"got {type(model).__name__}")
    first, name0 = models[0], names[0]
    for name, model in zip(names[1:], models[1:]):
        if model.class_names != first.class_names:
            raise ValueError(f"models: the networks of an ensemble must have the same cell types "
                             f"in the same order; {name0} has {list(first.class_names)}, {name} "
                             f"has {list(model.class_names)}")
        if model.model_config.in_channels != first.model_config.in_channels:
            raise ValueError(f"models: the networks of an ensemble must take the same channels; "
                             f"{name0} takes {first.model_config.in_channels}, {name} takes "
                             f"{model.model_config.in_channels}")
        if model.device != first.device:
            raise ValueError(f"models: the networks of an ensemble must be on one device; {name0} "
                             f"is on {first.device}, {name} on {model.device}")


def ensemble(models: Sequence[Model], *, names: Sequence[str] | None = None,
             segment_config: SegmentConfig | None = None, metadata: dict | None = None,
             tta: bool | None = None) -> Model:
    """One model that averages the maps of ``models``'s networks (:class:`EnsembleNet`).

    Parameters
    ----------
    models : sequence of Model
        Same cell types (in the same order) and input channels, on one device; an ensemble
        among them adds its members (ensembles do not nest).
    names : sequence of str, optional
        How error messages name the models (file paths); default ``models[i]``.
    segment_config : SegmentConfig, optional
        The ensemble's thresholds; default: the first model's (tune the ensemble for its own:
        ``flowseg-evaluate tune --model a.pt --model b.pt ...``).
    metadata : dict, optional
        The ensemble's own metadata (each member keeps its own). Unless it has one, it gets
        the first member's size model (:data:`flowseg.size.SIZE_MODEL_KEY`), which
        ``segment`` uses with that member's style vectors to estimate each image's cell size,
        so an ensemble is resized as its first member would be.
    tta : bool, optional
        The ensemble's own flip test-time augmentation choice (:attr:`Model.tta`); default:
        the first model's.

    Returns
    -------
    Model
        ``net`` is an :class:`EnsembleNet`; ``model_config`` is ``net.config`` (that of the
        member with the most poolings: the tiles it allows fit every member); the members are
        ``net.members``, each with its own configs. ``train_config`` is None.

    Raises
    ------
    TypeError
        Not a non-empty list of Models.
    ValueError
        Cell types, input channels or devices differ (the message names both models).
    """
    if isinstance(models, Model) or not isinstance(models, Sequence) or not models:
        raise TypeError(f"models: expected a non-empty list of flowseg Models, got "
                        f"{type(models).__name__} {models!r:.40}")
    names = [f"models[{i}]" for i in range(len(models))] if names is None else list(names)
    _check_members(models, names)
    net = EnsembleNet([m for model in models for m in members(model)])
    tuned = models[0].segment_config if segment_config is None else segment_config
    metadata = dict(metadata or {})
    first = net.members[0]
    if SIZE_MODEL_KEY in first.metadata and hasattr(first.net, "level_styles"):
        metadata.setdefault(SIZE_MODEL_KEY, first.metadata[SIZE_MODEL_KEY])
    return Model(net=net, model_config=net.config, class_names=models[0].class_names,
                 segment_config=tuned, train_config=None, metadata=metadata,
                 tta=models[0].tta if tta is None else tta)
