"""Following flows: continuous Euler steps and the discrete successor graph.

This is the only module that converts between (dy, dx) flows and the (x, y) coordinate order
``torch.nn.functional.grid_sample`` wants.

Discrete following (what :func:`flowseg.flows.flows_to_labels` uses)
-------------------------------------------------------------------
Every foreground pixel ``p`` gets one successor: the 8-neighbour whose direction is closest in
angle to ``flows[:, p]``; if that neighbour is not foreground, the next closest of the two
directions 45 degrees either side (closest first); if none is foreground, or the flow is
shorter than ``min_flow``, ``p`` is its own successor (a sink). Pointer jumping
(``succ = succ[succ]``, k times) then gives every pixel the pixel it reaches after ``2**k``
steps, whole batch at once. Because each step moves to an 8-neighbour, every terminal cycle
is an 8-connected set of pixels, and the end points of all pixels cover each terminal cycle
completely; so the 8-connected components of the set of end points are the seeds.

Measured alternatives (synthetic round trips with noisy flows, see benchmarks/flows.py):
a few bilinear Euler steps before the discrete steps made results worse (bilinear sampling
mixes the flows of touching cells, so border pixels cross over), and merging end points
within 2-3 px merged small touching cells; neither is used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flowseg.flows._ops import put, take

__all__ = ["RING", "euler_steps", "pointer_jump", "successors"]

#: The 8 neighbour directions (dy, dx) in order of increasing angle atan2(dy, dx).
RING: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))


def _euler(tall: torch.Tensor, pos: torch.Tensor, top: torch.Tensor, *, height: int, niter: int,
           step: float) -> torch.Tensor:
    """Euler steps of points ``pos`` ((N, 2) (y, x)) in the images stacked in ``tall``.

    ``tall`` is (1, 2, B * height, W); point i lives in the image whose first row is
    ``top[i]`` and is clamped to it, so bilinear sampling never mixes two images.
    """
    rows, width = tall.shape[-2:]
    scale = torch.tensor([max(rows - 1, 1), max(width - 1, 1)], dtype=torch.float32, device=tall.device)
    low = torch.stack([top, torch.zeros_like(top)], dim=1)
    high = torch.stack([top + height - 1, torch.full_like(top, width - 1)], dim=1)
    for _ in range(niter):
        grid = (2 * pos / scale - 1).flip(-1)[None, :, None]               # (1, N, 1, 2) as (x, y)
        v = F.grid_sample(tall, grid, mode="bilinear", align_corners=True)  # (1, 2, N, 1)
        pos = torch.minimum(torch.maximum(pos + step * v[0, :, :, 0].T, low), high)
    return pos


def euler_steps(positions: torch.Tensor, flows: torch.Tensor, *, niter: int,
                step: float = 1.0) -> torch.Tensor:
    """Move points along bilinearly interpolated flows with forward Euler steps.

    Parameters
    ----------
    positions : (B, N, 2) tensor of float
        (y, x) pixel coordinates; pixel centres are integers.
    flows : (B, 2, H, W) tensor of float
        (dy, dx) in pixels per step, on the same device.
    niter : int
        Number of steps.
    step : float
        Step size multiplying the flow.

    Returns
    -------
    positions : (B, N, 2) tensor of float32
        After ``niter`` steps, clamped to the image. Sampling uses ``align_corners=True`` with
        coordinates normalised for it, so a constant flow ``v`` moves a point by exactly
        ``niter * step * v`` (until it reaches the border).
    """
    b, n = positions.shape[:2]
    h, w = flows.shape[-2:]
    tall = flows.float().permute(1, 0, 2, 3).reshape(1, 2, b * h, w)
    top = (torch.arange(b, device=flows.device) * h).repeat_interleave(n).float()
    pos = positions.float().reshape(-1, 2) + torch.stack([top, torch.zeros_like(top)], dim=1)
    pos = _euler(tall, pos, top, height=h, niter=niter, step=step)
    return (pos - torch.stack([top, torch.zeros_like(top)], dim=1)).reshape(b, n, 2)


def successors(flows: torch.Tensor, foreground: torch.Tensor, *,
               min_flow: float | torch.Tensor = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """One discrete flow step for every foreground pixel.

    Parameters
    ----------
    flows : (B, 2, H, W) tensor of float
        (dy, dx); only the direction matters.
    foreground : (B, H, W) tensor of bool
        Pixels that take part; steps never leave it.
    min_flow : float or (B,) tensor of float
        Pixels whose flow is shorter stay where they are (one value, or one per image).

    Returns
    -------
    pixels : (N,) tensor of int64
        Flat indices into ``B * H * W`` of the foreground pixels, ascending.
    succ : (N,) tensor of int64
        ``succ[i]`` is the position in ``pixels`` of pixel i's successor.
    """
    b, h, w = foreground.shape
    pixels = torch.nonzero(foreground.reshape(-1), as_tuple=True)[0]
    index = torch.full((b * h * w,), -1, dtype=torch.int64, device=pixels.device)
    put(index, pixels, torch.arange(pixels.numel(), device=pixels.device))
    image, yx = pixels // (h * w), pixels % (h * w)
    y, x = yx // w, yx % w
    fy = take(flows[:, 0].reshape(-1), pixels).double()
    fx = take(flows[:, 1].reshape(-1), pixels).double()
    sector = torch.atan2(fy, fx) / (math.pi / 4)
    nearest = torch.round(sector)
    side = torch.where(sector >= nearest, 1, -1).long()
    nearest = nearest.long()
    ring = torch.tensor(RING, dtype=torch.int64, device=pixels.device)
    succ = torch.arange(pixels.numel(), device=pixels.device)
    min_flow = torch.as_tensor(min_flow, dtype=torch.float64, device=pixels.device)
    if min_flow.ndim:
        min_flow = take(min_flow, image)
    chosen = torch.hypot(fy, fx) < min_flow
    for k in (nearest, nearest + side, nearest - side):
        d = ring[k % 8]
        ny, nx = y + d[:, 0], x + d[:, 1]
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        q = take(index, torch.where(inside, image * h * w + ny * w + nx, pixels))
        accept = ~chosen & inside & (q >= 0)
        succ = torch.where(accept, q, succ)
        chosen = chosen | accept
    return pixels, succ


def pointer_jump(succ: torch.Tensor, jumps: torch.Tensor | int) -> torch.Tensor:
    """Replace each successor by the pixel reached after ``2**jumps`` steps.

    Parameters
    ----------
    succ : (N,) tensor of int64
        Successor positions (a functional graph on 0..N-1).
    jumps : int or (N,) tensor of int64
        Number of doublings, per pixel (pixels of one image share one value).

    Returns
    -------
    end : (N,) tensor of int64
    """
    jumps = torch.as_tensor(jumps, device=succ.device).expand(succ.shape)
    if succ.numel() == 0:
        return succ
    low, high = int(jumps.min()), int(jumps.max())
    end = succ
    for j in range(high):
        end = take(end, end) if j < low else torch.where(jumps > j, take(end, end), end)
    return end
