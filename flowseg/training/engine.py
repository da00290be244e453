"""Training: ``train_one_epoch``, ``evaluate_val`` and ``fit`` (one call for a whole run).

Flat, in the style of the torchvision segmentation references. A run directory holds::

    last.pt       every epoch: model + optimizer, scheduler, epoch, RNG states, history
    best.pt       the model with the best validation score so far (when there are val images)
    history.csv   one row per epoch: loss terms, val score, seconds, learning rate
    history.png   the curves

A process killed while writing one of them leaves its temporary file
(``.<name>.<random>.tmp<suffix>``, see :func:`temporary_files`); ``fit`` removes those when the
run starts again or resumes.

Flow targets are computed on the training device from the augmented label crops
(``flowseg.flows.labels_to_flows``), so geometric augmentation never has to transform flow
vectors. Randomness: weights from ``torch.manual_seed(seed)``; data order and crops are pure
functions of ``(seed, epoch, index)``, so a resumed run equals an uninterrupted one.

Pseudo-labelled images (``fit(..., pseudo_items=...)``, made by ``flowseg-data-prep pseudo``)
take ``TrainConfig.pseudo_fraction`` of each epoch's crops
(:func:`flowseg.data.dataset.mixed_epoch_order`); their ignore masks reach the loss, where
ignored pixels weigh 0.

Under ``torchrun`` (an initialised ``torch.distributed`` process group) ``fit`` trains with
DistributedDataParallel: ``TrainConfig.batch_size`` is the global batch, split across the ranks,
BatchNorm statistics and the loss are those of the global batch, and only rank 0 validates and
writes the run files (see :mod:`flowseg.training.distributed`).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from flowseg.config import ModelConfig, SegmentConfig, TrainConfig
from flowseg.data.dataset import (CropDataset, Sample, class_names_of, images_without_cells,
                                  mixed_epoch_order)
from flowseg.device import autocast, preferred_memory_format, resolve_precision
from flowseg.errors import some_names
from flowseg.io.atomic import atomic_path, leftover_temporaries
from flowseg.model.checkpoint import Model, load_model, load_train_state, save_model
from flowseg.model.unet import UNet
from flowseg.training.distributed import (all_reduce_sums, barrier, broadcast_object, is_main,
                                          rank, rank_device, shard_batches, shard_loss,
                                          world_size, wrap_model)
from flowseg.training.finetune import init_segment_config, init_weights
from flowseg.training.losses import class_pixels, segmentation_loss

__all__ = ["EpochRecord", "ValResult", "HISTORY_FIELDS", "crop_targets", "make_optimizer",
           "make_scheduler", "train_one_epoch", "evaluate_val", "fit", "RUN_FILES",
           "first_epoch_leftovers", "remove_leftovers", "temporary_files"]

log = logging.getLogger(__name__)

#: Files ``fit`` writes into a run directory.
RUN_FILES = ("last.pt", "best.pt", "history.csv", "history.png")
#: Config fields that may differ between a run and its resumption.
_RESUMABLE_CHANGES = {"epochs", "device", "num_workers", "precision"}


@dataclass(frozen=True)
class EpochRecord:
    """One row of ``history.csv``; ``val_score`` / ``val_class_accuracy`` are NaN when not scored."""

    epoch: int
    loss: float
    flow: float
    cellprob: float
    classes: float
    val_score: float
    val_class_accuracy: float
    seconds: float
    lr: float


HISTORY_FIELDS = tuple(f.name for f in dataclasses.fields(EpochRecord))


@dataclass(frozen=True)
class ValResult:
    """Validation of a network: the competition score and the image-level class accuracy.

    Attributes
    ----------
    score : float
        Mean over images of :func:`flowseg.metrics.image_score` (IoU 0.50:0.05:0.95).
    class_accuracy : float
        Fraction of images whose cell type (argmax of the mean class probability over predicted
        cell pixels) is right; NaN when no image's type is a known class.
    image_scores : tuple of float
    """

    score: float
    class_accuracy: float
    image_scores: tuple[float, ...]


# ----------------------------------------------------------------------------- optimisation
def make_optimizer(net: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and BatchNorm parameters."""
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)


def lr_factor(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: :func:`lr_factor` over ``config.epochs * steps_per_epoch`` steps."""
    total = config.epochs * steps_per_epoch
    warmup = min(total, round(config.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        return lr_factor(step, total_steps=total, warmup_steps=warmup)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def crop_targets(labels: torch.Tensor, context: int, *, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow targets of crops whose labels carry ``context`` extra pixels on every side.

    Parameters
    ----------
    labels : (B, h + 2c, w + 2c) tensor of int32
        From :class:`~flowseg.data.dataset.CropDataset` with ``label_context = c = context``.
    context : int
        ``c`` (0: the labels are the crops).
    device : torch.device
        Where the targets are computed.

    Returns
    -------
    labels : (B, h, w) tensor of int32
        The crops' labels.
    targets : (B, 2, h, w) tensor of float32
        :func:`~flowseg.flows.labels_to_flows` of the wide labels, cut to the crops: a cell cut
        by a crop's edge points to the centre of its (wider) whole.
    """
    from flowseg.flows import labels_to_flows

    targets = labels_to_flows(labels, device=device)
    if context == 0:
        return labels, targets
    if min(labels.shape[-2:]) <= 2 * context:
        raise ValueError(f"labels: expected crops wider than 2 * context = {2 * context} "
                         f"pixels, got shape {tuple(labels.shape)}")
    inner = (slice(context, -context),) * 2
    return labels[(..., *inner)].contiguous(), targets[(..., *inner)].contiguous()


def train_one_epoch(net: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, *, config: TrainConfig,
                    device: torch.device, epoch: int = 0, progress: bool = True) -> dict[str, float]:
    """One pass over ``loader``; returns the sample-weighted mean loss terms.

    In a process group ``net`` is the DDP-wrapped network, ``loader`` yields this rank's share
    of each global batch, and the returned means are over the global batches (all ranks).

    Returns
    -------
    dict
        ``{"loss", "flow", "cellprob", "classes"}`` floats.

    Raises
    ------
    FloatingPointError
        A non-finite loss (names the epoch and step).
    """
    net.train()
    dtype = resolve_precision(config.precision, device)
    layout = preferred_memory_format(device, dtype)
    sums = dict.fromkeys(("loss", "flow", "cellprob", "classes", "samples"), 0.0)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress or not is_main())
    for step, (images, labels, class_index, ignore) in enumerate(bar):
        images = images.to(device, non_blocking=True).contiguous(memory_format=layout)
        labels = labels.to(device, non_blocking=True)
        ignore = ignore.to(device, non_blocking=True)
        labels, targets = crop_targets(labels, config.flow_context, device=device)
        with autocast(device, dtype):
            output = net(images, class_grad=config.class_grad)
        terms = segmentation_loss(output, targets, labels, class_index.to(device),
                                  flow_weight=config.flow_weight,
                                  cellprob_weight=config.cellprob_weight,
                                  class_weight=config.class_weight, ignore=ignore)
        if not torch.isfinite(terms.total):
            raise FloatingPointError(f"epoch {epoch + 1} step {step + 1}: non-finite loss "
                                     f"{terms.as_floats()}")
        part = shard_loss(terms, samples=len(images), cells=class_pixels(labels, ignore).sum(),
                          flow_weight=config.flow_weight, cellprob_weight=config.cellprob_weight,
                          class_weight=config.class_weight)
        optimizer.zero_grad(set_to_none=True)
        part.loss.backward()
        optimizer.step()
        scheduler.step()
        for key, value in part.sums.items():
            sums[key] += value
        bar.set_postfix(loss=f"{float(terms.total.detach()):.4f}")
    sums = all_reduce_sums(sums)
    seen = sums.pop("samples")
    return {key: value / max(seen, 1) for key, value in sums.items()}


# ----------------------------------------------------------------------------- validation
def evaluate_val(model: Model, samples: Sequence[Sample], *, batch_size: int = 8) -> ValResult:
    """Segment ``samples`` exactly as users will (:func:`flowseg.segment`, whole images, the
    model's own ``segment_config``) and score them with the competition metric.

    ``class_accuracy`` is the fraction of samples whose predicted image cell type is right
    (samples whose type is not one of the model's classes are not counted).
    """
    from flowseg.api import PredictConfig, segment
    from flowseg.metrics import image_score

    results = segment([s.image for s in samples], model,
                      predict=PredictConfig(batch_size=batch_size, tile=None))
    scores = [float(image_score(s.labels, r.labels).score) for s, r in zip(samples, results)]
    typed = [(s, r) for s, r in zip(samples, results) if s.cell_type in model.class_names]
    correct = sum(r.image_cell_type == s.cell_type for s, r in typed)
    return ValResult(score=float(np.mean(scores)) if scores else float("nan"),
                     class_accuracy=correct / len(typed) if typed else float("nan"),
                     image_scores=tuple(scores))


# ----------------------------------------------------------------------------- run files
def write_history(path: Path, history: Sequence[EpochRecord]) -> None:
    """``history.csv``: one row per epoch, columns :data:`HISTORY_FIELDS`."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HISTORY_FIELDS)
        for record in history:
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v
                             for v in dataclasses.astuple(record)])


def plot_history(path: Path, history: Sequence[EpochRecord]) -> None:
    """``history.png``: loss terms (log scale) and validation score against epoch."""
    from matplotlib.figure import Figure  # lazy: Agg canvas, no pyplot state

    epochs = [r.epoch for r in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    losses, val = fig.subplots(1, 2)
    for key in ("loss", "flow", "cellprob", "classes"):
        losses.plot(epochs, [max(getattr(r, key), 1e-8) for r in history], label=key)
    losses.set(yscale="log", xlabel="epoch", title="training loss")
    losses.legend()
    scored = [r for r in history if not math.isnan(r.val_score)]
    val.plot([r.epoch for r in scored], [r.val_score for r in scored], "o-", label="score")
    val.plot([r.epoch for r in scored], [r.val_class_accuracy for r in scored], "s--",
             label="class accuracy")
    val.set(ylim=(0, 1), xlabel="epoch", title="validation")
    val.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)


def temporary_files(out_dir: str | os.PathLike) -> list[Path]:
    """Temporary files of run files in ``out_dir``: left by a process killed while writing one.

    :func:`~flowseg.io.atomic.atomic_path` writes ``<name>`` as ``.<name>.<random>.tmp<suffix>``
    beside it and renames it into place when complete, so only a killed writer leaves one.
    """
    return sorted(p for name in RUN_FILES for p in leftover_temporaries(Path(out_dir) / name))


def first_epoch_leftovers(out_dir: str | os.PathLike) -> list[Path] | None:
    """The files of ``out_dir`` if all are leftovers of a run killed in its first epoch, else None.

    Such a run wrote no ``last.pt``; it may have left temporary files (:func:`temporary_files`)
    and a ``best.pt`` of epoch 1 (killed between writing it and ``last.pt``). An empty or
    missing folder gives ``[]``.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    files = sorted(out_dir.iterdir())
    leftovers = set(temporary_files(out_dir))
    best = out_dir / "best.pt"
    if best in files and not (out_dir / "last.pt").exists() and _epoch_of(best) == 1:
        leftovers.add(best)
    return files if leftovers.issuperset(files) else None


def _epoch_of(path: Path) -> int | None:
    """The epoch stored in a model file's metadata; None when it is not a readable model file."""
    try:
        return load_model(path).metadata.get("epoch")
    except (ValueError, OSError):  # InputError is a ValueError
        return None


def remove_leftovers(paths: Sequence[Path]) -> None:
    """Delete ``paths``, files a killed run left, with a warning that names them."""
    if not paths:
        return
    named = [f"{p} ({p.stat().st_size / 1e6:.1f} MB)" for p in paths if p.is_file()]
    for path in paths:
        path.unlink(missing_ok=True)
    log.warning("removed %d file(s) left by an interrupted run: %s", len(paths), some_names(named))


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ----------------------------------------------------------------------------- fit
@dataclass
class _Run:
    """Mutable state of a run between epochs."""

    net: UNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    start_epoch: int = 0
    history: list[EpochRecord] = dataclasses.field(default_factory=list)
    best_score: float = -math.inf


def _check_fit_inputs(train_items: Sequence[Sample], model_config: ModelConfig,
                      config: TrainConfig) -> tuple[str, ...]:
    if not train_items:
        raise ValueError("train_items: expected at least one training sample, got none")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    class_names = class_names_of(train_items)
    if model_config.n_classes != len(class_names):
        raise ValueError(f"model_config.n_classes: expected {len(class_names)} (the training cell "
                         f"types {class_names}), got {model_config.n_classes}")
    channels = {s.image.shape[0] for s in train_items}
    if channels != {model_config.in_channels}:
        raise ValueError(f"train_items: model takes {model_config.in_channels} channel(s), "
                         f"images have {sorted(channels)}")
    if len(images_without_cells(train_items)) == len(train_items):
        raise ValueError(f"train_items: expected labelled cells, but none of the "
                         f"{len(train_items)} training images has any (all labels are 0)")
    return class_names


def _check_pseudo_items(pseudo_items: Sequence[Sample], class_names: tuple[str, ...],
                        model_config: ModelConfig, config: TrainConfig) -> None:
    """Pseudo-labelled samples must fit the model (channels, cell types) and be used."""
    if config.pseudo_fraction > 0 and not pseudo_items:
        raise ValueError(f"config.pseudo_fraction: {config.pseudo_fraction} of the crops should "
                         "come from pseudo-labelled images, but pseudo_items is empty")
    if pseudo_items and config.pseudo_fraction == 0:
        log.warning("%d pseudo-labelled images are not used: pseudo_fraction is 0", len(pseudo_items))
    unknown = sorted({s.cell_type for s in pseudo_items} - set(class_names))
    if unknown:
        raise ValueError(f"pseudo_items: cell types {unknown} are not among the training "
                         f"classes {class_names}")
    channels = {s.image.shape[0] for s in pseudo_items} - {model_config.in_channels}
    if channels:
        raise ValueError(f"pseudo_items: model takes {model_config.in_channels} channel(s), "
                         f"pseudo-labelled images have {sorted(channels)}")


def _warn_about_data(train_items: Sequence[Sample], val_items: Sequence[Sample],
                     class_names: tuple[str, ...], crop_size: int) -> None:
    """Log what trains or scores other than a user may think (the messages name the images)."""
    empty = images_without_cells(train_items)
    if empty:
        log.warning("%d of %d training images have no cells (they teach background only): %s",
                    len(empty), len(train_items), some_names(empty))
    small = [f"{s.name} ({s.labels.shape[0]}x{s.labels.shape[1]})" for s in train_items
             if min(s.labels.shape) < crop_size]
    if small:
        log.warning("%d of %d training images are smaller than the %d-pixel crop (crop_size, "
                    "--crop) and are zero-padded to it: %s", len(small), len(train_items),
                    crop_size, some_names(small))
    untyped = [s.name for s in val_items if s.cell_type not in class_names]
    if untyped:
        types = sorted({s.cell_type for s in val_items} - set(class_names))
        log.warning("%d validation images have cell types %s that are not training classes %s: "
                    "they count in the val score, not in the class accuracy: %s", len(untyped),
                    types, class_names, some_names(untyped))


def _resume(run: _Run, out_dir: Path, config: TrainConfig, model_config: ModelConfig,
            class_names: tuple[str, ...], device: torch.device) -> None:
    last = out_dir / "last.pt"
    if not last.is_file():
        raise FileNotFoundError(f"{last}: nothing to resume (no last.pt in the run folder)")
    stored = load_model(last, device=device)
    if stored.model_config != model_config:
        raise ValueError(f"{last}: model config {stored.model_config} differs from the requested "
                         f"{model_config}")
    if stored.class_names != class_names:
        raise ValueError(f"{last}: trained on classes {stored.class_names}, the training data has "
                         f"{class_names}; expected the same classes to resume")
    old = stored.train_config.to_dict() if stored.train_config else {}
    changed = sorted(k for k, v in config.to_dict().items()
                     if k not in _RESUMABLE_CHANGES and old.get(k) != v)
    if changed:
        raise ValueError(f"{last}: cannot resume with different settings {changed} "
                         f"(stored {[old.get(k) for k in changed]})")
    state = load_train_state(last, device=device)
    run.net.load_state_dict(stored.net.state_dict())
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    run.start_epoch = int(state["epoch"])
    run.history = [EpochRecord(**row) for row in state["history"]]
    run.best_score = float(state["best_score"])
    log.info("resuming %s after epoch %d", out_dir, run.start_epoch)


def _train_state(run: _Run, epoch: int) -> dict[str, Any]:
    return {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "epoch": epoch, "rng": _rng_state(), "best_score": run.best_score,
            "history": [dataclasses.asdict(r) for r in run.history]}


def _loader(dataset: CropDataset, config: TrainConfig, epoch: int, device: torch.device, *,
            n_labelled: int) -> DataLoader:
    """This rank's share of each global batch of the epoch's deterministic order (the dataset's
    first ``n_labelled`` samples are the labelled ones, the rest pseudo-labelled)."""
    dataset.set_epoch(epoch)
    labelled = dataset.samples[:n_labelled]
    groups = [s.cell_type for s in labelled] if config.balance_classes else None
    order = mixed_epoch_order(n_labelled, len(dataset) - n_labelled,
                              fraction=config.pseudo_fraction, seed=config.seed, epoch=epoch,
                              groups=groups)
    batches = shard_batches(order, config.batch_size, rank=rank(), world_size=world_size())
    return DataLoader(dataset, batch_sampler=batches, num_workers=config.num_workers,
                      pin_memory=device.type == "cuda")


def _validate(model: Model, val_items: Sequence[Sample], config: TrainConfig, epoch: int
              ) -> ValResult | None:
    """Rank 0 scores the val images when due; every rank receives the result."""
    due = (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs
    if not val_items or not due:
        return None
    val = evaluate_val(model, val_items, batch_size=config.batch_size) if is_main() else None
    return broadcast_object(val)


def fit(train_items: Sequence[Sample], val_items: Sequence[Sample], config: TrainConfig,
        model_config: ModelConfig, out_dir: str | os.PathLike, *, resume: bool = False,
        progress: bool = True, segment_config: SegmentConfig | None = None,
        on_epoch_end: Callable[[EpochRecord], None] | None = None,
        init: Model | None = None, pseudo_items: Sequence[Sample] = ()) -> Model:
    """Train a model; writes ``last.pt``, ``best.pt``, ``history.csv``, ``history.png`` to ``out_dir``.

    Parameters
    ----------
    train_items, val_items : sequence of Sample
        Normalised images with labels and cell types; ``val_items`` may be empty (then no
        ``best.pt``: the last epoch's model is the result).
    config : TrainConfig
    model_config : ModelConfig
        ``n_classes`` must equal the number of distinct training cell types; class names are
        those types, sorted.
    out_dir : path-like
        Run directory; must not hold a ``last.pt`` unless ``resume``. In a process group
        only rank 0 writes it; every rank reads ``last.pt`` to resume. Temporary files of run
        files that a killed run left (:func:`temporary_files`) are removed at the start.
    resume : bool
        Continue from ``out_dir/last.pt`` (the epoch after the last finished one).
    progress : bool
        tqdm progress bars.
    segment_config : SegmentConfig, optional
        Thresholds used to segment the val images, stored in the model files.
    on_epoch_end : callable, optional
        Called with each epoch's record after its files are written.
    init : Model, optional
        Start from this model's weights (fine-tuning; ignored when resuming): ``model_config``
        must be :func:`flowseg.training.finetune.init_config` of it. Classes it knows keep their
        head rows and, when ``segment_config`` is None, their tuned thresholds.
    pseudo_items : sequence of Sample
        Pseudo-labelled images (with ignore masks): ``config.pseudo_fraction`` of each epoch's
        crops come from them. Their cell types must be training classes.

    Returns
    -------
    Model
        ``best.pt``'s model when validation ran, else the last epoch's.
    """
    class_names = _check_fit_inputs(train_items, model_config, config)
    _check_pseudo_items(pseudo_items, class_names, model_config, config)
    if segment_config is None:
        segment_config = (SegmentConfig() if init is None
                          else init_segment_config(init, class_names))
    if config.batch_size < world_size():
        raise ValueError(f"batch_size: the global batch must hold at least one crop per process "
                         f"({world_size()}), got {config.batch_size}")
    device = rank_device(config.device)
    out_dir = Path(out_dir)
    if not resume and (out_dir / "last.pt").exists():
        raise FileExistsError(f"{out_dir}: already holds a run (last.pt); resume it or use a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main():
        remove_leftovers(temporary_files(out_dir))
        _warn_about_data(train_items, val_items, class_names, config.crop_size)
    torch.manual_seed(config.seed)
    dtype = resolve_precision(config.precision, device)
    net = UNet(model_config)
    if init is not None and not resume:
        new = init_weights(net, init, class_names)
        log.info("starting from the initial model's weights%s",
                 f"; new classes (fresh heads): {', '.join(new)}" if new else "")
    net = net.to(device, memory_format=preferred_memory_format(device, dtype))
    log.info("training on %s in %s", device, "bf16 autocast" if dtype == torch.bfloat16 else "float32")
    dataset = CropDataset([*train_items, *pseudo_items], class_names, crop_size=config.crop_size,
                          augment=config.augment, seed=config.seed,
                          label_context=config.flow_context)
    steps = math.ceil(len(train_items) / config.batch_size)
    optimizer = make_optimizer(net, config)
    run = _Run(net, optimizer, make_scheduler(optimizer, config, steps))
    if resume:
        _resume(run, out_dir, config, model_config, class_names, device)
    if not val_items and is_main():
        log.warning("no validation images: best.pt is not written; the last epoch's model is kept")
    train_net = wrap_model(net, device)  # DDP with global BatchNorm in a process group
    model = Model(net, model_config, class_names, segment_config, config)
    for epoch in range(run.start_epoch, config.epochs):
        t0 = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        loader = _loader(dataset, config, epoch, device, n_labelled=len(train_items))
        terms = train_one_epoch(train_net, loader, run.optimizer, run.scheduler, config=config,
                                device=device, epoch=epoch, progress=progress)
        val = _validate(model, val_items, config, epoch)
        record = EpochRecord(epoch + 1, terms["loss"], terms["flow"], terms["cellprob"],
                             terms["classes"], val.score if val else math.nan,
                             val.class_accuracy if val else math.nan,
                             time.perf_counter() - t0, lr)
        run.history.append(record)
        _end_epoch(run, model, record, out_dir)
        barrier()  # the run files of this epoch exist for every rank
        if on_epoch_end is not None:
            on_epoch_end(record)
    if val_items and (out_dir / "best.pt").exists():
        return load_model(out_dir / "best.pt", device=device)
    if world_size() > 1:  # a plain network (no DDP BatchNorm layers) for the caller
        return load_model(out_dir / "last.pt", device=device)
    net.eval()
    return model


def _end_epoch(run: _Run, model: Model, record: EpochRecord, out_dir: Path) -> None:
    """Write best.pt (when the val score improved), last.pt, history.csv and history.png
    (rank 0 only; every rank tracks the best score)."""
    model.metadata = {"epoch": record.epoch, "val_score": record.val_score}
    improved = not math.isnan(record.val_score) and record.val_score > run.best_score
    if improved:
        run.best_score = record.val_score
    if not is_main():
        return
    if improved:
        save_model(out_dir / "best.pt", model)
    save_model(out_dir / "last.pt", model, train_state=_train_state(run, record.epoch))
    write_history(out_dir / "history.csv", run.history)
    plot_history(out_dir / "history.png", run.history)
    val = "" if math.isnan(record.val_score) else f" val {record.val_score:.4f}"
    log.info("epoch %d: loss %.4f (flow %.4f, cellprob %.4f, classes %.4f)%s  %.1fs",
             record.epoch, record.loss, record.flow, record.cellprob, record.classes, val,
             record.seconds)
