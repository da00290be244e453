"""Benchmark: cell-type decisions and per-class thresholds tuned on validation (synthetic).

Trains a small flowseg model on CPU on seeded synthetic images of three morphologies (one type
per image, like the competition), then, on held-apart splits:

* tunes per-class values (cellprob threshold, flow threshold, min size) on the val split with
  :func:`flowseg.tuning.tune` (network run once, maps cached), with its default ``min_gain``
  (any gain over the global values) and with ``min_gain=0.005``,
* grid-searches the best single global set of values on the same val split,
* reports on the test split: per-instance and per-image type accuracy, and the competition
  score with the defaults, the best global set and the tuned per-class values, for both
  ``class_source`` settings, plus the tuning time.

Usage::

    python benchmarks/tuning.py [--work DIR] [--epochs 60] [--train-per-type 24] [--threads 2]

The trained model is kept in ``--work`` (``model.pt``) and reused when the training settings
are unchanged (``--retrain`` forces training).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from flowseg.api import PredictConfig, instance_classes, predict_maps, segment_maps
from flowseg.config import AugmentConfig, ClassThresholds, ModelConfig, SegmentConfig, TrainConfig
from flowseg.data.dataset import make_sample
from flowseg.model.checkpoint import load_model
from flowseg.synthetic import KINDS, make_synthetic
from flowseg.training.engine import fit
from flowseg.tuning import DEFAULT_MIN_GAIN, TuningData, TuningGrid, best_global, grid_scores, score_config, tune

log = logging.getLogger("benchmarks.tuning")

#: A larger ``min_gain`` shown beside tune's default (classes keep the global values unless
#: their own gain more than this on their val images).
GUARDED_MIN_GAIN = 0.005
#: Seed offsets of the three splits (disjoint seeds per type and split).
SPLIT_SEEDS = {"train": 0, "val": 10_000, "test": 20_000}


def load_split(split: str, n_per_type: int, shape: tuple[int, int], *, offset: int = 0):
    """Raw images, truths and types of a split (images are normalised by predict_maps);
    ``offset`` (< 1000 - n_per_type) shifts the seeds to draw another split of the same kind."""
    images, truths, types = [], [], []
    for k, kind in enumerate(KINDS):
        for i in range(n_per_type):
            seed = SPLIT_SEEDS[split] + 1000 * k + offset + i
            image, labels = make_synthetic(kind, shape=shape, seed=seed)
            images.append(image)
            truths.append(labels)
            types.append(kind)
    return images, truths, tuple(types)


def make_split(split: str, n_per_type: int, shape: tuple[int, int]):
    """Seeded synthetic training samples, ``n_per_type`` of each morphology (cell type = kind)."""
    images, truths, types = load_split(split, n_per_type, shape)
    return [make_sample(f"{split}_{kind}_{i:03d}", image, labels, kind)
            for i, (image, labels, kind) in enumerate(zip(images, truths, types))]


def train_model(args) -> tuple[Path, float]:
    """Train (or reuse) the benchmark model; returns its path and the training seconds."""
    work = Path(args.work)
    settings = {"epochs": args.epochs, "train_per_type": args.train_per_type,
                "shape": args.shape, "widths": [16, 32, 64], "seed": 0}
    path, stamp = work / "model.pt", work / "model.json"
    if (not args.retrain and path.exists() and stamp.exists()
            and json.loads(stamp.read_text())["settings"] == settings):
        return path, json.loads(stamp.read_text())["seconds"]
    shape = (args.shape, args.shape)
    train = make_split("train", args.train_per_type, shape)
    config = TrainConfig(epochs=args.epochs, batch_size=8, lr=3e-3, warmup_epochs=2.0,
                         crop_size=128, val_every=10 ** 6, seed=0, device="cpu",
                         augment=AugmentConfig(scale=(0.9, 1.1)))
    model_config = ModelConfig(n_classes=len(KINDS), widths=(16, 32, 64))
    run_dir = work / "run"
    if (run_dir / "last.pt").exists():
        (run_dir / "last.pt").unlink()
    t0 = time.perf_counter()
    model = fit(train, [], config, model_config, run_dir, progress=False,
                on_epoch_end=lambda r: log.info("epoch %d loss %.4f (classes %.4f) %.1fs",
                                                r.epoch, r.loss, r.classes, r.seconds))
    seconds = time.perf_counter() - t0
    from flowseg.model.checkpoint import save_model

    save_model(path, model)
    stamp.write_text(json.dumps({"settings": settings, "seconds": seconds}))
    return path, seconds


def type_accuracy(data: TuningData, config: SegmentConfig) -> dict[str, float]:
    """Cell-type accuracy on images of one true type each.

    ``instance (pred)``: predicted instances whose type is their image's type;
    ``instance (true)``: true instances whose highest mean class probability is their image's
    type; ``image``: images whose area-weighted majority type is right.
    """
    results = segment_maps(data.maps, data.class_names, config=config)
    pred_ok = sum(sum(t == kind for t in r.cell_types) for r, kind in zip(results, data.cell_types))
    n_pred = sum(r.n_instances for r in results)
    true_ok = n_true = 0
    for m, truth, kind in zip(data.maps, data.truths, data.cell_types):
        classes = instance_classes(truth, torch.softmax(m[3:], 0).numpy())[1:]
        present = np.bincount(truth.ravel(), minlength=len(classes) + 1)[1:] > 0
        true_ok += int((classes[present] == data.class_names.index(kind)).sum())
        n_true += int(present.sum())
    image_ok = sum(r.image_cell_type == kind for r, kind in zip(results, data.cell_types))
    return {"instance (pred)": pred_ok / max(n_pred, 1), "instance (true)": true_ok / max(n_true, 1),
            "image": image_ok / len(results)}


def _values_config(values: ClassThresholds, **kw) -> SegmentConfig:
    return SegmentConfig(cellprob_threshold=values.cellprob_threshold,
                         flow_threshold=values.flow_threshold, min_size=values.min_size, **kw)


def _per_type(scores: np.ndarray, types: tuple[str, ...]) -> list[float]:
    t = np.array(types)
    return [float(scores[t == kind].mean()) for kind in KINDS] + [float(scores.mean())]


def _maps(model, split: str, n: int, shape: tuple[int, int], offset: int = 0) -> TuningData:
    images, truths, types = load_split(split, n, shape, offset=offset)
    maps = predict_maps(images, model, predict=PredictConfig(tile=None, tta=False))
    return TuningData(maps, truths, types, model.class_names)


def _configs(val: TuningData, grid: TuningGrid) -> tuple[dict[str, SegmentConfig], dict]:
    """The compared configs (tuned on ``val``) and the tuning results."""
    default = SegmentConfig()
    t0 = time.perf_counter()
    global_values = best_global(grid_scores(val, grid, config=default), grid, config=default)
    global_seconds = time.perf_counter() - t0
    result = tune(val, config=default, grid=grid)
    guarded = tune(val, config=default, grid=grid, min_gain=GUARDED_MIN_GAIN)
    configs = {"defaults": default, "best global (val grid)": _values_config(global_values),
               f"per class (tune, min_gain {DEFAULT_MIN_GAIN:g})": result.config,
               f"per class (min_gain {GUARDED_MIN_GAIN:g})": guarded.config}
    return configs, {"global": global_values, "global_seconds": global_seconds, "result": result,
                     "guarded": guarded}


def _table(configs: dict[str, SegmentConfig], val: TuningData, test: TuningData) -> dict:
    """(name, class_source) -> (test score per type + all, val mean)."""
    out = {}
    for name, config in configs.items():
        for source in ("image", "instance"):
            c = dataclasses.replace(config, class_source=source)
            out[name, source] = (_per_type(score_config(test, c), test.cell_types),
                                 float(score_config(val, c).mean()))
    return out


def evaluate(model, args) -> None:
    shape = (args.eval_shape, args.eval_shape)
    grid = TuningGrid()
    t0 = time.perf_counter()
    val, test = _maps(model, "val", args.val_per_type, shape), _maps(model, "test", args.test_per_type, shape)
    network = time.perf_counter() - t0
    configs, info = _configs(val, grid)
    acc = type_accuracy(test, SegmentConfig())
    print(f"\nnetwork on {len(val.maps)} val + {len(test.maps)} test images "
          f"({args.eval_shape}x{args.eval_shape}): {network:.1f} s")
    print(f"tune ({info['result'].n_trials} grid points x {len(val.maps)} val images, incl. exact "
          f"before/after scoring): {info['result'].seconds:.1f} s; global grid search alone: "
          f"{info['global_seconds']:.1f} s")
    print("\ncell-type accuracy on test: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()))
    table = _table(configs, val, test)
    head = f"{'values':<30} {'source':<9}" + "".join(f"{k:>10}" for k in (*KINDS, "all")) + f"{'val all':>9}"
    print("\nscore on held-apart test images (val mean for reference)\n" + head + "\n" + "-" * len(head))
    for (name, source), (test_scores, val_all) in table.items():
        print(f"{name:<30} {source:<9}" + "".join(f"{v:>10.4f}" for v in test_scores) + f"{val_all:>9.4f}")
    print("\nbest global values:", info["global"])
    for name, res in ((f"min_gain {DEFAULT_MIN_GAIN:g}", info["result"]),
                      (f"min_gain {GUARDED_MIN_GAIN:g}", info["guarded"])):
        for kind, c in res.per_class.items():
            print(f"{name:<14} {kind:<10} {'own' if c.own else 'global':<6} {c.values}  "
                  f"val {c.before:.4f} -> {c.after:.4f}")
    if args.repeats > 1:
        _repeats(model, args, shape, grid, test, table)


def _repeats(model, args, shape, grid, test, first) -> None:
    """Tune again on other val splits: test 'all' score of each config, val mean per source."""
    tables = [first]
    for r in range(1, args.repeats):
        val = _maps(model, "val", args.val_per_type, shape, offset=100 * r)
        tables.append(_table(_configs(val, grid)[0], val, test))
    print(f"\nover {args.repeats} val splits (same test images): test 'all' mean +- std, "
          f"val mean +- std")
    for key in first:
        t = np.array([tab[key][0][-1] for tab in tables])
        v = np.array([tab[key][1] for tab in tables])
        print(f"{key[0]:<30} {key[1]:<9} test {t.mean():.4f} +- {t.std():.4f}   "
              f"val {v.mean():.4f} +- {v.std():.4f}   per split {np.round(t, 4).tolist()}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/flowseg_bench_tuning")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--train-per-type", type=int, default=32)
    p.add_argument("--val-per-type", type=int, default=7)
    p.add_argument("--test-per-type", type=int, default=20)
    p.add_argument("--shape", type=int, default=128, help="side of the training images")
    p.add_argument("--eval-shape", type=int, default=256, help="side of the val / test images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="val splits to tune on")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--model", help="evaluate this model file instead of training one")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.model:
        path = Path(args.model)
        print(f"model {path} (given)")
    else:
        path, seconds = train_model(args)
        print(f"model {path}: trained in {seconds:.0f} s")
    if args.train_only:
        return 0
    evaluate(load_model(args.model or path), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
