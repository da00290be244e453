"""Gather/scatter helpers: numpy on CPU (torch's CPU advanced indexing is ~10-25x slower for
the large, mostly local index arrays used here), plain torch indexing on other devices.

:func:`host_path` is the single switch between the CPU route (numba kernels of
:mod:`flowseg.flows._kernels`, scipy labelling) and the device route (torch only); tests flip
it to run the device route on CPU and compare the two. :func:`kernel_route` adds the one
exception: while the kernels are not compiled yet (:mod:`flowseg.flows._warmup`), CPU input
takes the torch route too.
"""

from __future__ import annotations

import numpy as np
import torch

from flowseg.flows import _warmup

__all__ = ["host_path", "kernel_route", "put", "take"]


def host_path(tensor: torch.Tensor) -> bool:
    """True when ``tensor`` should take the CPU route (numpy / scipy)."""
    return tensor.device.type == "cpu"


def kernel_route(tensor: torch.Tensor) -> bool:
    """True when ``tensor`` takes the CPU route and its numba kernels can run now; False: the
    torch route (other devices, or CPU while the kernels compile in the background)."""
    return host_path(tensor) and _warmup.use_kernels()


def take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` for a 1-D ``values`` and an integer ``index`` of any shape.

    Negative indices count from the end, as in numpy and torch (``-1``: a sentinel appended
    last). The result is on ``values.device``; on the CPU route it shares numpy's memory.
    """
    if host_path(values):
        return torch.from_numpy(np.take(values.numpy(), index.numpy()))
    return values[index]


def put(target: torch.Tensor, index: torch.Tensor, values: torch.Tensor | float) -> None:
    """``target[index] = values`` in place, for a 1-D contiguous ``target``."""
    if host_path(target):
        source = values.numpy() if isinstance(values, torch.Tensor) else values
        target.numpy()[index.numpy()] = source
    else:
        target[index] = values
