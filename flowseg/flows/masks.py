"""Flows + cell probability -> instance labels, for a whole batch at once.

Steps (:func:`flows_to_labels`), none of which loops over cells:

1. Foreground: ``cellprob > cellprob_threshold`` (per image).
2. Discrete flow following with pointer jumping (:mod:`flowseg.flows.follow`): every
   foreground pixel gets the pixel it reaches after ``2**ceil(log2(niter))`` steps; pixels
   whose flow is shorter than ``min_flow`` do not move.
3. Seeds: the 8-connected components of the set of end points (each terminal cycle of the
   successor graph is one 8-connected set, so one cell's sink is one seed); every pixel takes
   the id of the seed it ends in.
4. Instances smaller than ``min_size`` are dropped, and so are plateaus: instances with fewer
   than ``_MIN_BASIN_RATIO`` pixels per end-point pixel (zero-flow regions, where nothing
   flows anywhere; Cellpose drops them too because they form no dense seed).
5. Flow-error QC: flows are recomputed from the instances (:func:`labels_to_flows`) and
   instances whose mean squared flow difference exceeds ``flow_threshold`` are dropped.
6. Holes enclosed by a single instance are filled; ids renumbered 1..N per image.

CPU input takes the host route (:func:`_host_labels`: numba kernels for following, pointer
jumping with an early stop once nothing changes, seed bookkeeping, the flow-error QC's
targets and sums, hole filling and renumbering; scipy for labelling); other devices the torch
route (:func:`_torch_labels`). Both give the same labels (tested). While the kernels are not
compiled yet (a new machine; :mod:`flowseg.flows._warmup`), CPU input takes the torch route
too, with numpy hole filling and renumbering.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from flowseg.config import SegmentConfig
from flowseg.flows import _kernels, _ops, _warmup
from flowseg.flows._ops import put, take
from flowseg.flows.follow import pointer_jump, successors
from flowseg.flows.targets import _check_labels, host_flows, labels_to_flows

__all__ = ["flows_to_labels", "flow_error", "fill_holes", "connected_components"]

_EIGHT = np.zeros((3, 3, 3), dtype=bool)
_EIGHT[1] = True            # 8-connectivity inside each image, never across the batch axis
_FOUR = ndimage.generate_binary_structure(3, 1) & _EIGHT
#: An instance needs this many pixels per end-point pixel: a real cell drains into a few sink
#: pixels, while a region of zero flow (every pixel its own end point) is a plateau, dropped.
_MIN_BASIN_RATIO = 2.0


def _check_configs(config, n: int) -> list[SegmentConfig]:
    if config is None:
        return [SegmentConfig()] * n
    if isinstance(config, SegmentConfig):
        return [config] * n
    if isinstance(config, Sequence) and not isinstance(config, str):
        configs = list(config)
        if len(configs) != n or not all(isinstance(c, SegmentConfig) for c in configs):
            raise ValueError(f"config: expected a SegmentConfig or a sequence of {n} SegmentConfig "
                             f"(one per image), got {[type(c).__name__ for c in configs]}")
        return configs
    raise TypeError(f"config: expected a SegmentConfig or a sequence of them, got {type(config).__name__}")


def _as_tensor(name: str, value, device) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(value).__name__}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name}: expected floating point values, got dtype {value.dtype}")
    return value.to(device if device is not None else value.device, torch.float32)


def _check_inputs(flows, cellprob, device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    flows, cellprob = _as_tensor("flows", flows, device), _as_tensor("cellprob", cellprob, device)
    batched = flows.ndim == 4
    if not batched:
        flows, cellprob = flows[None], cellprob[None]
    if flows.ndim != 4 or flows.shape[1] != 2:
        raise ValueError(f"flows: expected shape (2, H, W) or (B, 2, H, W), got {tuple(flows.shape)}")
    if cellprob.shape != (flows.shape[0], *flows.shape[2:]):
        raise ValueError(f"cellprob: expected shape {(flows.shape[0], *flows.shape[2:])} to match flows "
                         f"{tuple(flows.shape)}, got {tuple(cellprob.shape)}")
    return flows, cellprob.to(flows.device), batched


def connected_components(mask: torch.Tensor, *, method: str = "auto") -> torch.Tensor:
    """8-connected components of each image of a (B, H, W) bool tensor, ids unique over the batch.

    ``method="scipy"`` (default on CPU): ``scipy.ndimage.label``, ids 1..K in raster order over
    the batch. ``"torch"`` (default elsewhere): min-id propagation with pointer jumping on the
    tensor's device; ids are flat index + 1 of the component's first pixel. Both are int64
    tensors on ``mask.device``, 0 outside the mask.
    """
    if method not in ("auto", "scipy", "torch"):
        raise ValueError(f"method: expected 'auto', 'scipy' or 'torch', got {method!r}")
    if method == "scipy" or (method == "auto" and _ops.host_path(mask)):
        ids, _ = ndimage.label(mask.cpu().numpy(), structure=_EIGHT)
        return torch.from_numpy(ids.astype(np.int64)).to(mask.device)
    b, h, w = mask.shape
    big = b * h * w + 1
    ids = torch.where(mask, torch.arange(1, big, device=mask.device).reshape(b, h, w), big)
    while True:
        low = _neighbour_min(ids)
        new = torch.where(mask, torch.minimum(ids, low), big)
        flat = new.reshape(-1)
        inside = flat < big
        flat = torch.where(inside, flat[(flat - 1).clamp(0, big - 2)], flat)   # pointer jumping
        new = torch.minimum(new, flat.reshape(b, h, w))
        if torch.equal(new, ids):
            return torch.where(mask, ids, 0)
        ids = new


def _neighbour_min(ids: torch.Tensor) -> torch.Tensor:
    """3x3 minimum filter of a (B, H, W) integer tensor (edge pixels see only the image)."""
    padded = torch.nn.functional.pad(-ids[:, None].double(), (1, 1, 1, 1), value=-math.inf)
    return (-torch.nn.functional.max_pool2d(padded, 3, stride=1)[:, 0]).long()


def _seed_labels(flows, foreground, jumps, min_flow) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance ids from flow following.

    Returns
    -------
    labels : (B, H, W) tensor of int64
        Ids unique over the batch, 0 = background.
    sinks : (B, H, W) tensor of int64
        The seed id at every end point (pixel where some flow path ends), else 0.
    """
    b, h, w = foreground.shape
    pixels, succ = successors(flows, foreground, min_flow=min_flow)
    image = pixels // (h * w)
    end = take(pixels, pointer_jump(succ, take(jumps.to(pixels.device), image)))
    sinks = torch.zeros(b * h * w, dtype=torch.bool, device=pixels.device)
    put(sinks, end, True)
    seeds = connected_components(sinks.reshape(b, h, w)).reshape(-1).to(pixels.device)
    labels = torch.zeros(b * h * w, dtype=torch.int64, device=pixels.device)
    put(labels, pixels, take(seeds, end))
    return labels.reshape(b, h, w), seeds.reshape(b, h, w)


def _drop(labels: torch.Tensor, remove: torch.Tensor) -> torch.Tensor:
    """Zero the pixels of every id where ``remove[id]`` is True (remove[0] ignored)."""
    remove = remove.clone()
    remove[0] = False
    return torch.where(take(remove, labels.reshape(-1)).reshape(labels.shape), 0, labels)


def _image_of_ids(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Image index of each id 0..n-1 (ids unique over the batch; absent ids get 0)."""
    b = labels.shape[0]
    image = torch.arange(b, device=labels.device)[:, None, None].expand_as(labels)
    return torch.zeros(n, dtype=torch.int64, device=labels.device).scatter_(
        0, labels.reshape(-1), image.reshape(-1))


def _per_instance_mean(values: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of ``values`` ((B, H, W)) over each id 0..n-1 of ``labels`` (0 for absent ids)."""
    flat = labels.reshape(-1)
    total = torch.zeros(n, dtype=torch.float64, device=labels.device).index_add_(
        0, flat, values.reshape(-1).double())
    count = torch.bincount(flat, minlength=n).double()
    return total / count.clamp_min(1)


def _host_flow_error(flows: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """:func:`_batch_flow_error` on the host (numba): (B, 2, H, W) float, (B, H, W) int."""
    flows = np.ascontiguousarray(flows, dtype=np.float32)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    return _kernels.instance_flow_error(flows, host_flows(labels), labels, int(n))


def _batch_flow_error(flows: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """Per id (0..n-1): mean over the instance of sum_c (flows - labels_to_flows(labels))^2."""
    if _ops.kernel_route(flows):
        return torch.from_numpy(_host_flow_error(flows.numpy(), labels.numpy(), n))
    diff = ((flows - labels_to_flows(labels)) ** 2).sum(dim=1)
    return _per_instance_mean(diff, labels, n)


def flow_error(flows, labels) -> np.ndarray | list[np.ndarray]:
    """Disagreement between flows and the flows recomputed from each instance.

    Parameters
    ----------
    flows : (2, H, W) or (B, 2, H, W) ndarray or tensor of float
        Unit-scale (dy, dx) flows, e.g. a network's prediction divided by its flow scale.
    labels : (H, W) or (B, H, W) ndarray or tensor of int
        Instances, 0 = background.

    Returns
    -------
    errors : (N,) ndarray of float64, or a list of them for batched input
        ``errors[k - 1]`` is the mean over instance ``k`` of the squared flow difference summed
        over (dy, dx); NaN for ids absent from the image; N = max label. Cellpose's flow-error
        definition, with flowseg's targets.
    """
    flows = _as_tensor("flows", flows, None)
    batch = _check_labels(labels, flows.device)
    labels = batch.labels
    expected = (labels.shape[0], 2, *labels.shape[1:]) if batch.batched else (2, *labels.shape[1:])
    if tuple(flows.shape) != expected:
        raise ValueError(f"flows: expected shape {expected} to match labels, got {tuple(flows.shape)}")
    flows = flows.reshape(labels.shape[0], 2, *labels.shape[1:])
    top = int(labels.max()) if labels.numel() else 0
    offset = torch.arange(labels.shape[0], device=labels.device)[:, None, None] * (top + 1)
    unique = torch.where(labels > 0, labels + offset, 0)
    n = labels.shape[0] * (top + 1) + 1
    err = _batch_flow_error(flows, unique, n).cpu().numpy()
    present = torch.bincount(unique.reshape(-1), minlength=n).cpu().numpy() > 0
    err = np.where(present, err, np.nan)
    errors = [err[b * (top + 1) + 1:b * (top + 1) + 1 + top] for b in range(labels.shape[0])]
    return errors if batch.batched else errors[0]


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill background regions enclosed by a single instance, for every image at once.

    Parameters
    ----------
    labels : (B, H, W) ndarray of int
        Ids unique over the batch, 0 = background.

    Returns
    -------
    filled : (B, H, W) ndarray, same dtype
        A background region (4-connected, as in ``ndimage.binary_fill_holes``) that does not
        touch the image border and whose 4-neighbours all belong to one instance takes that
        instance's id. Regions bordered by several instances are left as they are.
    """
    holes, n = ndimage.label(labels == 0, structure=_FOUR)
    enclosed = np.ones(n + 1, dtype=bool)
    for edge in (holes[:, 0], holes[:, -1], holes[:, :, 0], holes[:, :, -1]):
        enclosed[edge.ravel()] = False
    enclosed[0] = False
    if not enclosed.any():
        return labels
    wide = np.ascontiguousarray(labels, dtype=np.int64)
    fill = _kernels.fill_enclosed if _warmup.use_kernels() else _fill_enclosed_numpy
    return fill(holes, enclosed, wide).astype(labels.dtype, copy=False)


def _fill_enclosed_numpy(holes: np.ndarray, enclosed: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """:func:`flowseg.flows._kernels.fill_enclosed` with numpy (while the kernels compile).
    Enclosed holes never touch the image border, so ``np.roll`` never wraps into one."""
    lowest = np.full(enclosed.size, np.iinfo(np.int64).max)
    highest = np.full(enclosed.size, -1, dtype=np.int64)
    inside = enclosed[holes]
    for axis in (1, 2):
        for shift in (1, -1):
            neighbour = np.roll(labels, shift, axis=axis)
            touch = inside & (neighbour > 0)
            np.minimum.at(lowest, holes[touch], neighbour[touch])
            np.maximum.at(highest, holes[touch], neighbour[touch])
    fill = enclosed & (lowest == highest)
    return np.where(fill[holes], highest[holes], labels)


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Per image, ids -> 1..N in increasing order of the ids (int32); 0 stays 0."""
    wide = np.ascontiguousarray(labels, dtype=np.int64)
    if _warmup.use_kernels():
        return _kernels.renumber(wide)
    out = np.empty(wide.shape, dtype=np.int32)          # numpy, while the kernels compile
    for b, image in enumerate(wide):
        ids, rank = np.unique(image, return_inverse=True)
        out[b] = rank.reshape(image.shape) + int(ids.size > 0 and ids[0] != 0)
    return out


def _per_image(configs: Sequence[SegmentConfig], field: str, device) -> torch.Tensor:
    return torch.tensor([getattr(c, field) for c in configs], dtype=torch.float64, device=device)


def _torch_labels(flows: torch.Tensor, cellprob: torch.Tensor, configs) -> torch.Tensor:
    """Steps 1-5 with tensor operations on the inputs' device: (B, H, W) int64 ids."""
    dev = flows.device
    threshold = _per_image(configs, "cellprob_threshold", dev)
    foreground = cellprob.double() > threshold[:, None, None]
    jumps = torch.tensor(_jumps(configs), device=dev)
    labels, sinks = _seed_labels(flows, foreground, jumps, _per_image(configs, "min_flow", dev))
    n = int(labels.max()) + 1
    image = _image_of_ids(labels, n)
    size = torch.bincount(labels.reshape(-1), minlength=n)
    plateau = size < _MIN_BASIN_RATIO * torch.bincount(sinks.reshape(-1), minlength=n)
    labels = _drop(labels, plateau | (size < _per_image(configs, "min_size", dev)[image]))
    flow_threshold = _per_image(configs, "flow_threshold", dev)[image]
    if bool((flow_threshold > 0).any()) and int(labels.max()) > 0:
        err = _batch_flow_error(flows, labels, n)
        labels = _drop(labels, (flow_threshold > 0) & (err > flow_threshold))
    return labels


def _jumps(configs) -> list[int]:
    return [max(1, math.ceil(math.log2(c.niter))) for c in configs]


def _host_labels(flows: np.ndarray, cellprob: np.ndarray, configs) -> np.ndarray:
    """Steps 1-5 on the host (numba kernels, scipy labelling): (B, H, W) int32 ids unique
    over the batch, the same as :func:`_torch_labels`."""
    shape = cellprob.shape
    field = {k: np.array([getattr(c, k) for c in configs], dtype=np.float64)
             for k in ("cellprob_threshold", "min_flow", "min_size", "flow_threshold")}
    foreground = cellprob > field["cellprob_threshold"][:, None, None]
    pixels, end, sinks = _kernels.follow_flows(np.ascontiguousarray(flows), foreground,
                                               field["min_flow"], np.array(_jumps(configs), dtype=np.int64))
    seeds = _kernels.label_sparse(sinks.reshape(shape))      # = ndimage.label(..., _EIGHT)
    labels, size, sink_count, image = _kernels.seed_labels(pixels, end, seeds)
    n = size.size
    remove = (size < _MIN_BASIN_RATIO * sink_count) | (size < field["min_size"][image])
    _host_drop(labels, remove)
    threshold = field["flow_threshold"][image]
    if (threshold > 0).any() and labels.max() > 0:
        err = _host_flow_error(flows, labels, n)
        _host_drop(labels, (threshold > 0) & (err > threshold))
    return labels


def _host_drop(labels: np.ndarray, remove: np.ndarray) -> None:
    """:func:`_drop` on the host, in place."""
    remove[0] = False
    _kernels.drop_ids(labels, remove)


def flows_to_labels(flows, cellprob, *, config=None, device=None) -> np.ndarray:
    """Instance labels from unit-scale flows and cell-probability logits, whole batch at once.

    Parameters
    ----------
    flows : (2, H, W) or (B, 2, H, W) ndarray or tensor of float
        Unit-scale (dy, dx) flows (what :func:`labels_to_flows` produces).
    cellprob : (H, W) or (B, H, W) ndarray or tensor of float
        Cell-probability logits.
    config : SegmentConfig or sequence of SegmentConfig, optional
        One for all images, or one per image. Default ``SegmentConfig()``.
    device : str or torch.device, optional
        Where to follow the flows; default: the input tensor's device (numpy: CPU).

    Returns
    -------
    labels : (H, W) or (B, H, W) ndarray of int32
        0 = background, 1..N per image.
    """
    flows, cellprob, batched = _check_inputs(flows, cellprob, device)
    configs = _check_configs(config, flows.shape[0])
    if _ops.kernel_route(flows):
        out = _host_labels(flows.numpy(), cellprob.numpy(), configs)
    else:
        out = _torch_labels(flows, cellprob, configs).cpu().numpy()
    fill = np.array([c.fill_holes for c in configs])
    if fill.any():
        out[fill] = fill_holes(out[fill])
    out = _renumber(out)
    return out if batched else out[0]
