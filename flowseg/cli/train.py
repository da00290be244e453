"""``flowseg-train``: train a flowseg model on Cellpose-style folders (a thin wrapper of ``fit``).

``--data DIR`` is either a ``data_prep`` output (``DIR/train`` and ``DIR/val``) or one
Cellpose-style folder (``<name>.tif``, ``<name>_masks.tif``, ``cell_types.csv``). Class names are
the sorted distinct cell types of the training folder. ``--resume`` continues ``--out`` from its
``last.pt`` with the stored settings (only ``--epochs``, ``--device``, ``--num-workers`` and
``--precision`` may change). A new model takes the channels of the training images (all
grayscale or all colour).

``--pseudo DIR`` adds a pseudo-label folder (``flowseg-data-prep pseudo``: a teacher's
confident cells and ignore masks): ``--pseudo-fraction`` (default 0.2) of each epoch's crops come
from it, the epoch keeping its length; its ignored pixels give no loss.

After a kill: ``--resume`` continues from the last finished epoch. A run killed before its
first epoch ended has no ``last.pt`` to resume: run the same command again without
``--resume``; it accepts an ``--out`` holding only what such a run left (temporary
``.<file>.*.tmp.*`` files, a ``best.pt`` of epoch 1) and removes it. Temporary files of a killed
writer are also removed when a run resumes.

Several processes (GPUs) with DistributedDataParallel: launch under ``torchrun``, e.g.
``torchrun --nproc-per-node 4 --no-python flowseg-train --data DIR --out RUN`` (or
``torchrun --nproc-per-node 4 -m flowseg.cli.train ...``, or ``torchrun ... train ...`` from the
repository root). ``--batch-size`` is then the global batch, split across the processes; each
CUDA process uses ``cuda:LOCAL_RANK``; rank 0 alone validates, logs and writes the run files.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowseg.cli._common import run_main, setup_logging
from flowseg.config import AugmentConfig, ModelConfig, TrainConfig
from flowseg.errors import InputError

if TYPE_CHECKING:  # imported lazily at run time (--help stays fast)
    from flowseg.data.dataset import Sample
    from flowseg.model.checkpoint import Model

__all__ = ["build_parser", "data_folders", "main", "run"]

log = logging.getLogger("flowseg.train")

#: argparse dest -> TrainConfig field, and -> ModelConfig field.
_TRAIN_OPTIONS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "crop": "crop_size",
                  "flow_context": "flow_context", "device": "device", "seed": "seed",
                  "val_every": "val_every",
                  "num_workers": "num_workers", "warmup_epochs": "warmup_epochs",
                  "weight_decay": "weight_decay", "balance_classes": "balance_classes",
                  "precision": "precision", "flow_weight": "flow_weight",
                  "cellprob_weight": "cellprob_weight", "class_weight": "class_weight",
                  "class_grad": "class_grad", "pseudo_fraction": "pseudo_fraction"}
_MODEL_OPTIONS = {"widths": "widths", "blocks": "blocks", "skip": "skip"}
#: ``--pseudo-fraction`` when ``--pseudo`` is given without it.
DEFAULT_PSEUDO_FRACTION = 0.2


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 32,64,128,256, got {text!r}") from None
    if len(widths) < 2 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected at least 2 positive widths, got {text!r}")
    return widths


def _augment_item(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of an :class:`AugmentConfig` field: ``scale=0.5,2``, ``brightness=0``,
    ``flip=false`` (the value's type is the field's)."""
    fields = {f.name: f.default for f in dataclasses.fields(AugmentConfig)}
    key, sep, value = text.partition("=")
    if not sep or key not in fields:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY one of {sorted(fields)}, "
                                         f"got {text!r}")
    default = fields[key]
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false"):
                raise ValueError
            return key, value.lower() == "true"
        if isinstance(default, tuple):
            parsed = tuple(float(v) for v in value.split(","))
            if len(parsed) != len(default):
                raise ValueError
            return key, parsed
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{key}: expected a value like {key}={_plain(default)}, got {text!r}") from None


def _plain(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (config options default to None = the config's default)."""
    p = argparse.ArgumentParser(prog="flowseg-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path,
                   help="data_prep output (DIR/train, DIR/val) or one Cellpose-style folder")
    p.add_argument("--val", type=Path, help="validation folder (default: DIR/val when present)")
    p.add_argument("--out", required=True, type=Path,
                   help="run folder (last.pt, best.pt, history); new, empty, or holding only "
                        "what a run killed in its first epoch left (removed)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--crop", type=int, help="training crop side in pixels (default 256)")
    p.add_argument("--flow-context", type=int, metavar="PX",
                   help="pixels of labels on every side of a crop from which its flow targets "
                        "are computed, so cells cut by the crop keep their whole-cell centre "
                        f"(default {TrainConfig().flow_context}; 0: from the crop alone)")
    p.add_argument("--device", help="auto (CUDA when available), cpu, cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--val-every", type=int, help="score the val images every N epochs")
    p.add_argument("--balance-classes", action="store_true", default=None,
                   help="draw every cell type equally often per epoch (for unbalanced data)")
    p.add_argument("--num-workers", type=int, help="DataLoader workers for augmentation")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"),
                   help="network precision: auto (default) = bf16 autocast on CUDA and on CPUs with "
                        "native bf16 (AVX-512 BF16 / AMX), float32 elsewhere")
    p.add_argument("--flow-weight", type=float, help="loss weight of the flow MSE (default 0.5)")
    p.add_argument("--cellprob-weight", type=float,
                   help="loss weight of the cell-probability BCE (default 1.0)")
    p.add_argument("--class-weight", type=float, help="loss weight of the cell-type cross-entropy (default 0.5)")
    p.add_argument("--class-grad", type=float,
                   help="fraction (0-1) of the cell-type loss gradient reaching the shared "
                        "features (default 0: it trains the class head only)")
    p.add_argument("--augment", type=_augment_item, action="append", metavar="KEY=VALUE",
                   help="change one training augmentation setting (repeatable): "
                        + ", ".join(f"{f.name}={_plain(f.default)}"
                                    for f in dataclasses.fields(AugmentConfig)))
    p.add_argument("--pseudo", type=Path, metavar="DIR", action="append",
                   help="pseudo-label folder (flowseg-data-prep pseudo) mixed into the training "
                        "crops, repeatable; its cell types must be training cell types")
    p.add_argument("--pseudo-fraction", type=float,
                   help=f"fraction of each epoch's crops drawn from --pseudo (default "
                        f"{DEFAULT_PSEUDO_FRACTION} with --pseudo); an epoch keeps its length")
    p.add_argument("--widths", type=_widths, help="channels per level, e.g. 32,64,128,256")
    p.add_argument("--blocks", type=int, help="residual units per level")
    p.add_argument("--skip", choices=("add", "concat"), help="how skips join the decoder")
    p.add_argument("--init", metavar="MODEL",
                   help="fine-tune: start from this model's weights ('default' = the model "
                        "shipped with flowseg, or a .pt file); its architecture is kept, cell "
                        "types it knows keep their class head and tuned thresholds, new types "
                        "get fresh heads (not with --resume)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in --out from its last.pt (a run killed before its "
                           "first epoch ended has none: repeat the command without --resume)")
    mode.add_argument("--overwrite", action="store_true",
                      help="replace the run files (last.pt, best.pt, history.*) in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    return p


def data_folders(data: Path, val: Path | None) -> tuple[Path, Path | None]:
    """Training and validation folders of ``--data`` / ``--val``."""
    if not data.is_dir():
        raise FileNotFoundError(f"--data {data}: no such folder")
    if (data / "train").is_dir():
        train = data / "train"
        if val is None and (data / "val").is_dir():
            val = data / "val"
    else:
        train = data
    if val is not None and not val.is_dir():
        raise FileNotFoundError(f"--val {val}: no such folder")
    return train, val


def _prepare_out(out: Path, *, resume: bool, overwrite: bool, main_rank: bool = True) -> None:
    """Check ``--out``; the main rank deletes the old run files (``--overwrite``) or what a run
    killed in its first epoch left (a plain re-run)."""
    from flowseg.training.engine import RUN_FILES, first_epoch_leftovers, remove_leftovers

    if resume:
        if not (out / "last.pt").is_file():
            raise FileNotFoundError(_nothing_to_resume(out))
        return
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a folder")
    if not main_rank or not out.is_dir() or not any(out.iterdir()):
        return
    if overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        return
    leftovers = first_epoch_leftovers(out)
    if leftovers is None:
        raise FileExistsError(f"--out {out}: folder is not empty (use --resume to continue "
                              "the run, or --overwrite to replace it)")
    remove_leftovers(leftovers)


def _nothing_to_resume(out: Path) -> str:
    from flowseg.training.engine import first_epoch_leftovers

    if out.is_dir() and first_epoch_leftovers(out) is not None:
        return (f"--out {out}: no last.pt to resume: the run stopped before its first epoch "
                "ended; start it again with the same command without --resume (what it left "
                "is removed)")
    return f"--out {out}: no last.pt to resume"


def _overrides(args: argparse.Namespace, options: dict[str, str]) -> dict:
    return {field: getattr(args, dest) for dest, field in options.items()
            if getattr(args, dest) is not None}


def _init_model(name: str | None) -> Model | None:
    """The ``--init`` model (None without it)."""
    if name is None:
        return None
    from flowseg.api import load_model

    return load_model(None if name == "default" else name, device="cpu")


def _configs(args: argparse.Namespace, train_dir: Path, class_names: tuple[str, ...],
             channels: int, init: Model | None = None) -> tuple[TrainConfig, ModelConfig]:
    """Configs from the defaults (or, with --resume, the stored ones; with --init, that model's
    architecture) and the given options; a new model takes the training images' channels."""
    if init is not None:
        from flowseg.training.finetune import init_config

        requested = dataclasses.replace(init.model_config, n_classes=len(class_names),
                                        **_overrides(args, _MODEL_OPTIONS))
        model = init_config(init, class_names, channels=channels, requested=requested)
        return _train_config(args, TrainConfig()), model
    if args.resume:
        stored = _resumable(args.out / "last.pt", train_dir, class_names, channels)
        train, model = stored.train_config or TrainConfig(), stored.model_config
    else:
        train = TrainConfig()
        model = ModelConfig(in_channels=channels, n_classes=len(class_names))
    model = dataclasses.replace(model, **_overrides(args, _MODEL_OPTIONS))
    return _train_config(args, train), model


def _train_config(args: argparse.Namespace, train: TrainConfig) -> TrainConfig:
    """``train`` with the options given on the command line."""
    train = dataclasses.replace(train, **_overrides(args, _TRAIN_OPTIONS))
    if args.pseudo is not None and args.pseudo_fraction is None and not args.resume:
        train = dataclasses.replace(train, pseudo_fraction=DEFAULT_PSEUDO_FRACTION)
    if args.augment:
        train = dataclasses.replace(
            train, augment=dataclasses.replace(train.augment, **dict(args.augment)))
    return train


def _resumable(last: Path, train_dir: Path, class_names: tuple[str, ...], channels: int
               ) -> Model:
    """The run's ``last.pt`` model, refused when the training folder does not fit it."""
    from flowseg.model.checkpoint import load_model

    stored = load_model(last)
    if stored.class_names != class_names:
        new = sorted(set(class_names) - set(stored.class_names))
        gone = sorted(set(stored.class_names) - set(class_names))
        raise InputError(f"--resume {last}: trained on cell types {stored.class_names}, but the "
                         f"training folder {train_dir} has {class_names} (new {new}, missing "
                         f"{gone}); expected the same cell types (start a new run for others)")
    if stored.model_config.in_channels != channels:
        raise InputError(f"--resume {last}: the model takes {stored.model_config.in_channels} "
                         f"channel(s), the images of {train_dir} have {channels}")
    return stored


def _load_data(train_dir: Path, val_dir: Path | None) -> tuple[list[Sample], list[Sample]]:
    """Training and validation samples, refused when there is nothing to learn from or when
    their channels differ."""
    from flowseg.data.dataset import images_without_cells, load_folder

    train_items = load_folder(train_dir)
    if not train_items:
        raise FileNotFoundError(f"{train_dir}: no training images")
    if len(images_without_cells(train_items)) == len(train_items):
        raise InputError(f"{train_dir}: no image has any cell (all {len(train_items)} _masks "
                         "files are 0 everywhere); expected labelled cells to train on")
    val_items = load_folder(val_dir) if val_dir is not None else []
    channels = train_items[0].image.shape[0]  # one count per folder (load_folder checks)
    if val_items and val_items[0].image.shape[0] != channels:
        raise InputError(f"validation folder {val_dir}: images have {val_items[0].image.shape[0]} "
                         f"channel(s), expected {channels} like the training images of {train_dir}")
    return train_items, val_items


def _load_pseudo(args: argparse.Namespace, train_config: TrainConfig, class_names: tuple[str, ...],
                 channels: int) -> list[Sample]:
    """The ``--pseudo`` samples, refused when they cannot mix with the training data."""
    from flowseg.data.dataset import load_folder

    if args.pseudo is None:
        if train_config.pseudo_fraction > 0:
            raise InputError(f"--pseudo-fraction {train_config.pseudo_fraction}: expected a "
                             "pseudo-label folder (--pseudo DIR) to draw from"
                             + (" (the run being resumed used one)" if args.resume else ""))
        return []
    pseudo = []
    for folder in args.pseudo:
        samples = load_folder(folder)
        if not samples:
            raise InputError(f"--pseudo {folder}: no images")
        unknown = sorted({s.cell_type for s in samples} - set(class_names))
        if unknown:
            raise InputError(f"--pseudo {folder}: cell types {unknown} are not training cell "
                             f"types {class_names} (set them in its cell_types.csv, or make it "
                             "with flowseg-data-prep pseudo --cell-type)")
        if samples[0].image.shape[0] != channels:
            raise InputError(f"--pseudo {folder}: images have {samples[0].image.shape[0]} "
                             f"channel(s), expected {channels} like the training images")
        pseudo += samples
    log.info("pseudo-labels: %d images (%s), %.0f%% of each epoch's crops", len(pseudo),
             ", ".join(map(str, args.pseudo)), 100 * train_config.pseudo_fraction)
    return pseudo


def _fit_size(model: Model, train_items: list[Sample], val_items: list[Sample], out: Path) -> None:
    """Fit the size model (:mod:`flowseg.training.size_fit`) of the run's final model and store
    it in ``best.pt`` (or ``last.pt`` without validation; its training state is kept)."""
    from flowseg.model.checkpoint import load_train_state, save_model
    from flowseg.training.size_fit import attach_size_model, fit_model_size

    size = fit_model_size(model, train_items, val_items)
    attach_size_model(model, size)
    if val_items:
        save_model(out / "best.pt", model)
    else:
        save_model(out / "last.pt", model, train_state=load_train_state(out / "last.pt"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the program; returns the exit code."""
    from flowseg.data.dataset import class_names_of
    from flowseg.training.distributed import launch_env, process_group
    from flowseg.training.engine import fit

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.init is not None and args.resume:
        parser.error("--init starts a new run; --resume continues one (its weights come from "
                     "last.pt): give one of them")
    env = launch_env()  # torchrun's RANK / WORLD_SIZE; a plain run is rank 0 of 1
    setup_logging(args.quiet or env.rank != 0)
    train_dir, val_dir = data_folders(args.data, args.val)
    _prepare_out(args.out, resume=args.resume, overwrite=args.overwrite, main_rank=env.rank == 0)
    train_items, val_items = _load_data(train_dir, val_dir)
    class_names = class_names_of(train_items)
    init = _init_model(args.init)
    train_config, model_config = _configs(args, train_dir, class_names,
                                          train_items[0].image.shape[0], init)
    pseudo_items = _load_pseudo(args, train_config, class_names, train_items[0].image.shape[0])
    if val_dir is None:
        log.warning("no validation folder (--val, or DIR/val): no val scores, best.pt is not "
                    "written; last.pt is the final model")
    log.info("training on %d images (%s), validating on %d; classes %s; %d process(es)",
             len(train_items), train_dir, len(val_items), class_names, env.world_size)
    with process_group(train_config.device):
        model = fit(train_items, val_items, train_config, model_config, args.out,
                    resume=args.resume, progress=not args.quiet, init=init,
                    pseudo_items=pseudo_items)
    if env.rank == 0:
        _fit_size(model, train_items, val_items, args.out)
    if val_items:
        log.info("done: %s (val score %s)", args.out / "best.pt", model.metadata.get("val_score"))
    else:
        log.info("done: %s", args.out / "last.pt")
    return 0


def run() -> int:
    """Console-script entry point."""
    return run_main("flowseg-train", main)


if __name__ == "__main__":  # torchrun -m flowseg.cli.train ...
    sys.exit(run())
