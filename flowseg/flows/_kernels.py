"""Compiled CPU kernels (numba) of the host route: flow targets and discrete flow following.

Every kernel works on whole label batches laid out as flat ``B * H * W`` arrays (row-major);
no kernel loops over cells in Python, and each costs O(pixels). The same-label neighbours of a
pixel are one ``uint8`` bit mask: bit ``k`` is set when the 8-neighbour in direction
``RING[k]`` is inside the image and has the same non-zero label. The torch route
(:mod:`flowseg.flows.targets`, :mod:`flowseg.flows.masks`) computes the same quantities with
tensor operations; the tests compare the two. Compiled code is cached on disk (``cache=True``;
where, when numba's own folders are read-only: :mod:`flowseg.flows._numba_cache`), so it is
compiled once per machine, by default in a background process while the first run takes the
torch route (:mod:`flowseg.flows._warmup`); loading all kernels from the cache takes ~0.5 s.

Compile time is kept down (``benchmarks/cold_start.py``: 26 s of CPU for the segment path
before, ~19 s after): each public kernel has one argument type signature (``signature=`` of
:func:`~flowseg.flows._numba_cache.kernel`; callers pass C-contiguous arrays of exactly these
dtypes, labels as int64), and the kernels use plain loops where numpy's compiled
implementations cost seconds each to compile (``np.flatnonzero``, ``np.searchsorted``, fancy
and slice assignment, whose error messages pull in numba's string formatting, a typed dict,
array arithmetic, ``.max()``, ``np.full``).
"""

from __future__ import annotations

import math

import numpy as np

from numba import types

from flowseg.flows._numba_cache import kernel
from flowseg.flows.follow import RING

__all__ = ["centre_pixels", "descent_flows", "dial_distance", "drop_ids",
           "fill_enclosed", "follow_flows", "instance_flow_error", "label_sparse", "largest_pieces",
           "piece_ids", "renumber", "same_label_neighbours", "seed_labels",
           "subtract_inner_edt"]

_DY = np.array([d[0] for d in RING], dtype=np.int64)
_DX = np.array([d[1] for d in RING], dtype=np.int64)
_STEPS = np.hypot(_DY, _DX).astype(np.float64)       # edge lengths 1 and sqrt(2)
_BACKWARD = np.array([k for k, (dy, dx) in enumerate(RING) if dy < 0 or (dy == 0 and dx < 0)])
_ALL = 255                                            # all 8 neighbours have the same label
_TIE_MARGIN = 2.0      # degrees kept from a sector boundary shared with another downhill step
_SNAP_MARGIN = 15.0    # degrees kept from a sector boundary that leads out of the cell / uphill
#: Largest angle (radians) from a sector's centre towards a boundary shared with another
#: downhill sector / any other boundary; float32 values, as the torch route always had them.
SECTOR_LIMITS = (float(np.float32(math.pi / 8 - math.radians(_TIE_MARGIN))),
                 float(np.float32(math.pi / 8 - math.radians(_SNAP_MARGIN))))
_TIE, _SNAP = SECTOR_LIMITS

# The one argument type signature of each public kernel (C-contiguous arrays, int64 scalars):
# callers pass exactly these, so every kernel compiles once and :mod:`flowseg.flows._warmup`
# can compile and cache all of them ahead of use.
_I64, _F64 = types.int64, types.float64
_BOOL_1D, _BOOL_3D = types.Array(types.boolean, 1, "C"), types.Array(types.boolean, 3, "C")
_U8_1D = types.Array(types.uint8, 1, "C")
_I32_1D, _I32_3D = types.Array(types.int32, 1, "C"), types.Array(types.int32, 3, "C")
_I64_1D, _I64_3D = types.Array(types.int64, 1, "C"), types.Array(types.int64, 3, "C")
_F32_4D, _F64_1D = types.Array(types.float32, 4, "C"), types.Array(types.float64, 1, "C")


@kernel(signature=(_I64_3D,))
def same_label_neighbours(labels):
    """(B, H, W) int labels -> (B * H * W,) uint8 masks of the same-label 8-neighbours."""
    nb, h, w = labels.shape
    out = np.zeros(nb * h * w, dtype=np.uint8)
    for b in range(nb):
        for y in range(h):
            for x in range(w):
                v = labels[b, y, x]
                if v == 0:
                    continue
                m = 0
                for k in range(8):
                    yy, xx = y + _DY[k], x + _DX[k]
                    if 0 <= yy < h and 0 <= xx < w and labels[b, yy, xx] == v:
                        m |= 1 << k
                out[(b * h + y) * w + x] = m
    return out


@kernel(signature=(_I64_1D, _I64, _I64, _I64, _I64))
def centre_pixels(labels, top, n, h, w):
    """Per id 0..n-1 the flat index of its pixel nearest its centroid (first in raster order
    on ties), -1 for absent ids. Pixel ``p`` of image ``b`` with ``labels[p] > 0`` (flat
    (B * H * W,)) has id ``b * top + labels[p]``."""
    count, cy, cx = np.zeros(n, np.float64), np.zeros(n, np.float64), np.zeros(n, np.float64)
    for b in range(labels.size // (h * w)):
        for y in range(h):
            for x in range(w):
                v = labels[(b * h + y) * w + x]
                if v > 0:
                    count[b * top + v] += 1.0
                    cy[b * top + v] += y
                    cx[b * top + v] += x
    best, first = np.empty(n, np.float64), np.empty(n, np.int64)
    for i in range(n):
        if count[i] > 0:                          # (absent ids: no pixel reads them)
            cy[i], cx[i] = cy[i] / count[i], cx[i] / count[i]
        best[i], first[i] = np.inf, -1
    for b in range(labels.size // (h * w)):
        for y in range(h):
            for x in range(w):
                p = (b * h + y) * w + x
                if labels[p] > 0:
                    i = b * top + labels[p]
                    d2 = (y - cy[i]) ** 2 + (x - cx[i]) ** 2
                    if d2 < best[i]:
                        best[i], first[i] = d2, p
    return first


@kernel
def _root(parent, p):
    while parent[p] != p:
        parent[p] = parent[parent[p]]
        p = parent[p]
    return p


@kernel(signature=(_U8_1D, _I64_1D, _I64))
def piece_ids(nbr, labels, w):
    """8-connected same-label pieces: (B * H * W,) ids 1..K numbered in raster order of each
    piece's first pixel (0 outside cells, ``labels == 0``), and K."""
    parent = np.arange(nbr.size)
    for p in range(nbr.size):
        for k in _BACKWARD:
            if nbr[p] & (1 << k):
                a, b = _root(parent, p), _root(parent, p + _DY[k] * w + _DX[k])
                parent[max(a, b)] = min(a, b)     # the root is the first pixel of the piece
    ids = np.zeros(nbr.size, dtype=np.int64)
    k = 0
    for p in range(nbr.size):
        if labels[p] > 0:
            r = _root(parent, p)
            if r == p:
                k += 1
                ids[p] = k
            else:
                ids[p] = ids[r]
    return ids, k


@kernel(signature=(_I64_1D, _I64, _I64_1D, _I64, _I64))
def largest_pieces(pieces, k, labels, top, hw):
    """(K + 1,) bool indexed by piece id: the largest piece of its cell (id ``b * top +
    label``; ties: the piece whose first pixel comes first); entry 0 is False."""
    size = np.zeros(k + 1, dtype=np.int64)
    cell = np.zeros(k + 1, dtype=np.int64)
    for p in range(pieces.size):
        if pieces[p] > 0:
            size[pieces[p]] += 1
            cell[pieces[p]] = (p // hw) * top + labels[p]
    best = np.zeros(_max(cell) + 1, dtype=np.int64)
    for j in range(1, k + 1):
        best[cell[j]] = max(best[cell[j]], size[j])
    keep = np.zeros(k + 1, dtype=np.bool_)
    for j in range(1, k + 1):
        if size[j] == best[cell[j]]:
            keep[j] = True
            best[cell[j]] = -1                    # later pieces of the same size lose
    return keep


@kernel
def _max(values):
    """Largest entry of a non-empty 1-D array (a loop: ``values.max()`` costs more to compile)."""
    top = values[0]
    for i in range(1, values.size):
        top = max(top, values[i])
    return top


@kernel
def _offsets(w):
    """Flat offsets of the 8 neighbours in an image of width ``w`` (a loop: array arithmetic
    costs more to compile)."""
    offset = np.empty(8, dtype=np.int64)
    for k in range(8):
        offset[k] = _DY[k] * w + _DX[k]
    return offset


@kernel
def _with_room(buf, used, extra):
    """``buf`` if it has room for ``extra`` more entries after ``used``, else a bigger copy."""
    if used + extra <= buf.size:
        return buf
    bigger = np.empty(max(2 * buf.size, used + extra), dtype=buf.dtype)
    for i in range(used):        # (a loop: slice assignment costs seconds to compile)
        bigger[i] = buf[i]
    return bigger


@kernel(signature=(_U8_1D, _I64_1D, _I64))
def dial_distance(nbr, sources, w):
    """Exact shortest paths from ``sources`` over the same-label edges (weights 1, sqrt 2).

    Dial's bucket queue with unit-width buckets: every edge is >= 1 long, so a pixel of
    bucket k is final when the bucket is reached and relaxes only into buckets k+1 and k+2
    (three rotating buffers, each sized before a bucket for its 8 pushes per pixel). Sources
    must lie in different cells (no path joins them). Returns
    (B * H * W,) float64 distances (inf where unreached) and the number of pixels reached.
    """
    dist = np.empty(nbr.size, dtype=np.float64)
    for p in range(nbr.size):
        dist[p] = np.inf
    done = np.zeros(nbr.size, dtype=np.bool_)
    offset, steps = _offsets(w), _STEPS
    now, near, far = (np.empty(1024, dtype=np.int64), np.empty(1024, dtype=np.int64),
                      np.empty(1024, dtype=np.int64))
    reached = 0
    none = nbr.size - nbr.size     # an int64 zero (a literal 0 would type _with_room twice)
    for s in sources:          # one source at a time: its pixels stay in cache (same result)
        dist[s], now[0] = 0.0, s
        n_now, n_near, n_far, k = 1, none, none, 0
        while n_now + n_near + n_far > 0:
            near, far = _with_room(near, n_near, 8 * n_now), _with_room(far, n_far, 8 * n_now)
            for i in range(n_now):
                p = now[i]
                if done[p]:
                    continue                       # a stale entry
                done[p] = True
                reached += 1
                m, d = nbr[p], dist[p]
                for j in range(8):
                    if (m >> j) & 1:
                        q = p + offset[j]
                        c = d + steps[j]
                        if c < dist[q]:
                            dist[q] = c
                            if c < k + 2:
                                near[n_near] = q
                                n_near += 1
                            else:
                                far[n_far] = q
                                n_far += 1
            now, near, far = near, far, now
            n_now, n_near, n_far = n_near, n_far, 0
            k += 1
    return dist, reached


@kernel
def _envelope(f, v, z, out):
    """Exact 1-D squared distance transform of ``f`` (-1 = infinite) into ``out`` (Felzenszwalb
    and Huttenlocher's lower envelope of parabolas; all values are integers, so it is exact)."""
    n = f.size
    k = -1
    for q in range(n):
        if f[q] < 0:
            continue
        s = 0.0
        while k >= 0:
            s = ((f[q] + q * q) - (f[v[k]] + v[k] * v[k])) / (2.0 * (q - v[k]))
            if s <= z[k]:
                k -= 1
            else:
                break
        k += 1
        v[k] = q
        z[k] = -np.inf if k == 0 else s
    if k < 0:
        out[:] = -1
        return
    z[k + 1] = np.inf
    j = 0
    for q in range(n):
        while z[j + 1] < q:
            j += 1
        out[q] = (q - v[j]) ** 2 + f[v[j]]


@kernel(signature=(_F64_1D, _U8_1D, _I64, _I64, _I64, _F64))
def subtract_inner_edt(values, nbr, nb, h, w, weight):
    """``values -= weight * edt`` in place, where ``edt`` is the Euclidean distance of every
    pixel to the nearest pixel that is not inner (``nbr != 255``: background, or a cell pixel
    with a neighbour outside its cell), per image: the values of
    ``scipy.ndimage.distance_transform_edt`` of the inner mask, exactly (integer squared
    distances). Non-inner pixels (distance 0) are left untouched. All passes are row-major."""
    col = np.empty((h, w), dtype=np.int64)
    run = np.empty(w, dtype=np.int64)
    v, z = np.empty(w, dtype=np.int64), np.empty(w + 1)
    row, res = np.empty(w, dtype=np.int64), np.empty(w, dtype=np.int64)
    for b in range(nb):
        base = b * h * w
        run[:] = h + w                       # "no zero yet": farther than any real distance
        for y in range(h):                   # vertical distance to a zero, from above ...
            for x in range(w):
                run[x] = 0 if nbr[base + y * w + x] != _ALL else run[x] + 1
                col[y, x] = run[x]
        run[:] = h + w
        for y in range(h - 1, -1, -1):       # ... and from below
            for x in range(w):
                run[x] = 0 if nbr[base + y * w + x] != _ALL else run[x] + 1
                col[y, x] = min(col[y, x], run[x])
        for y in range(h):
            inner = False
            for x in range(w):
                row[x] = col[y, x] ** 2 if col[y, x] < h + w else -1
                inner |= col[y, x] > 0
            if not inner:
                continue
            _envelope(row, v, z, res)
            for x in range(w):
                if nbr[base + y * w + x] == _ALL:
                    values[base + y * w + x] -= weight * math.sqrt(res[x])


@kernel(inline="always")
def _snap(theta, down):
    """Angle ``theta`` turned into the sector of a downhill neighbour (bit k of ``down``), away
    from bad boundaries (see ``targets._snap_to_downhill``, whose torch code this mirrors, ties
    included). Returns (angle, -1) when kept, else (0.0, index into the snapped-angle table:
    ``2 * k + (0 | 1)`` for ``k * pi/4 -+ limit`` of the two limits, +16 for the snap limit)."""
    sector = theta / (math.pi / 4)
    nearest = np.rint(sector)
    side = 1 if sector >= nearest else -1
    ring = int(nearest) % 8
    limit = _TIE if (down >> ((ring + side) % 8)) & 1 else _SNAP
    if (down >> ring) & 1 and abs(sector - nearest) * (math.pi / 4) <= limit:
        return theta, -1
    best, k, delta = np.inf, 0, 0.0
    for j in range(8):
        if (down >> j) & 1:
            d = (theta - j * (math.pi / 4) + math.pi) % (2 * math.pi) - math.pi
            if abs(d) < best:                      # ties: the first in ring order
                best, k, delta = abs(d), j, d
    side = 1 if delta >= 0 else -1
    tight = (down >> ((k + side) % 8)) & 1
    limit = _TIE if tight else _SNAP
    if abs(delta) < limit:
        return k * (math.pi / 4) + delta, -1
    return 0.0, 2 * k + (1 if delta >= 0 else 0) + (0 if tight else 16)


@kernel
def _snapped_table():
    """(32, 2) sin and cos of every snapped angle ``k * pi/4 -+ limit`` (see :func:`_snap`)."""
    table = np.empty((32, 2))
    for i in range(32):
        limit = _TIE if i < 16 else _SNAP
        k, sign = (i % 16) // 2, (1.0 if i % 2 else -1.0)
        theta = k * (math.pi / 4) + max(min(sign * np.inf, limit), -limit)
        table[i, 0], table[i, 1] = math.sin(theta), math.cos(theta)
    return table


@kernel(inline="always")
def _direction(diff, valid):
    """Least-squares descent direction (dy, dx) from the differences to the valid neighbours
    (bit k of ``valid``), or the steepest neighbour's direction where the fit vanishes."""
    ayy, axx, axy, by, bx = 0.0, 0.0, 0.0, 0.0, 0.0
    for k in range(8):                     # in ring order, as targets._normal_equations
        if (valid >> k) & 1:               # (adding the zero terms would change no bit)
            ayy += float(_DY[k] * _DY[k])
            axx += float(_DX[k] * _DX[k])
            axy += float(_DY[k] * _DX[k])
            by += diff[k] * float(_DY[k])
            bx += diff[k] * float(_DX[k])
    ayy, axx = ayy + 1e-9, axx + 1e-9
    det = ayy * axx - axy * axy
    vy, vx = (axy * bx - axx * by) / det, (axy * by - ayy * bx) / det
    if math.sqrt(vy * vy + vx * vx) <= 1e-6:
        k, best = 0, -diff[0] / _STEPS[0]      # np.argmax(-diff / _STEPS): the first maximum
        for j in range(1, 8):
            if -diff[j] / _STEPS[j] > best:
                k, best = j, -diff[j] / _STEPS[j]
        vy, vx = float(_DY[k]), float(_DX[k])
    return vy, vx


@kernel(signature=(_U8_1D, _F64_1D, _I64, _I64, _I64))
def descent_flows(nbr, potential, nb, h, w):
    """Unit flows (B, 2, H, W) float32 down ``potential`` (flat float64) inside each cell."""
    flows = np.zeros((nb, 2, h * w), dtype=np.float32)
    offset = _offsets(w)
    table = _snapped_table()
    diff = np.empty(8)
    for b in range(nb):
        for yx in range(h * w):
            p = b * h * w + yx
            m, here = nbr[p], potential[p]
            if m == 0 or not math.isfinite(here):
                continue                           # no neighbour in the cell, or unreached
            down = 0
            for k in range(8):
                diff[k] = potential[p + offset[k]] - here if (m >> k) & 1 else np.inf
                if diff[k] < 0:
                    down |= 1 << k
            if down == 0:
                continue                           # the centre: a sink
            vy, vx = _direction(diff, m)
            theta, snapped = _snap(math.atan2(vy, vx), down)
            if snapped >= 0:
                flows[b, 0, yx], flows[b, 1, yx] = table[snapped, 0], table[snapped, 1]
            else:
                flows[b, 0, yx], flows[b, 1, yx] = math.sin(theta), math.cos(theta)
    return flows.reshape(nb, 2, h, w)


@kernel(inline="always")
def _shorter(fy, fx, limit):
    """``hypot(fy, fx) < limit``, from the squared length unless the two are within 1e-6 of
    each other (there ``hypot`` decides, so the answer is always hypot's)."""
    length2, limit2 = fy * fy + fx * fx, limit * limit
    if abs(length2 - limit2) > 1e-6 * limit2:
        return length2 < limit2
    return math.hypot(fy, fx) < limit


@kernel
def _successors(flows, foreground, min_flow):
    """Foreground pixels (flat indices, ascending), each one's successor (int32 position in
    that list), and where each image's pixels start; see :func:`flowseg.flows.follow.successors`.
    (Plain loops: ``np.flatnonzero``, ``np.searchsorted`` and fancy assignment cost seconds
    to compile.)"""
    nb, h, w = foreground.shape
    flat = foreground.reshape(-1)
    n = 0
    for p in range(flat.size):
        n += flat[p]
    pixels, succ = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int32)
    position = np.empty(flat.size, dtype=np.int32)
    start = np.empty(nb + 1, dtype=np.int64)
    i = 0
    for b in range(nb):
        start[b] = i
        for p in range(b * h * w, (b + 1) * h * w):
            position[p] = i if flat[p] else -1
            if flat[p]:
                pixels[i], succ[i] = p, i
                i += 1
    start[nb] = n
    for i in range(n):
        b, yx = pixels[i] // (h * w), pixels[i] % (h * w)
        y, x = yx // w, yx % w
        fy, fx = float(flows[b, 0, y, x]), float(flows[b, 1, y, x])
        if _shorter(fy, fx, min_flow[b]):
            continue                               # a short flow: the pixel stays
        sector = math.atan2(fy, fx) / (math.pi / 4)
        if not math.isfinite(sector):
            continue                               # a NaN flow: the pixel stays
        nearest = int(np.rint(sector))
        side = 1 if sector >= nearest else -1
        for k in (nearest, nearest + side, nearest - side):
            yy, xx = y + _DY[k % 8], x + _DX[k % 8]
            if 0 <= yy < h and 0 <= xx < w and foreground[b, yy, xx]:
                succ[i] = position[pixels[i] + _DY[k % 8] * w + _DX[k % 8]]
                break
    return pixels, succ, start


@kernel(signature=(_F32_4D, _BOOL_3D, _F64_1D, _I64_1D))
def follow_flows(flows, foreground, min_flow, jumps):
    """Discrete flow following (see :mod:`flowseg.flows.follow`) with pointer jumping.

    Returns the foreground pixels (flat indices into ``B * H * W``, ascending), the position
    (in that list) of the pixel each reaches after ``2**jumps[b]`` steps, and the
    (B * H * W,) bool mask of those end points. Jumping stops early once a round changes
    nothing (every later round would repeat it).
    """
    pixels, cur, start = _successors(flows, foreground, min_flow)
    nxt = np.empty(cur.size, dtype=np.int32)
    for j in range(_max(jumps) if jumps.size else 0):
        changed = False
        for b in range(jumps.size):
            for i in range(start[b], start[b + 1]):
                nxt[i] = cur[cur[i]] if jumps[b] > j else cur[i]
                changed |= nxt[i] != cur[i]
        cur, nxt = nxt, cur
        if not changed:
            break
    sinks = np.zeros(foreground.size, dtype=np.bool_)
    for i in range(pixels.size):
        sinks[pixels[cur[i]]] = True
    return pixels, cur, sinks


@kernel(signature=(_BOOL_3D,))
def label_sparse(mask):
    """8-connected components of a sparse (B, H, W) bool mask, per image: int32 ids 1..K
    numbered in raster order of each component's first pixel over the batch (the numbering of
    ``scipy.ndimage.label``), 0 elsewhere. Union-find over the set pixels only."""
    nb, h, w = mask.shape
    flat = mask.reshape(-1)
    n = 0
    for p in range(flat.size):
        n += flat[p]
    points, parent = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    where = np.empty(flat.size, dtype=np.int64)     # position in points (set pixels only)
    i = 0
    for p in range(flat.size):
        if flat[p]:
            points[i], parent[i], where[p] = p, i, i
            i += 1
    for i in range(points.size):
        yx = points[i] % (h * w)
        y, x = yx // w, yx % w
        for k in _BACKWARD:
            yy, xx = y + _DY[k], x + _DX[k]
            if 0 <= yy < h and 0 <= xx < w and flat[points[i] + _DY[k] * w + _DX[k]]:
                a, c = _root(parent, i), _root(parent, where[points[i] + _DY[k] * w + _DX[k]])
                parent[max(a, c)] = min(a, c)
    ids = np.zeros(flat.size, dtype=np.int32)
    k = 0
    for i in range(points.size):
        r = _root(parent, i)
        if r == i:
            k += 1
            ids[points[i]] = k
        else:
            ids[points[i]] = ids[points[r]]
    return ids.reshape(mask.shape)


@kernel(signature=(_F32_4D, _F32_4D, _I64_3D, _I64))
def instance_flow_error(flows, target, labels, n):
    """Per id 0..n-1 the mean over its pixels of sum_c (flows - target)^2 (float32 per pixel,
    summed in float64 in raster order); 0 for absent ids."""
    nb, _, h, w = flows.shape
    total, count = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.float64)
    for b in range(nb):
        for y in range(h):
            for x in range(w):
                i = labels[b, y, x]
                dy = flows[b, 0, y, x] - target[b, 0, y, x]
                dx = flows[b, 1, y, x] - target[b, 1, y, x]
                total[i] += dy * dy + dx * dx
                count[i] += 1.0
    for i in range(n):
        total[i] /= max(count[i], 1.0)
    return total


@kernel(signature=(_I32_3D, _BOOL_1D, _I64_3D))
def fill_enclosed(holes, enclosed, labels):
    """Copy of ``labels`` where every enclosed hole (``enclosed[hole id]``; such holes never
    touch the image border) whose 4-neighbours all carry one instance id takes that id."""
    n = enclosed.size
    lowest, highest = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for i in range(n):
        lowest[i], highest[i] = np.iinfo(np.int64).max, -1
    nb, h, w = labels.shape
    for b in range(nb):
        for y in range(h):
            for x in range(w):
                i = holes[b, y, x]
                if not enclosed[i]:
                    continue
                for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    v = labels[b, yy, xx]
                    if v > 0:
                        lowest[i] = min(lowest[i], v)
                        highest[i] = max(highest[i], v)
    out = labels.copy()
    for b in range(nb):
        for y in range(h):
            for x in range(w):
                i = holes[b, y, x]
                if enclosed[i] and lowest[i] == highest[i]:
                    out[b, y, x] = highest[i]
    return out


@kernel(signature=(_I64_1D, _I32_1D, _I32_3D))
def seed_labels(pixels, end, seeds):
    """Instance ids from end points: pixel ``pixels[i]`` gets ``seeds[pixels[end[i]]]`` (all
    other pixels 0; int32 like ``seeds``), and per seed id its pixel count, end-point count and
    image index."""
    nb, h, w = seeds.shape
    flat = seeds.reshape(-1)
    n = _max(flat) + 1 if flat.size else 1
    labels = np.zeros(flat.size, dtype=np.int32)
    size, sinks, image = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    for b in range(nb):
        for p in range(b * h * w, (b + 1) * h * w):
            sinks[flat[p]] += 1
            image[flat[p]] = b
    for i in range(pixels.size):
        labels[pixels[i]] = flat[pixels[end[i]]]
        size[labels[pixels[i]]] += 1
    size[0] = labels.size - pixels.size
    image[0] = 0
    return labels.reshape(seeds.shape), size, sinks, image


@kernel(signature=(_I32_3D, _BOOL_1D))
def drop_ids(labels, remove):
    """Set to 0, in place, every pixel whose id has ``remove[id]`` (contiguous ``labels``)."""
    flat = labels.reshape(-1)
    for p in range(flat.size):
        if remove[flat[p]]:
            flat[p] = 0


@kernel(signature=(_I64_3D,))
def renumber(labels):
    """Per image, ids -> 1..N in increasing order (int32), 0 stays 0."""
    nb, h, w = labels.shape
    out = np.empty((nb, h, w), dtype=np.int32)
    rank = np.empty(_max(labels.reshape(-1)) + 1 if labels.size else 1, dtype=np.int32)
    for b in range(nb):
        for i in range(rank.size):
            rank[i] = 0
        for y in range(h):
            for x in range(w):
                rank[labels[b, y, x]] = 1
        total = 0
        for i in range(1, rank.size):
            total += rank[i]
            rank[i] = total if rank[i] else 0
        rank[0] = 0
        for y in range(h):
            for x in range(w):
                out[b, y, x] = rank[labels[b, y, x]]
    return out
