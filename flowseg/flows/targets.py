"""Flow targets: labels -> unit flows that lead every pixel of a cell to one centre pixel.

Algorithm (default, the only one)
---------------------------------
1. Each cell's *centre* is its in-cell pixel nearest the cell's centroid (ties: lowest
   row-major index), as in Cellpose. A cell made of several 8-connected pieces (overlapping
   or noisy annotations) gets its centre in its largest piece; the other pieces get zero flow.
2. The geodesic distance ``d`` to that centre is computed for all cells of all images at once,
   as ONE multi-source shortest-path problem on the graph whose edges join 8-neighbours with
   the same (non-zero) label (weights 1 and sqrt(2)). Because no edge joins two cells, the
   distance of one cell never depends on the pixels of another (Cellpose issue #1486).
   CPU: Dial's bucket queue (unit-width buckets; every edge is >= 1 long, so a bucket's
   pixels are final when it is reached), compiled with numba, one cell after another (exact;
   the same distances as ``scipy.sparse.csgraph.dijkstra(min_only=True)``, tested). CUDA:
   min-plus relaxation over the 8 same-label neighbours until nothing changes (Bellman-Ford;
   same fixed point).
3. The potential is ``phi = d - BORDER_WEIGHT * e`` where ``e`` is the Euclidean distance to
   the cell's own border (``BORDER_WEIGHT = 0.7``). Because ``e`` is 1-Lipschitz and the
   weight is < 1, ``phi`` still strictly decreases along every shortest path, so the centre
   stays the only minimum; the border term tilts flows near cell borders inwards (like
   Cellpose's heat field, whose flows are normal to the border), which made the follower
   markedly more robust to noisy flows (benchmarks/flows.py ``--part noise``).
4. The flow is the normalised descent direction ``-grad phi``, the gradient being the least
   squares fit to the differences towards the *same-label* 8-neighbours only. Where that fit
   vanishes away from the centre (ridges where geodesic paths split), the direction to the
   lowest same-label neighbour is used instead. Finally each vector is turned, where needed,
   into the 45-degree sector of a same-label neighbour with smaller ``phi`` (a few degrees
   at most inside smooth regions; see ``_snap_to_downhill``), so that following the nearest
   8-neighbour direction descends inside the cell and labels -> flows -> labels is exact.

Why this instead of Cellpose's heat diffusion or Omnipose's distance field: the geodesic
field has exactly one sink per cell for any shape (thin processes and spindly cells included),
its cost grows with the number of pixels (one shortest-path solve for the batch), and it needs no
iteration-count tuning for big cells (heat diffusion needs ~cell-length^2 iterations before
the far end of an astrocyte process carries any signal). The field is smooth inside convex
parts (rays from the centre) and bends round concave corners, which a CNN can predict from
local context; an EDT field (Omnipose) has its sinks on the whole skeleton, which breaks
thin and spindly cells into pieces unless followed with extra clustering.
Measured round-trip, noise and speed numbers: ``benchmarks/flows.py``.

Two routes, the same bits (tested): the host route (CPU input, :func:`host_flows`) runs the
whole computation in compiled numba kernels (:mod:`flowseg.flows._kernels`) on the image grid
(same-label neighbours as bit masks, Dial's queue, an exact row-major Felzenszwalb EDT, the
per-pixel least squares and snapping); the torch route (other devices, or ``method="torch"``)
builds a :class:`PixelGraph` and uses tensor operations. The least-squares sums are added in
ring order in both (not a matmul, whose summation order depends on the BLAS kernel and the
batch size and used to flip exact ties between sectors).

Conventions: flows are float32 ``(2, H, W)`` in (dy, dx) order, unit length at every
in-cell pixel except the centre pixel of each cell (zero: the sink) and pieces of a cell
disconnected from its centre (zero), exactly zero outside cells. The output has the input's
kind: numpy in, numpy out; torch in, torch out (on ``device``, default the input's device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from flowseg.flows import _kernels, _ops
from flowseg.flows._kernels import SECTOR_LIMITS
from flowseg.flows._ops import put, take
from flowseg.flows.follow import RING

__all__ = ["PixelGraph", "component_centres", "descent_directions", "geodesic_distance",
           "host_distance", "host_flows", "labels_to_flows", "pixel_graph", "scatter_flows"]

#: The 8 neighbour offsets (dy, dx), in order of angle atan2(dy, dx): column k of a pixel
#: graph is the neighbour in 45-degree sector k, as in the follower.
OFFSETS: tuple[tuple[int, int], ...] = RING
_GRADIENT_EPS = 1e-6   # below this |grad d| the least-squares fit is treated as vanishing
_RIDGE = 1e-9          # Tikhonov term that keeps the 2x2 least-squares solve finite
_STEPS = np.hypot(*np.array(OFFSETS, dtype=np.float64).T)   # edge lengths 1 and sqrt(2)



@dataclass(frozen=True)
class _Batch:
    """Labels as an int64 (B, H, W) tensor plus how to hand the result back."""

    labels: torch.Tensor
    batched: bool
    as_numpy: bool


def _check_labels(labels, device) -> _Batch:
    if isinstance(labels, np.ndarray):
        as_numpy = True
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise TypeError(f"labels: expected an integer array, got dtype {labels.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64, copy=False))
    elif isinstance(labels, torch.Tensor):
        as_numpy = False
        if labels.dtype.is_floating_point or labels.dtype.is_complex:
            raise TypeError(f"labels: expected an integer tensor, got dtype {labels.dtype}")
        tensor = labels.long()
    else:
        raise TypeError(f"labels: expected a numpy array or torch tensor, got {type(labels).__name__}")
    if tensor.ndim not in (2, 3):
        raise ValueError(f"labels: expected shape (H, W) or (B, H, W), got {tuple(tensor.shape)}")
    if tensor.numel() and int(tensor.min()) < 0:
        raise ValueError(f"labels: expected values >= 0, got minimum {int(tensor.min())}")
    if device is not None:
        tensor = tensor.to(device)
    batched = tensor.ndim == 3
    return _Batch(tensor if batched else tensor[None], batched, as_numpy)


@dataclass(frozen=True)
class PixelGraph:
    """The in-cell pixels of a label batch and their same-label 8-neighbours.

    Attributes
    ----------
    shape : tuple of int
        ``(B, H, W)`` of the label batch.
    pixels : (N,) tensor of int64
        Flat indices (into ``B * H * W``) of the labelled pixels, ascending.
    neighbours : (N, 8) tensor of int64
        ``neighbours[i, k]`` is the position in ``pixels`` of the pixel at ``OFFSETS[k]`` from
        pixel ``i`` when it has the same label, else ``-1``. No entry ever joins two cells.
    cells : (N,) tensor of int64
        Cell id of each pixel, unique over the batch (``image * (max label + 1) + label``).
    """

    shape: tuple[int, int, int]
    pixels: torch.Tensor
    neighbours: torch.Tensor
    cells: torch.Tensor


def pixel_graph(labels: torch.Tensor) -> PixelGraph:
    """Build the same-label 8-neighbour graph of ``labels`` ((B, H, W) int64); cost ~ pixels."""
    b, h, w = labels.shape
    padded = torch.nn.functional.pad(labels, (1, 1, 1, 1)).reshape(-1)   # no bounds checks
    inner = torch.nonzero(padded, as_tuple=True)[0]
    index = torch.full_like(padded, -1)
    put(index, inner, torch.arange(inner.numel(), device=padded.device))
    own = take(padded, inner)
    columns = []
    for dy, dx in OFFSETS:
        q = inner + dy * (w + 2) + dx
        columns.append(torch.where(take(padded, q) == own, take(index, q), -1))
    image, rest = inner // ((h + 2) * (w + 2)), inner % ((h + 2) * (w + 2))
    pixels = image * (h * w) + (rest // (w + 2) - 1) * w + rest % (w + 2) - 1
    cells = image * (int(own.max()) + 1 if own.numel() else 1) + own
    return PixelGraph((b, h, w), pixels, torch.stack(columns, dim=1), cells)


def _gather(values: torch.Tensor, neighbours: torch.Tensor, fill: float) -> torch.Tensor:
    """``values[neighbours]`` with ``fill`` where the neighbour is missing (-1)."""
    return take(torch.cat([values, values.new_full((1,), fill)]), neighbours)


def _components_torch(graph: PixelGraph) -> torch.Tensor:
    """Connected components by min-label propagation (any device); ids are arbitrary."""
    comp = torch.arange(graph.pixels.numel(), device=graph.pixels.device)
    while True:
        new = torch.minimum(comp, _gather(comp, graph.neighbours, comp.numel()).amin(dim=1))
        new = new[new]   # pointer jumping: converge in ~log(diameter) rounds
        if torch.equal(new, comp):
            return comp
        comp = new


def _largest_pieces(graph: PixelGraph, comp: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) bool indexed by component id: the largest piece of its cell (ties: lowest id)."""
    size = torch.bincount(comp, minlength=n)[comp]
    n_cells = int(graph.cells.max()) + 1
    best = torch.zeros(n_cells, dtype=size.dtype, device=comp.device).scatter_reduce(
        0, graph.cells, size, reduce="amax")
    candidate = torch.where(size == best[graph.cells], comp, n)
    chosen = torch.full((n_cells,), n, dtype=torch.int64, device=comp.device).scatter_reduce(
        0, graph.cells, candidate, reduce="amin")
    keep = torch.zeros(n + 1, dtype=torch.bool, device=comp.device)
    keep[chosen[graph.cells]] = True
    return keep[:n]


def component_centres(graph: PixelGraph, comp: torch.Tensor | None = None) -> torch.Tensor:
    """Per cell, the position (in ``graph.pixels``) of its pixel nearest its centroid.

    Parameters
    ----------
    graph : PixelGraph
    comp : (N,) tensor of int64, optional
        Connected-component id of each pixel; then only each cell's largest piece is used.
        Default: every cell is taken as one piece (``graph.cells``).

    Ties go to the lowest flat index, so every back end picks the same pixel.
    """
    ids = graph.cells if comp is None else comp
    n = int(ids.max()) + 1
    h, w = graph.shape[1:]
    y = ((graph.pixels // w) % h).double()
    x = (graph.pixels % w).double()
    zeros = torch.zeros(n, dtype=torch.float64, device=ids.device)
    count = zeros.index_add(0, ids, torch.ones_like(y))
    cy = zeros.index_add(0, ids, y) / count
    cx = zeros.index_add(0, ids, x) / count
    d2 = (y - take(cy, ids)) ** 2 + (x - take(cx, ids)) ** 2
    best = torch.full_like(zeros, math.inf).scatter_reduce(0, ids, d2, reduce="amin")
    position = torch.arange(ids.numel(), device=ids.device)
    candidate = torch.where(d2 == take(best, ids), position, ids.numel())
    first = torch.full((n,), ids.numel(), dtype=torch.int64, device=ids.device).scatter_reduce(
        0, ids, candidate, reduce="amin")
    keep = first < ids.numel()
    if comp is not None:
        keep &= _largest_pieces(graph, comp, n)
    return first[keep]


def _relax(graph: PixelGraph, sources: torch.Tensor) -> torch.Tensor:
    """Min-plus relaxation (Bellman-Ford) over the same-label neighbours until nothing changes."""
    steps = torch.tensor(_STEPS, dtype=torch.float64, device=sources.device)
    dist = torch.full((graph.pixels.numel(),), math.inf, dtype=torch.float64, device=sources.device)
    dist[sources] = 0.0
    while True:
        new = torch.minimum(dist, (_gather(dist, graph.neighbours, math.inf) + steps).amin(dim=1))
        if torch.equal(new, dist):
            return dist
        dist = new


def host_distance(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Geodesic distance to each cell's centre on the host (numba kernels).

    Parameters
    ----------
    labels : (B, H, W) ndarray of int
        Taken as int64 (the kernels' one signature).

    Returns
    -------
    distance : (B * H * W,) ndarray of float64
        Flat; 0 at the centres, inf outside cells and in pieces disconnected from the centre.
    neighbours : (B * H * W,) ndarray of uint8
        Same-label neighbour bit masks (bit k: direction ``OFFSETS[k]``).
    """
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    nb, h, w = labels.shape
    nbr = _kernels.same_label_neighbours(labels)
    flat = labels.reshape(-1)
    top = int(flat.max()) + 1 if flat.size else 1
    centres = _kernels.centre_pixels(flat, top, nb * top, h, w)
    dist, reached = _kernels.dial_distance(nbr, centres[centres >= 0], w)
    if reached < np.count_nonzero(flat):   # some cell is in pieces: centre it in its largest piece
        pieces, k = _kernels.piece_ids(nbr, flat, w)
        centres = _kernels.centre_pixels(pieces, 0, k + 1, h, w)
        centres = centres[_kernels.largest_pieces(pieces, k, flat, top, h * w)]
        dist, _ = _kernels.dial_distance(nbr, centres, w)
    return dist, nbr


def host_flows(labels: np.ndarray) -> np.ndarray:
    """:func:`labels_to_flows` on the host: (B, H, W) int -> (B, 2, H, W) float32."""
    nb, h, w = labels.shape
    potential, nbr = host_distance(labels)
    _kernels.subtract_inner_edt(potential, nbr, nb, h, w, BORDER_WEIGHT)
    return _kernels.descent_flows(nbr, potential, nb, h, w)


def _distance_torch(graph: PixelGraph) -> torch.Tensor:
    dist = _relax(graph, component_centres(graph))
    if torch.isinf(dist).any():      # some cell is in pieces: centre it in its largest piece
        dist = _relax(graph, component_centres(graph, _components_torch(graph)))
    return dist


def _check_method(method: str) -> None:
    if method not in ("auto", "numba", "torch"):
        raise ValueError(f"method: expected 'auto', 'numba' or 'torch', got {method!r}")


def geodesic_distance(graph: PixelGraph, *, method: str = "auto") -> torch.Tensor:
    """Distance from each in-cell pixel to its cell's centre along paths inside the cell.

    A cell whose pixels are not 8-connected (overlapping or noisy annotations) gets its centre
    in its largest piece; the other pieces stay at ``inf`` and so get zero flow, as with
    Cellpose's heat diffusion: following such flows drops them instead of inventing cells.

    Parameters
    ----------
    graph : PixelGraph
        From :func:`pixel_graph`.
    method : {"auto", "numba", "torch"}
        ``"numba"``: compiled bucket-queue shortest paths (and union-find pieces when a cell
        is in pieces) on the host; ``"torch"``: propagation and min-plus relaxation on the
        graph's device; ``"auto"``: numba for CPU tensors (once compiled), torch otherwise.

    Returns
    -------
    distance : (N,) tensor of float64
        One value per ``graph.pixels`` entry, 0 at the centres; on the graph's device.
    """
    _check_method(method)
    if graph.pixels.numel() == 0:
        return torch.zeros(0, dtype=torch.float64, device=graph.pixels.device)
    if method == "auto":
        method = "numba" if _ops.kernel_route(graph.pixels) else "torch"
    if method == "torch":
        return _distance_torch(graph)
    grid = torch.zeros(math.prod(graph.shape), dtype=torch.int64)       # cells as labels
    put(grid, graph.pixels.cpu(), graph.cells.cpu() + 1)
    dist, _ = host_distance(grid.reshape(graph.shape).numpy())
    return take(torch.from_numpy(dist), graph.pixels.cpu()).to(graph.pixels.device)


#: Weight (< 1) of the distance-to-border term of the potential; see the module docstring.
BORDER_WEIGHT = 0.7


def border_distance(graph: PixelGraph) -> torch.Tensor:
    """Euclidean distance from each in-cell pixel to its cell's border (border pixels: 0).

    A border pixel has an 8-neighbour outside its cell (another cell, background or outside
    the image). Computed by ``scipy.ndimage.distance_transform_edt`` on the host, one call
    per image.

    Returns
    -------
    distance : (N,) tensor of float64, on the graph's device.
    """
    inner = ~(graph.neighbours < 0).any(dim=1)
    mask = torch.zeros(graph.shape, dtype=torch.bool).reshape(-1)
    put(mask, graph.pixels.cpu(), inner.cpu())
    mask = mask.reshape(graph.shape).numpy()
    edt = np.stack([ndimage.distance_transform_edt(image) for image in mask])
    return take(torch.from_numpy(edt.reshape(-1)), graph.pixels.cpu()).to(graph.pixels.device)


def _normal_equations(valid: torch.Tensor, diff: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Least-squares sums over the valid neighbours, added in ring order (not a matmul, whose
    summation order depends on the BLAS kernel and the batch size), so that every route and
    batch gives the same bits: ``ayy, axx, axy`` (+ ridge) and ``by, bx``."""
    sums = [torch.zeros(diff.shape[0], dtype=torch.float64, device=diff.device) for _ in range(5)]
    v, f = valid.double(), torch.where(valid, diff, 0.0)
    for k, (dy, dx) in enumerate(OFFSETS):
        for i, (col, weight) in enumerate([(v, dy * dy), (v, dx * dx), (v, dy * dx), (f, dy), (f, dx)]):
            sums[i] = sums[i] + col[:, k] * float(weight)
    ayy, axx, axy, by, bx = sums
    return ayy + _RIDGE, axx + _RIDGE, axy, by, bx


def descent_directions(graph: PixelGraph, dist: torch.Tensor) -> torch.Tensor:
    """Unit vectors along ``-grad dist`` from same-label neighbours only.

    The gradient is the least-squares plane through the differences to the same-label
    8-neighbours; where it vanishes away from a centre, the direction of the steepest
    same-label neighbour is used. Centres (and unreached pieces) get 0.

    Returns
    -------
    directions : (N, 2) tensor of float64
        (dy, dx) per ``graph.pixels`` entry.
    """
    offsets = torch.tensor(OFFSETS, dtype=torch.float64, device=dist.device)     # (8, 2)
    diff = _gather(dist, graph.neighbours, math.inf) - dist[:, None]             # inf: no neighbour
    downhill = diff < 0
    ayy, axx, axy, by, bx = _normal_equations(graph.neighbours >= 0, diff)
    vec = torch.stack([axy * bx - axx * by, axy * by - ayy * bx], dim=1)       # -grad * det
    vec = vec / (ayy * axx - axy * axy)[:, None]
    flat = torch.nonzero(vec.norm(dim=1) <= _GRADIENT_EPS, as_tuple=True)[0]
    if flat.numel():
        drop = -diff[flat] / offsets.norm(dim=1)
        vec[flat] = offsets[drop.argmax(dim=1)]
    return _snap_to_downhill(vec, downhill)


def _sector_limit(downhill: torch.Tensor, ring: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Largest allowed angle (radians) from ring direction ``ring`` towards ``side`` (+-1)."""
    beside = downhill.gather(1, ((ring + side) % 8)[:, None])[:, 0]
    return torch.where(beside, SECTOR_LIMITS[0], SECTOR_LIMITS[1])


def _snap_to_downhill(vec: torch.Tensor, downhill: torch.Tensor) -> torch.Tensor:
    """Unit vectors whose nearest 8-neighbour direction is a downhill same-label neighbour.

    A vector whose nearest direction (45-degree sector) is not downhill is turned into the
    sector of the downhill neighbour closest in angle. Every vector is then kept at least
    ``_SNAP_MARGIN`` degrees away from a sector boundary beyond which the neighbour is *not*
    downhill (another cell, background, uphill), and ``_TIE_MARGIN`` degrees from the other
    boundaries (margins: ``flowseg.flows._kernels.SECTOR_LIMITS``). Inside cells this changes nothing but exact ties; near borders it keeps the
    discrete follower, and noisy predictions of these targets, from stepping out of the cell.
    It guarantees that following the nearest direction strictly descends the potential inside
    the cell, so labels -> flows -> labels is exact. Vectors without a downhill neighbour
    (the centres) become 0.
    """
    theta = torch.atan2(vec[:, 0], vec[:, 1])
    sector = theta / (math.pi / 4)
    nearest = torch.round(sector)
    side = torch.where(sector >= nearest, 1, -1)
    ring = nearest.long() % 8
    limit = _sector_limit(downhill, ring, side)
    ok = downhill.gather(1, ring[:, None])[:, 0] & ((sector - nearest).abs() * (math.pi / 4) <= limit)
    fix = torch.nonzero(~ok, as_tuple=True)[0]
    alpha = torch.arange(8, device=vec.device, dtype=vec.dtype) * (math.pi / 4)
    delta = torch.remainder(theta[fix, None] - alpha + math.pi, 2 * math.pi) - math.pi     # (M, 8)
    k = torch.where(downhill[fix], delta.abs(), math.inf).argmin(dim=1)
    delta = delta.gather(1, k[:, None])[:, 0]
    limit = _sector_limit(downhill[fix], k, torch.where(delta >= 0, 1, -1))
    theta[fix] = alpha[k] + torch.maximum(torch.minimum(delta, limit), -limit)
    out = torch.stack([torch.sin(theta), torch.cos(theta)], dim=1)
    return torch.where(downhill.any(dim=1, keepdim=True), out, 0.0)


def scatter_flows(flows: torch.Tensor, graph: PixelGraph, directions: torch.Tensor) -> None:
    """Write per-pixel ``directions`` ((N, 2)) into ``flows`` ((B, 2, H, W), zeros) in place."""
    b, h, w = graph.shape
    image, yx = graph.pixels // (h * w), graph.pixels % (h * w)
    base = image * (2 * h * w) + yx
    flat = flows.view(-1)
    put(flat, base, directions[:, 0].to(flows.dtype))
    put(flat, base + h * w, directions[:, 1].to(flows.dtype))


def _torch_flows(labels: torch.Tensor) -> torch.Tensor:
    """The torch route of :func:`labels_to_flows`: (B, H, W) int64 -> (B, 2, H, W) float32."""
    graph = pixel_graph(labels)
    potential = geodesic_distance(graph, method="torch") - BORDER_WEIGHT * border_distance(graph)
    directions = descent_directions(graph, potential)
    flows = torch.zeros((labels.shape[0], 2, *labels.shape[1:]), dtype=torch.float32, device=labels.device)
    scatter_flows(flows, graph, directions)
    return flows


def labels_to_flows(labels, *, device=None, method: str = "auto"):
    """Unit flow targets pointing, inside each cell, along the shortest in-cell path to its centre.

    Parameters
    ----------
    labels : (H, W) or (B, H, W) ndarray or tensor of int
        Instance labels, 0 = background; ids need not be consecutive. All cells of all images
        are handled in one computation.
    device : str or torch.device, optional
        Where to compute. Default: the tensor's device (numpy input: CPU).
    method : {"auto", "numba", "torch"}
        ``"numba"``: compiled kernels on the host (:func:`host_flows`); ``"torch"``: tensor
        operations on ``device`` (graph, min-plus relaxation, least squares); ``"auto"``:
        numba for CPU input, torch otherwise (and on the CPU while the kernels compile in the
        background, see :mod:`flowseg.flows._warmup`). Both give the same flows (tested).

    Returns
    -------
    flows : (2, H, W) or (B, 2, H, W) ndarray or tensor of float32
        (dy, dx); unit length at in-cell pixels except each cell's centre and the pixels of
        pieces disconnected from it (0); 0 outside cells.
        Same kind as ``labels`` (numpy -> numpy on the host; torch -> torch on ``device``).
    """
    _check_method(method)
    batch = _check_labels(labels, device)
    if method == "numba" or (method == "auto" and _ops.kernel_route(batch.labels)):
        flows = torch.from_numpy(host_flows(batch.labels.cpu().numpy())).to(batch.labels.device)
    else:
        flows = _torch_flows(batch.labels)
    if not batch.batched:
        flows = flows[0]
    return flows.cpu().numpy() if batch.as_numpy else flows
