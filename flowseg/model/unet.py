"""Residual U-Net of the Cellpose family with flow, cell-probability and cell-type heads.

Encoder: per level, residual units of two pre-activation convolutions (BatchNorm-ReLU-conv),
max pooling between levels. A *style* vector (global average of the deepest features, L2
normalised) is projected and added into every decoder convolution. Decoder: nearest upsampling,
the encoder features of the same level added (``skip="add"``, as Cellpose) or concatenated
(``skip="concat"``), then residual units. One pre-activation 1x1 convolution gives
``2 + 1 + K`` maps: flows (dy, dx), cell-probability logit, K class logits; a linear function
of the style vector is added to the class logits (``style_classes``). How much of the
class logits' gradient reaches the shared features is a forward argument (``class_grad``):
training passes 0 by default, so the cell-type loss trains only the class rows of that
convolution and cannot slow the segmentation (it did, badly: ``benchmarks/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flowseg.config import ModelConfig

__all__ = ["FLOW_SCALE", "NetOutput", "UNet"]

#: The network predicts ``FLOW_SCALE`` x unit flows (Cellpose's 5): ``NetOutput.flows`` is in this
#: scale; divide by ``FLOW_SCALE`` for unit flows.
FLOW_SCALE: float = 5.0


@dataclass
class NetOutput:
    """The network's output for a batch.

    Attributes
    ----------
    flows : (B, 2, H, W) tensor of float
        Predicted flows (dy, dx) in network scale: ``FLOW_SCALE`` x unit flows.
    cellprob : (B, H, W) tensor of float
        Cell-probability logits.
    class_logits : (B, K, H, W) tensor of float
        Cell-type logits.
    """

    flows: torch.Tensor
    cellprob: torch.Tensor
    class_logits: torch.Tensor

    def unit_flows(self) -> torch.Tensor:
        """Flows (B, 2, H, W) in unit scale (``flows / FLOW_SCALE``)."""
        return self.flows / FLOW_SCALE


def _preact(c_in: int, c_out: int, kernel_size: int) -> nn.Sequential:
    """BatchNorm - ReLU - conv (pre-activation)."""
    return nn.Sequential(nn.BatchNorm2d(c_in, momentum=0.05), nn.ReLU(inplace=True),
                         nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2))


class _Projection(nn.Module):
    """Identity when widths match, else BatchNorm + 1x1 conv (the residual shortcut)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.proj = (nn.Identity() if c_in == c_out else
                     nn.Sequential(nn.BatchNorm2d(c_in, momentum=0.05), nn.Conv2d(c_in, c_out, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class _ResUnit(nn.Module):
    """``x -> proj(x) + conv2(conv1(x + s1) + s2)``; ``s1, s2`` projected styles (decoder only)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, style_channels: int) -> None:
        super().__init__()
        self.proj = _Projection(c_in, c_out)
        self.conv1 = _preact(c_in, c_out, kernel_size)
        self.conv2 = _preact(c_out, c_out, kernel_size)
        self.style1 = nn.Linear(style_channels, c_in) if style_channels else None
        self.style2 = nn.Linear(style_channels, c_out) if style_channels else None

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        h = x if self.style1 is None else x + self.style1(style)[:, :, None, None]
        h = self.conv1(h)
        if self.style2 is not None:
            h = h + self.style2(style)[:, :, None, None]
        # conv2's output first: the sum takes its memory layout (channels-last when the weights
        # are), not that of a 1-channel input, whose layout torch cannot tell
        return self.conv2(h) + self.proj(x)


class _Level(nn.Module):
    """``blocks`` residual units, the first changing the width."""

    def __init__(self, c_in: int, c_out: int, *, blocks: int, kernel_size: int,
                 style_channels: int = 0) -> None:
        super().__init__()
        self.units = nn.ModuleList(
            _ResUnit(c_in if i == 0 else c_out, c_out, kernel_size, style_channels)
            for i in range(blocks))

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        for unit in self.units:
            x = unit(x, style)
        return x


class UNet(nn.Module):
    """Residual U-Net: ``forward(x (B, C, H, W) float32) -> NetOutput``.

    Any ``H, W`` is accepted: the input is padded (edge replication) to a multiple of
    ``config.size_multiple`` and the outputs cropped back.

    Parameters
    ----------
    config : ModelConfig
        Architecture (channels, classes, widths, residual units per level, skip mode, style).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config: expected a ModelConfig, got {type(config).__name__}")
        self.config = config
        w, k, b = config.widths, config.kernel_size, config.blocks
        style_ch = w[-1] if config.style else 0
        self.encoder = nn.ModuleList(
            _Level(config.in_channels if i == 0 else w[i - 1], w[i], blocks=b, kernel_size=k)
            for i in range(len(w)))
        self.bottom = _Level(w[-1], w[-1], blocks=b, kernel_size=k, style_channels=style_ch)
        merged = [w[i + 1] + (w[i] if config.skip == "concat" else 0) for i in range(len(w) - 1)]
        self.merge = nn.ModuleList(
            _preact(merged[i], w[i], k) if config.skip == "concat" else _preact(w[i + 1], w[i], k)
            for i in range(len(w) - 1))
        self.decoder = nn.ModuleList(
            _Level(w[i], w[i], blocks=b, kernel_size=k, style_channels=style_ch)
            for i in range(len(w) - 1))
        self.head = _preact(w[0], 3 + config.n_classes, 1)
        self.style_classes = (nn.Linear(style_ch, config.n_classes)
                              if style_ch and config.style_classes else None)

    def _style(self, deepest: torch.Tensor) -> torch.Tensor | None:
        if not self.config.style:
            return None
        return F.normalize(deepest.mean(dim=(2, 3)), dim=1, eps=1e-6)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded (edge replication) to a multiple of ``config.size_multiple``."""
        m = self.config.size_multiple
        pad_h, pad_w = -x.shape[-2] % m, -x.shape[-1] % m
        return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x

    def level_styles(self, x: torch.Tensor, levels: int = 1, spread: bool = False) -> torch.Tensor:
        """Style vectors of the deepest ``levels`` encoder levels of ``x`` (B, C, H, W), each
        the L2-normalised global mean of the level's features (and, with ``spread``, the
        L2-normalised global standard deviation after it), concatenated deepest last:
        ``(B, sum(widths[-levels:]) * (2 if spread else 1))``. ``levels=1`` without spread is
        the network's style vector (for any model, with or without ``config.style``). The
        encoder only: about half the cost of :meth:`forward`."""
        if not 1 <= levels <= len(self.encoder):
            raise ValueError(f"levels: expected 1..{len(self.encoder)}, got {levels!r}")
        self._check_input(x)
        x = self._pad(x)
        styles = []
        for i, level in enumerate(self.encoder):
            x = level(F.max_pool2d(x, 2) if i else x)
            if i >= len(self.encoder) - levels:
                styles.append(F.normalize(x.mean(dim=(2, 3)), dim=1, eps=1e-6))
                if spread:
                    styles.append(F.normalize(x.float().std(dim=(2, 3)), dim=1, eps=1e-6).to(x.dtype))
        return torch.cat(styles, dim=1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"x: expected shape (B, {self.config.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, *, class_grad: float = 1.0) -> NetOutput:
        """Run the network on ``x`` (B, C, H, W) float32; see :class:`NetOutput`.

        ``class_grad`` in [0, 1] scales the gradient that the class logits pass into the shared
        features and the style (and the head's BatchNorm); the outputs themselves do not depend on it.
        """
        self._check_input(x)
        h, w = x.shape[-2:]
        x = self._pad(x)
        skips = []
        for i, level in enumerate(self.encoder):
            x = level(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        style = self._style(x)
        x = self.bottom(x, style)
        for i in range(len(self.decoder) - 1, -1, -1):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            if self.config.skip == "concat":
                x = self.merge[i](torch.cat([x, skips[i]], dim=1))
            else:
                x = self.merge[i](x) + skips[i]
            x = self.decoder[i](x, style)
        return self._heads(x[..., :h, :w], style, class_grad)

    def _heads(self, x: torch.Tensor, style: torch.Tensor | None, class_grad: float) -> NetOutput:
        """The 1x1 head: rows 0-2 (flows, cellprob) on ``x``; rows 3: (classes) on ``x``, plus
        a linear function of ``style`` (``style_classes``), their gradient scaled by
        ``class_grad``."""
        norm, relu, conv = self.head
        features = relu(norm(x))
        maps = F.conv2d(features, conv.weight[:3], conv.bias[:3])
        features = _scale_grad(features, class_grad)
        logits = F.conv2d(features, conv.weight[3:], conv.bias[3:])
        if self.style_classes is not None:
            logits = logits + self.style_classes(_scale_grad(style, class_grad))[:, :, None, None]
        return NetOutput(flows=maps[:, :2], cellprob=maps[:, 2], class_logits=logits)


def _scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` whose gradient is multiplied by ``factor`` on the way back."""
    if factor == 1.0:
        return x
    if factor == 0.0:
        return x.detach()
    return factor * x + (1.0 - factor) * x.detach()
