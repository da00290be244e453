"""Overlapping tiles: split images into equal-size tiles for batched inference, blend them back.

All images, whatever their size, become tiles of one size ``(tile, tile)``, so tiles of different
images share one network batch. Images smaller than a tile are padded (reflect, or constant when
too small to reflect) up to the tile size. Tile outputs are stitched with a separable weight that
falls off towards the tile edges, so each output pixel is dominated by the tiles in which it lies
far from the border (where the network sees the most context).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["TileGrid", "tile_grid", "split_tiles", "stitch_tiles", "blend_weight"]


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image lie.

    Attributes
    ----------
    shape : (int, int)
        The image's (H, W).
    padded_shape : (int, int)
        (H, W) after padding up to at least one tile.
    tile : int
        Tile side in pixels.
    starts : tuple of (int, int)
        Top-left corner of each tile in padded coordinates, row-major order.
    """

    shape: tuple[int, int]
    padded_shape: tuple[int, int]
    tile: int
    starts: tuple[tuple[int, int], ...]


def _starts_1d(size: int, tile: int, overlap: float, align: int) -> list[int]:
    """Tile starts along one axis of ``size >= tile`` pixels: first at 0, last at size - tile,
    all multiples of ``align`` (``size`` and ``tile`` are)."""
    if size <= tile:
        return [0]
    step = max(align, int(round(tile * (1.0 - overlap))))
    n = int(np.ceil((size - tile) / step)) + 1
    return sorted({int(round(s / align)) * align for s in np.linspace(0, size - tile, n)})


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tile_grid(shape: tuple[int, int], *, tile: int, overlap: float = 0.1, align: int = 1) -> TileGrid:
    """Plan the tiles of an image of ``shape`` (H, W).

    Parameters
    ----------
    shape : (int, int)
        Image height and width.
    tile : int
        Tile side (pixels), > 0.
    overlap : float
        Minimum fraction of a tile shared with its neighbour, in [0, 0.5].
    align : int
        Tile starts (and ``tile``) are multiples of ``align``: with a network's total pooling
        stride here, every tile sees the pooling grid the whole image would, so tiled and
        whole-image outputs agree away from tile borders.
    """
    if tile <= 0:
        raise ValueError(f"tile: expected a positive int, got {tile}")
    if not 0.0 <= overlap <= 0.5:
        raise ValueError(f"overlap: expected a fraction in [0, 0.5], got {overlap}")
    if align < 1 or tile % align:
        raise ValueError(f"align: expected a positive divisor of tile={tile}, got {align}")
    h, w = shape
    ph, pw = _round_up(max(h, tile), align), _round_up(max(w, tile), align)
    starts = tuple((y, x) for y in _starts_1d(ph, tile, overlap, align)
                   for x in _starts_1d(pw, tile, overlap, align))
    return TileGrid(shape=(h, w), padded_shape=(ph, pw), tile=tile, starts=starts)


def _pad_to(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Pad a (C, H, W) tensor at the bottom/right up to ``shape``."""
    dh, dw = shape[0] - image.shape[-2], shape[1] - image.shape[-1]
    if dh == 0 and dw == 0:
        return image
    reflect_ok = dh < image.shape[-2] and dw < image.shape[-1]
    mode = "reflect" if reflect_ok else "constant"
    return F.pad(image[None], (0, dw, 0, dh), mode=mode)[0]


def split_tiles(image: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """Cut a (C, H, W) image into tiles (n_tiles, C, tile, tile) following ``grid``."""
    padded = _pad_to(image, grid.padded_shape)
    t = grid.tile
    return torch.stack([padded[:, y:y + t, x:x + t] for y, x in grid.starts])


def blend_weight(tile: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """(tile, tile) float32 weight: 1 in the middle, tapering (cosine) to small values at edges."""
    ramp = max(1, tile // 8)
    w = torch.ones(tile, dtype=torch.float32, device=device)
    edge = 0.5 - 0.5 * torch.cos(torch.linspace(0, torch.pi, ramp + 2, device=device)[1:-1])
    w[:ramp] = edge
    w[tile - ramp:] = edge.flip(0)
    return w[:, None] * w[None, :]


def stitch_tiles(tiles: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """Blend per-tile outputs (n_tiles, C, tile, tile) into one (C, H, W) map for ``grid``'s image."""
    n, c, t, _ = tiles.shape
    if n != len(grid.starts) or t != grid.tile:
        raise ValueError(f"tiles: expected ({len(grid.starts)}, C, {grid.tile}, {grid.tile}) "
                         f"for this grid, got {tuple(tiles.shape)}")
    weight = blend_weight(t, device=tiles.device)
    out = tiles.new_zeros((c, *grid.padded_shape))
    norm = tiles.new_zeros(grid.padded_shape)
    for k, (y, x) in enumerate(grid.starts):
        out[:, y:y + t, x:x + t] += tiles[k] * weight
        norm[y:y + t, x:x + t] += weight
    h, w = grid.shape
    return out[:, :h, :w] / norm[:h, :w]
