"""Multi-process training with ``torchrun`` and DistributedDataParallel (DDP).

Launch any training entry point under ``torchrun``; :func:`process_group` reads the variables
torchrun sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) and joins the process group (NCCL on
CUDA, gloo on CPU). :func:`flowseg.training.engine.fit` notices an initialised group and then:

* **batch size is global**: ``TrainConfig.batch_size`` crops per optimisation step in total,
  split across the ranks (rank ``r`` takes crops ``r, r + W, ...`` of each step's batch of the
  epoch's deterministic order, :func:`shard_batches`), so a run's settings, learning-rate
  schedule and checkpoints mean the same for any number of processes, and resuming with a
  different number of processes is allowed;
* **the loss equals the single-process loss** of the same global batch: every rank weights its
  terms by its share of the crops (and of the cell pixels, for the class term) before DDP
  averages the gradients (:func:`shard_loss`);
* **BatchNorm statistics are global**: BatchNorm layers become ``torch.nn.SyncBatchNorm`` on
  CUDA and :class:`GlobalBatchNorm2d` (the same maths over gloo) on CPU, so normalisation sees
  the whole global batch, as in a single process;
* only rank 0 validates and writes checkpoints, ``history.csv`` and ``history.png``; the
  validation result is broadcast so every rank keeps the same history.

The one difference from a single process: a step whose batch has fewer crops than there are
ranks (possible only for the last step of an epoch) is padded with crops from the start of the
epoch's order, as ``torch.utils.data.DistributedSampler`` does.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from flowseg.device import resolve_device

__all__ = ["DistEnv", "launch_env", "process_group", "world_size", "rank", "is_main",
           "rank_device", "shard_batches", "GlobalBatchNorm2d", "convert_batchnorm",
           "wrap_model", "ShardLoss", "shard_loss", "all_reduce_sums", "broadcast_object",
           "barrier"]

log = logging.getLogger(__name__)

#: How long a rank waits for the others at a collective (rank 0 validates alone meanwhile).
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a torchrun launch.

    Attributes
    ----------
    rank : int
        Global rank, 0 .. world_size - 1.
    local_rank : int
        Rank on this machine (selects ``cuda:local_rank``).
    world_size : int
        Number of processes.
    """

    rank: int
    local_rank: int
    world_size: int


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected an int, got {value!r}") from None


def launch_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """The torchrun variables of ``environ`` (default ``os.environ``); a plain run is rank 0 of 1.

    Raises
    ------
    ValueError
        Non-integer values, or ``RANK`` / ``LOCAL_RANK`` outside ``[0, WORLD_SIZE)``.
    """
    environ = os.environ if environ is None else environ
    env = DistEnv(rank=_env_int(environ, "RANK", 0), local_rank=_env_int(environ, "LOCAL_RANK", 0),
                  world_size=_env_int(environ, "WORLD_SIZE", 1))
    if env.world_size < 1 or not 0 <= env.rank < env.world_size or env.local_rank < 0:
        raise ValueError(f"torchrun environment: expected 0 <= RANK < WORLD_SIZE and LOCAL_RANK "
                         f">= 0, got {env}")
    return env


def world_size() -> int:
    """Processes in the initialised group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the initialised group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and logs."""
    return rank() == 0


def rank_device(device: str | torch.device, env: DistEnv | None = None) -> torch.device:
    """Resolve ``device`` for this rank: CUDA ranks use ``cuda:LOCAL_RANK`` (any index given is
    replaced, with a warning), CPU stays CPU."""
    env = launch_env() if env is None else env
    resolved = resolve_device(device)
    if resolved.type != "cuda" or env.world_size == 1:
        return resolved
    if resolved.index is not None and resolved.index != env.local_rank:
        log.warning("device %s ignored under torchrun: rank %d uses cuda:%d (LOCAL_RANK)",
                    resolved, env.rank, env.local_rank)
    return torch.device("cuda", env.local_rank)


@contextlib.contextmanager
def process_group(device: str | torch.device = "auto") -> Iterator[torch.device]:
    """Join the torchrun process group for the duration of the block; yields this rank's device.

    Without torchrun (``WORLD_SIZE`` unset or 1), or when a group is already initialised (the
    caller owns it), nothing is initialised and the resolved device is yielded.
    """
    env = launch_env()
    resolved = rank_device(device, env)
    if env.world_size == 1 or dist.is_initialized():
        yield resolved
        return
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, timeout=TIMEOUT)
    log.info("rank %d of %d joined the %s process group on %s", env.rank, env.world_size,
             backend, resolved)
    try:
        yield resolved
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- data sharding
def shard_batches(order: Sequence[int], batch_size: int, *, rank: int = 0, world_size: int = 1
                  ) -> list[list[int]]:
    """This rank's share of each global batch of ``order``.

    Global batch ``s`` is ``order[s * batch_size:(s + 1) * batch_size]``; rank ``r`` takes its
    items ``r, r + world_size, ...``. A batch with fewer items than ranks is padded with items
    from the start of ``order`` so that every rank has at least one.

    Returns
    -------
    list of list of int
        One index list per step (``ceil(len(order) / batch_size)`` steps); with
        ``world_size == 1`` exactly the single-process batches.
    """
    if batch_size < world_size:
        raise ValueError(f"batch_size: expected the global batch size >= the number of processes "
                         f"({world_size}), got {batch_size}")
    order = [int(i) for i in order]
    batches = []
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        if len(batch) < world_size:
            batch += np.resize(order, world_size - len(batch)).tolist()
        batches.append(batch[rank::world_size])
    return batches


# ----------------------------------------------------------------------------- BatchNorm
class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: every rank's input influences every rank's output, so the
    gradient of each input is the sum of the output gradients of all ranks."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batches of all ranks (any backend).

    ``torch.nn.SyncBatchNorm`` only runs on GPUs; this layer all-reduces the per-channel sums
    (float64, with a differentiable ``all_reduce``) so CPU ranks on gloo normalise exactly as a
    single process with the global batch would. Outside a process group, or in eval mode, it
    is a plain BatchNorm2d. Parameters and buffers have the same names as BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.shape[1]
        xd = x.double()
        count = torch.tensor([x.numel() / channels], dtype=torch.float64, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([xd.sum((0, 2, 3)), (xd * xd).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels:2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach() * n / (n - 1).clamp_min(1))
        y = (xd - mean[None, :, None, None]) / torch.sqrt(var + self.eps)[None, :, None, None]
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                  else self.momentum)
        self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
        self.running_var.mul_(1 - factor).add_(factor * unbiased_var.to(self.running_var.dtype))


def _replace_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d of ``module`` for a GlobalBatchNorm2d sharing its tensors."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum,
                                    affine=child.affine,
                                    track_running_stats=child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            _replace_batchnorm(child)
    return module


def convert_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers of ``net`` -> global-batch statistics, in place (same parameters and
    state-dict keys): ``SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm2d` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return _replace_batchnorm(net)


def wrap_model(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` for training in the current group: unchanged in a single process, else global
    BatchNorm (:func:`convert_batchnorm`, in place) wrapped in DistributedDataParallel."""
    if world_size() == 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    convert_batchnorm(net, device)
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


# ----------------------------------------------------------------------------- loss
@dataclass(frozen=True)
class ShardLoss:
    """One rank's part of a step's loss.

    Attributes
    ----------
    loss : tensor
        Scalar to back-propagate; DDP's gradient average over ranks gives the gradient of the
        single-process loss of the global batch.
    sums : dict of str to float
        This rank's share of ``global_loss_term x global_batch_size`` for ``loss``, ``flow``,
        ``cellprob``, ``classes``, and ``samples`` (its crop count): summed over ranks and steps
        and divided by the summed ``samples``, these are the epoch's sample-weighted means.
    """

    loss: torch.Tensor
    sums: dict[str, float]


def shard_loss(terms, *, samples: int, cells: torch.Tensor, flow_weight: float,
               cellprob_weight: float, class_weight: float) -> ShardLoss:
    """Re-weight one rank's :class:`~flowseg.training.losses.LossTerms` for a global batch.

    Parameters
    ----------
    terms : LossTerms
        Of this rank's ``samples`` crops (flow and cell-probability terms are means over its
        pixels; the class term is a mean over its ``cells`` cell pixels).
    samples : int
        This rank's crops in the step.
    cells : scalar tensor
        This rank's cell pixels in the step.
    flow_weight, cellprob_weight, class_weight : float
        The weights of ``terms.total``.

    Returns
    -------
    ShardLoss
    """
    world = world_size()
    if world == 1:
        values = terms.as_floats()
        return ShardLoss(terms.total, {**{k: v * samples for k, v in values.items()},
                                       "samples": float(samples)})
    counts = torch.tensor([float(samples), float(cells)], dtype=torch.float64, device=cells.device)
    dist.all_reduce(counts)
    total_samples, total_cells = float(counts[0]), max(float(counts[1]), 1.0)
    class_sum = terms.classes * max(float(cells), 1.0)  # sum over this rank's cell pixels
    flow = terms.flow * samples / total_samples
    cellprob = terms.cellprob * samples / total_samples
    classes = class_sum / total_cells
    loss = flow_weight * flow + cellprob_weight * cellprob + class_weight * classes
    parts = {"flow": flow, "cellprob": cellprob, "classes": classes, "loss": loss}
    sums = {k: float(v.detach()) * total_samples for k, v in parts.items()}
    return ShardLoss(loss * world, {**sums, "samples": float(samples)})


# ----------------------------------------------------------------------------- collectives
def all_reduce_sums(values: Mapping[str, float]) -> dict[str, float]:
    """Sum float ``values`` over the ranks (identity in a single process)."""
    if world_size() == 1:
        return dict(values)
    keys = sorted(values)
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (identity in a single process)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world_size() > 1:
        dist.barrier()
