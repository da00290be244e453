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
   CPU: Dial's bucket queue, each unit-width distance bucket settled by one vectorised numpy
   relaxation (exact; the same distances as ``scipy.sparse.csgraph.dijkstra(min_only=True)``
   at about half its time). CUDA: min-plus relaxation over the 8 same-label neighbours until
   nothing changes (Bellman-Ford; same fixed point).
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
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from flowseg.flows import _ops
from flowseg.flows._ops import put, take
from flowseg.flows.follow import RING

__all__ = ["PixelGraph", "component_centres", "descent_directions", "geodesic_distance",
           "labels_to_flows", "pixel_graph", "scatter_flows"]

#: The 8 neighbour offsets (dy, dx), in order of angle atan2(dy, dx): column k of a pixel
#: graph is the neighbour in 45-degree sector k, as in the follower.
OFFSETS: tuple[tuple[int, int], ...] = RING
_GRADIENT_EPS = 1e-6   # below this |grad d| the least-squares fit is treated as vanishing
_RIDGE = 1e-9          # Tikhonov term that keeps the 2x2 least-squares solve finite
_TIE_MARGIN = 2.0      # degrees kept from a sector boundary shared with another downhill step
_SNAP_MARGIN = 15.0    # degrees kept from a sector boundary that leads out of the cell / uphill
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


def _csr(graph: PixelGraph) -> csr_matrix:
    """The symmetric weighted adjacency matrix, built directly in CSR form (no sorting)."""
    nbr = graph.neighbours.cpu().numpy()
    keep = nbr >= 0
    indptr = np.zeros(nbr.shape[0] + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    weights = np.broadcast_to(_STEPS, nbr.shape)[keep]
    return csr_matrix((weights, nbr[keep], indptr), shape=(nbr.shape[0],) * 2)


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


def _buckets(graph: PixelGraph, sources: torch.Tensor) -> torch.Tensor:
    """Exact shortest paths by Dial's bucket queue, vectorised over each unit-width bucket.

    All edge weights (1, sqrt 2) are >= the bucket width 1, so the pixels of bucket k can
    never improve one another: each bucket is settled in one vectorised relaxation of its
    pixels' 8 neighbours. Python work grows with the largest distance, numpy work with the
    number of pixels. Same distances as ``scipy.sparse.csgraph.dijkstra`` (tested) at about
    half its time on dense images, and no sparse matrix to build.
    """
    nbr = graph.neighbours.cpu().numpy()
    dist = np.full(nbr.shape[0], np.inf)
    start = sources.cpu().numpy()
    dist[start] = 0.0
    buckets, k = {0: [start]}, 0
    while buckets:
        parts = buckets.pop(k, [])
        front = np.concatenate(parts) if parts else start[:0]
        front = np.unique(front[dist[front] < k + 1])           # drop stale (improved) entries
        if front.size:
            reach = nbr[front]
            cand = dist[front][:, None] + _STEPS
            keep = reach >= 0
            reach, cand = reach[keep], cand[keep]
            better = cand < dist[reach]
            reach, cand = reach[better], cand[better]
            np.minimum.at(dist, reach, cand)
            bucket = dist[reach].astype(np.int64)
            for later in (k + 1, k + 2):                          # steps are < 2 long
                moved = reach[bucket == later]
                if moved.size:
                    buckets.setdefault(later, []).append(moved)
        k += 1
    return torch.from_numpy(dist).to(graph.pixels.device)


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


def _distance_numpy(graph: PixelGraph) -> torch.Tensor:
    dist = _buckets(graph, component_centres(graph))
    if torch.isinf(dist).any():      # some cell is in pieces: centre it in its largest piece
        _, comp = connected_components(_csr(graph), directed=True, connection="weak")
        comp = torch.from_numpy(comp.astype(np.int64)).to(graph.pixels.device)
        dist = _buckets(graph, component_centres(graph, comp))
    return dist


def _distance_torch(graph: PixelGraph) -> torch.Tensor:
    dist = _relax(graph, component_centres(graph))
    if torch.isinf(dist).any():      # some cell is in pieces: centre it in its largest piece
        dist = _relax(graph, component_centres(graph, _components_torch(graph)))
    return dist


def geodesic_distance(graph: PixelGraph, *, method: str = "auto") -> torch.Tensor:
    """Distance from each in-cell pixel to its cell's centre along paths inside the cell.

    A cell whose pixels are not 8-connected (overlapping or noisy annotations) gets its centre
    in its largest piece; the other pieces stay at ``inf`` and so get zero flow, as with
    Cellpose's heat diffusion: following such flows drops them instead of inventing cells.

    Parameters
    ----------
    graph : PixelGraph
        From :func:`pixel_graph`.
    method : {"auto", "numpy", "torch"}
        ``"numpy"``: bucket-queue shortest paths (and scipy connected components when a cell
        is in pieces) on the host; ``"torch"``: propagation and min-plus relaxation on the
        graph's device; ``"auto"``: numpy for CPU tensors, torch otherwise.

    Returns
    -------
    distance : (N,) tensor of float64
        One value per ``graph.pixels`` entry, 0 at the centres; on the graph's device.
    """
    if method not in ("auto", "numpy", "torch"):
        raise ValueError(f"method: expected 'auto', 'numpy' or 'torch', got {method!r}")
    if graph.pixels.numel() == 0:
        return torch.zeros(0, dtype=torch.float64, device=graph.pixels.device)
    if method == "auto":
        method = "numpy" if _ops.host_path(graph.pixels) else "torch"
    return (_distance_numpy if method == "numpy" else _distance_torch)(graph)


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
    valid = (graph.neighbours >= 0).double()
    finite = torch.where(valid > 0, diff, 0.0)
    ayy = valid @ offsets[:, 0] ** 2 + _RIDGE
    axx = valid @ offsets[:, 1] ** 2 + _RIDGE
    axy = valid @ (offsets[:, 0] * offsets[:, 1])
    by, bx = finite @ offsets[:, 0], finite @ offsets[:, 1]
    vec = torch.stack([axy * bx - axx * by, axy * by - ayy * bx], dim=1)       # -grad * det
    vec = vec / (ayy * axx - axy * axy)[:, None]
    flat = torch.nonzero(vec.norm(dim=1) <= _GRADIENT_EPS, as_tuple=True)[0]
    if flat.numel():
        drop = -diff[flat] / offsets.norm(dim=1)
        vec[flat] = offsets[drop.argmax(dim=1)]
    return _snap_to_downhill(vec, downhill, offsets)


def _sector_limit(downhill: torch.Tensor, ring: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Largest allowed angle (radians) from ring direction ``ring`` towards ``side`` (+-1)."""
    beside = downhill.gather(1, ((ring + side) % 8)[:, None])[:, 0]
    return torch.where(beside, math.pi / 8 - math.radians(_TIE_MARGIN),
                       math.pi / 8 - math.radians(_SNAP_MARGIN))


def _snap_to_downhill(vec: torch.Tensor, downhill: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Unit vectors whose nearest 8-neighbour direction is a downhill same-label neighbour.

    A vector whose nearest direction (45-degree sector) is not downhill is turned into the
    sector of the downhill neighbour closest in angle. Every vector is then kept at least
    ``_SNAP_MARGIN`` degrees away from a sector boundary beyond which the neighbour is *not*
    downhill (another cell, background, uphill), and ``_TIE_MARGIN`` degrees from the other
    boundaries. Inside cells this changes nothing but exact ties; near borders it keeps the
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


def labels_to_flows(labels, *, device=None, method: str = "auto"):
    """Unit flow targets pointing, inside each cell, along the shortest in-cell path to its centre.

    Parameters
    ----------
    labels : (H, W) or (B, H, W) ndarray or tensor of int
        Instance labels, 0 = background; ids need not be consecutive. All cells of all images
        are handled in one computation.
    device : str or torch.device, optional
        Where to compute. Default: the tensor's device (numpy input: CPU).
    method : {"auto", "numpy", "torch"}
        Shortest-path back end, see :func:`geodesic_distance`; both give the same flows.

    Returns
    -------
    flows : (2, H, W) or (B, 2, H, W) ndarray or tensor of float32
        (dy, dx); unit length at in-cell pixels except each cell's centre and the pixels of
        pieces disconnected from it (0); 0 outside cells.
        Same kind as ``labels`` (numpy -> numpy on the host; torch -> torch on ``device``).
    """
    batch = _check_labels(labels, device)
    graph = pixel_graph(batch.labels)
    potential = geodesic_distance(graph, method=method) - BORDER_WEIGHT * border_distance(graph)
    directions = descent_directions(graph, potential)
    flows = torch.zeros((batch.labels.shape[0], 2, *batch.labels.shape[1:]), dtype=torch.float32,
                        device=batch.labels.device)
    scatter_flows(flows, graph, directions)
    if not batch.batched:
        flows = flows[0]
    return flows.cpu().numpy() if batch.as_numpy else flows
