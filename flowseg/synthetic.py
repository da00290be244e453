"""Seeded synthetic cell images with exact instance labels, for tests and tiny training runs.

Three morphologies, loosely modelled on the Sartorius cell types:

``"round"``
    Small round / oval cells (radius ~4-9 px), some touching (cort-like).
``"irregular"``
    A few large irregular bodies with long thin curved processes, 2-4 px wide (astro-like).
``"spindly"``
    Hundreds of thin elongated, slightly curved, densely packed touching cells (shsy5y-like).

Images are rendered like phase contrast: a slowly varying background, cell bodies offset
from it by a per-cell amount, a bright halo outside each cell, dark lines where cells meet,
blur and noise. Everything is deterministic for a given ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_label
from skimage.segmentation import find_boundaries

from flowseg.flows.masks import fill_holes

__all__ = ["KINDS", "keep_largest_pieces", "make_synthetic", "render_phase_contrast", "synthetic_labels"]

KINDS = ("round", "irregular", "spindly")
_MIN_AREA = 30   # painted pieces smaller than this are dropped (default min_size is 15)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    return kind


def _check_shape(shape) -> tuple[int, int]:
    if (len(shape) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in shape)
            or min(shape) < 32):
        raise ValueError(f"shape: expected two ints >= 32, got {shape!r}")
    return int(shape[0]), int(shape[1])


def _fourier_radius(rng: np.random.Generator, r0: float, amplitude: float) -> Callable:
    """Random smooth closed outline r(theta) = r0 (1 + sum_k a_k cos(k theta + phi_k))."""
    k = np.arange(2, 6)
    a = rng.uniform(0, amplitude, k.size) / k
    phi = rng.uniform(0, 2 * np.pi, k.size)
    return lambda theta: r0 * (1 + (a * np.cos(k * theta[..., None] + phi)).sum(-1))


def _blob(rng, center, r0, amplitude, shape) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (ys, xs) of a random star-shaped blob."""
    radius = _fourier_radius(rng, r0, amplitude)
    reach = int(np.ceil(r0 * (1 + amplitude))) + 1
    cy, cx = center
    ys, xs = np.mgrid[max(0, int(cy) - reach):min(shape[0], int(cy) + reach + 1),
                      max(0, int(cx) - reach):min(shape[1], int(cx) + reach + 1)]
    dy, dx = ys - cy, xs - cx
    inside = np.hypot(dy, dx) <= radius(np.arctan2(dy, dx))
    return ys[inside], xs[inside]


def _process(rng, start, heading, length, half_width, shape) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of a curved thin process: discs along a smooth random walk."""
    turns = np.cumsum(rng.normal(0, 0.12, int(length)))
    angles = heading + turns
    path = np.asarray(start, float) + np.cumsum(np.stack([np.sin(angles), np.cos(angles)], 1), 0)
    taper = half_width * np.linspace(1.0, 0.6, len(path))
    reach = int(np.ceil(half_width)) + 1
    oy, ox = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    ys = np.rint(path[:, :1, None] + oy).astype(int)
    xs = np.rint(path[:, 1:, None] + ox).astype(int)
    keep = (np.hypot(ys - path[:, :1, None], xs - path[:, 1:, None]) <= taper[:, None, None]) & (
        ys >= 0) & (ys < shape[0]) & (xs >= 0) & (xs < shape[1])
    return ys[keep], xs[keep]


def _spindle(rng, center, length, half_width, shape) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of a thin, slightly curved spindle."""
    theta = rng.uniform(0, np.pi)
    bend = rng.normal(0, 0.6) / length
    reach = int(length / 2 + half_width) + 1
    cy, cx = center
    ys, xs = np.mgrid[max(0, int(cy) - reach):min(shape[0], int(cy) + reach + 1),
                      max(0, int(cx) - reach):min(shape[1], int(cx) + reach + 1)]
    u = (ys - cy) * np.sin(theta) + (xs - cx) * np.cos(theta)
    v = (ys - cy) * np.cos(theta) - (xs - cx) * np.sin(theta) - bend * u ** 2
    t = np.clip(2 * u / length, -1, 1)
    inside = (np.abs(2 * u) <= length) & (np.abs(v) <= half_width * np.sqrt(1 - t ** 2) + 0.5)
    return ys[inside], xs[inside]


def _default_count(kind: str, shape: tuple[int, int]) -> int:
    """Number of cells painted by default: fills ~10% (irregular) to ~50% of the image."""
    area = shape[0] * shape[1]
    return {"round": int(area / 220), "irregular": max(2, int(area / 9000)), "spindly": int(area / 140)}[kind]


def _cells(kind: str, rng: np.random.Generator, shape: tuple[int, int], count: int):
    """Yield pixel coordinates of ``count`` candidate cells, in painting order."""
    if kind == "round":
        for _ in range(count):
            center = rng.uniform(0, shape)
            yield _blob(rng, center, rng.uniform(4, 9), 0.25, shape)
    elif kind == "irregular":
        for _ in range(count):
            center = rng.uniform(0, shape)
            r0 = rng.uniform(9, 16)
            ys, xs = _blob(rng, center, r0, 0.4, shape)
            parts_y, parts_x = [ys], [xs]
            for heading in rng.uniform(0, 2 * np.pi, rng.integers(2, 6)):
                start = center + 0.8 * r0 * np.array([np.sin(heading), np.cos(heading)])
                py, px = _process(rng, start, heading, rng.uniform(25, 70), rng.uniform(1.0, 2.0), shape)
                parts_y.append(py)
                parts_x.append(px)
            yield np.concatenate(parts_y), np.concatenate(parts_x)
    else:
        for _ in range(count):
            center = rng.uniform(0, shape)
            yield _spindle(rng, center, rng.uniform(14, 40), rng.uniform(1.5, 3.5), shape)


def keep_largest_pieces(labels: np.ndarray, *, min_area: int = 0) -> np.ndarray:
    """Keep, per label, only its largest 8-connected piece, if it has >= ``min_area`` pixels.

    Parameters
    ----------
    labels : (H, W) ndarray of int
    min_area : int

    Returns
    -------
    labels : (H, W) ndarray of int32
        Renumbered 1..N in raster order of the pieces. This is what a flow round trip can give
        back: flows lead each piece to its own sink, and flowseg's targets give every piece
        but the largest zero flow.
    """
    pieces = connected_label(labels, background=0, connectivity=2)
    size = np.bincount(pieces.ravel())
    owner = np.zeros(size.size, dtype=np.int64)
    owner[pieces.ravel()] = labels.ravel()
    ids = np.arange(1, size.size)
    order = np.lexsort((-size[ids], owner[ids]))
    first = np.ones(order.size, bool)
    first[1:] = owner[ids][order][1:] != owner[ids][order][:-1]
    keep = np.zeros(size.size, bool)
    keep[ids[order][first]] = True
    keep &= size >= min_area
    keep[0] = False
    new_id = np.zeros(size.size, dtype=np.int32)
    new_id[keep] = np.arange(1, keep.sum() + 1)
    return new_id[pieces]


def synthetic_labels(kind: str, *, shape: tuple[int, int] = (256, 256), seed: int = 0,
                     n_cells: int | None = None) -> np.ndarray:
    """Random instance labels of one morphology.

    Parameters
    ----------
    kind : {"round", "irregular", "spindly"}
    shape : (int, int)
        Image size (H, W), each >= 32.
    seed : int
        Seed of the random generator; equal seeds give equal labels.
    n_cells : int, optional
        Number of cells painted (fewer survive where later cells are hidden by earlier
        ones). Default: a density typical of the morphology.

    Returns
    -------
    labels : (H, W) ndarray of int32
        0 = background, 1..N, each cell one 8-connected piece of >= 30 pixels without holes
        enclosed by it alone; cells may touch.
    """
    kind, shape = _check_kind(kind), _check_shape(shape)
    if n_cells is None:
        n_cells = _default_count(kind, shape)
    elif isinstance(n_cells, bool) or not isinstance(n_cells, (int, np.integer)) or n_cells < 0:
        raise ValueError(f"n_cells: expected an int >= 0 or None, got {n_cells!r}")
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.int32)
    for i, (ys, xs) in enumerate(_cells(kind, rng, shape, int(n_cells)), start=1):
        free = labels[ys, xs] == 0     # earlier cells stay on top
        labels[ys[free], xs[free]] = i
    return fill_holes(keep_largest_pieces(labels, min_area=_MIN_AREA)[None])[0]


def render_phase_contrast(labels: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """A phase-contrast-like rendering of ``labels``.

    Parameters
    ----------
    labels : (H, W) ndarray of int
    seed : int

    Returns
    -------
    image : (H, W) ndarray of float32
        Roughly in [0, 1]: background ~0.5, cells offset per cell, bright halos, dark borders.
    """
    rng = np.random.default_rng(seed)
    h, w = labels.shape
    fg = (labels > 0).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    background = 0.5 + 0.05 * np.sin(2 * np.pi * (yy * rng.uniform(0.3, 1) + xx * rng.uniform(0.3, 1)))
    offset = rng.uniform(-0.18, -0.06, labels.max() + 1) * rng.choice([-1, 1])
    offset[0] = 0
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 2) * 0.15 * fg
    halo = np.clip(ndimage.gaussian_filter(fg, 2.0) - fg, 0, None) * 0.8
    borders = find_boundaries(labels, mode="inner").astype(np.float32) * 0.12
    image = background + offset[labels] + texture + halo - borders
    image = ndimage.gaussian_filter(image, 0.7) + rng.normal(0, 0.02, (h, w))
    return image.astype(np.float32)


def make_synthetic(kind: str, *, shape: tuple[int, int] = (256, 256), seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A seeded synthetic phase-contrast-like image with its instance labels.

    Parameters
    ----------
    kind : {"round", "irregular", "spindly"}
        Cell morphology, see the module docstring.
    shape : (int, int)
        Image size (H, W), each >= 32.
    seed : int
        Equal seeds give equal outputs.

    Returns
    -------
    image : (H, W) ndarray of float32
    labels : (H, W) ndarray of int32
    """
    labels = synthetic_labels(kind, shape=shape, seed=seed)
    return render_phase_contrast(labels, seed=seed + 1), labels
