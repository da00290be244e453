"""GPU readiness: the `gpu` tests, CPU == CUDA labels, flows -> labels, segment and training speed.

Run through ``bash benchmarks/gpu_check.sh [--dry-run]``, which gives every check its own
process and ``timeout``; each check appends one JSON row to ``--results`` and ``table`` prints
the markdown table (a check that left no row timed out or crashed: FAIL).

    python benchmarks/gpu_check.py run CHECK --results FILE [--dry-run] [--device cuda]
    python benchmarks/gpu_check.py table --results FILE [--dry-run]

``--dry-run`` runs the same code on the CPU with tiny sizes and few steps: it tests the
plumbing and measures nothing. There the "CUDA" side of the equality check is the torch-only
route that CUDA runs (``flowseg.flows._ops.host_path`` forced off), and no goal is judged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from unittest import mock

import fastremap
import numpy as np
import torch
from torch.utils.data import DataLoader

from flows import cellprob_for, median_time, upscaled  # benchmarks/flows.py (this script's folder)
from flowseg.api import PredictConfig, load_model, segment
from flowseg.config import AugmentConfig, ModelConfig, TrainConfig
from flowseg.data.dataset import CropDataset, make_sample
from flowseg.flows import _ops, flows_to_labels, labels_to_flows
from flowseg.model.unet import UNet
from flowseg.synthetic import KINDS, make_synthetic, synthetic_labels
from flowseg.training.engine import make_optimizer, make_scheduler, train_one_epoch


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run: the real check, or the dry run's tiny stand-in."""

    shape: tuple[int, int]       # image (H, W)
    batch: int                   # images per flows -> labels / segment batch
    repeats: int                 # timed repeats (median)
    steps: int                   # timed training steps
    crop: int                    # training crop size
    widths: tuple[int, ...] | None   # training network widths (None: ModelConfig's default)
    workers: int                 # DataLoader workers


FULL = Sizes(shape=(520, 704), batch=32, repeats=5, steps=100, crop=256, widths=None, workers=6)
DRY = Sizes(shape=(64, 96), batch=2, repeats=1, steps=3, crop=32, widths=(8, 16), workers=0)

#: check name -> (what the table calls it, its goal)
CHECKS = {
    "tests": ("pytest -m gpu", "all pass, none skipped"),
    "equality": ("flows -> labels, CPU == CUDA", "identical labels"),
    "flows": ("flows -> labels, batch 32 x 520x704", ">= 500 images/s"),
    "segment": ("segment end to end, batch 32 x 520x704", ">= 100 images/s"),
    "train": ("training, 100 steps, bf16 AMP, batch 8 x 256^2", "finite loss (speed: recorded)"),
}


def _synced(fn, device: torch.device):
    """``fn`` followed by a CUDA synchronise, so that timings include the queued kernels."""
    def run():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


def _synthetic(n: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W) float32 phase-contrast-like images and int32 labels: the three morphologies,
    repeated to ``n``."""
    pairs = [make_synthetic(kind, shape=shape, seed=i) for i, kind in enumerate(KINDS)]
    return (np.stack([pairs[i % 3][0] for i in range(n)]).astype(np.float32),
            np.stack([pairs[i % 3][1] for i in range(n)]))


def _labels(n: int, shape: tuple[int, int]) -> np.ndarray:
    """(n, H, W) int32 labels as ``flows.py`` times them: ~50 astro-like, ~200 spindly and ~600
    round cells per 520x704 (drawn at half size, upscaled 2x), repeated to ``n``."""
    half = (shape[0] // 2, shape[1] // 2)
    area = half[0] * half[1] / (260 * 352)
    drawn = (("irregular", 1, 50), ("spindly", 2, 210), ("round", 3, 700))
    three = [upscaled(synthetic_labels(kind, shape=half, seed=seed,
                                       n_cells=max(2, round(cells * area))), 2)
             for kind, seed, cells in drawn]
    return np.stack([fastremap.renumber(three[i % 3])[0] for i in range(n)]).astype(np.int32)


def check_tests(sizes: Sizes, device: torch.device) -> dict:
    """Run the ``gpu``-marked tests in this process; on the dry run only ``tests/flows``."""
    import pytest

    class Outcomes:
        def __init__(self):
            self.counts = Counter()

        def pytest_runtest_logreport(self, report):
            if report.when == "call" or report.outcome != "passed":
                self.counts[report.outcome] += 1

    plugin = Outcomes()
    where = "tests/flows" if sizes is DRY else "tests"
    code = pytest.main(["-q", "-m", "gpu", "-p", "no:cacheprovider", where], plugins=[plugin])
    c = plugin.counts
    ok = code == 0 and (sizes is DRY or (c["passed"] > 0 and not c["skipped"]))
    return {"figure": f"{c['passed']} passed, {c['skipped']} skipped, {c['failed']} failed "
                      f"(pytest exit {int(code)})", "ok": ok}


def check_equality(sizes: Sizes, device: torch.device) -> dict:
    """Labels from the same flows on the CPU (numba) and on ``device``, clean and noisy."""
    labels = _labels(3, sizes.shape)
    flows, cellprob = labels_to_flows(labels), cellprob_for(labels)
    noisy = flows + np.random.default_rng(0).normal(0, 0.3, flows.shape).astype(np.float32)
    cases = {"clean": flows, "noisy": noisy}
    cpu = {name: flows_to_labels(f, cellprob) for name, f in cases.items()}
    if device.type == "cpu":   # the dry run: the torch-only route that CUDA takes
        with mock.patch.object(_ops, "host_path", lambda tensor: False):
            other = {name: flows_to_labels(f, cellprob) for name, f in cases.items()}
    else:
        other = {name: flows_to_labels(f, cellprob, device=device) for name, f in cases.items()}
    same = sum(int(np.array_equal(cpu[k][i], other[k][i]))
               for k in cases for i in range(len(labels)))
    total = len(cases) * len(labels)
    return {"figure": f"{same}/{total} images identical", "ok": same == total}


def check_flows(sizes: Sizes, device: torch.device) -> dict:
    """flows -> labels images/s on a batch already on ``device`` (labels come back to numpy)."""
    labels = torch.from_numpy(_labels(sizes.batch, sizes.shape)).to(device)
    flows, cellprob = labels_to_flows(labels), torch.where(labels > 0, 10.0, -10.0)
    run = _synced(lambda: flows_to_labels(flows, cellprob), device)
    run()   # warm-up (numba compile / CUDA kernels)
    seconds = median_time(run, sizes.repeats)
    rate = sizes.batch / seconds
    return {"figure": f"{rate:.1f} images/s ({seconds:.3f} s per batch of {sizes.batch})",
            "ok": rate >= 500}


def check_segment(sizes: Sizes, device: torch.device) -> dict:
    """``segment`` with the shipped model: normalisation, network, flows -> labels, results."""
    images = list(_synthetic(2 * sizes.batch, sizes.shape)[0])
    model = load_model(device=device)
    predict = PredictConfig(batch_size=sizes.batch, tta=False)
    run = _synced(lambda: segment(images, model, predict=predict), device)
    run()   # warm-up
    seconds = median_time(run, sizes.repeats)
    rate = len(images) / seconds
    return {"figure": f"{rate:.1f} images/s ({len(images)} images in {seconds:.2f} s)",
            "ok": rate >= 100}


def _train_loader(sizes: Sizes, steps: int, device: torch.device) -> DataLoader:
    """``steps`` batches of 8 augmented crops of the three synthetic morphologies."""
    images, labels = _synthetic(3, sizes.shape)
    samples = [make_sample(f"{k}", im, lab, k) for k, im, lab in zip(KINDS, images, labels)]
    dataset = CropDataset(samples, KINDS, crop_size=sizes.crop, augment=AugmentConfig(), seed=0)
    batches = [list(range(i * 8, (i + 1) * 8)) for i in range(steps)]   # indices wrap per sample
    return DataLoader(dataset, batch_sampler=batches, num_workers=sizes.workers,
                      pin_memory=device.type == "cuda")


def check_train(sizes: Sizes, device: torch.device) -> dict:
    """``train_one_epoch`` over ``sizes.steps`` batches of 8 crops, bf16 autocast, after 5
    warm-up steps (cuDNN autotuning, allocator)."""
    torch.manual_seed(0)
    widths = {} if sizes.widths is None else {"widths": sizes.widths}
    net = UNet(ModelConfig(n_classes=len(KINDS), **widths)).to(device)
    config = TrainConfig(epochs=1, batch_size=8, crop_size=sizes.crop, device=str(device),
                         precision="bf16", warmup_epochs=0.1)
    optimizer = make_optimizer(net, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=sizes.steps + 5)
    train_one_epoch(net, _train_loader(sizes, 5, device), optimizer, scheduler, config=config,
                    device=device, progress=False)
    loader = _train_loader(sizes, sizes.steps, device)
    start = time.perf_counter()
    losses = train_one_epoch(net, loader, optimizer, scheduler, config=config, device=device,
                             progress=False)
    _synced(lambda: None, device)()
    seconds = time.perf_counter() - start
    return {"figure": f"{sizes.steps / seconds:.2f} steps/s = {8 * sizes.steps / seconds:.1f} "
                      f"crops/s, loss {losses['loss']:.3f}", "ok": math.isfinite(losses["loss"])}


def table(rows: dict[str, dict], *, dry_run: bool) -> str:
    """The markdown table, one row per check in :data:`CHECKS` order (missing: did not finish)."""
    lines = ["| check | figure | goal | result |", "|---|---|---|---|"]
    for name, (title, goal) in CHECKS.items():
        row = rows.get(name)
        if row is None:
            figure, result = "did not finish (timed out or crashed; see the log above)", "FAIL"
        else:
            figure = row["figure"]
            result = "FAIL" if not row["ok"] else "ok (dry run)" if dry_run else "PASS"
            if dry_run and name in ("flows", "segment"):
                result = "ran (dry run: not judged)"
        lines.append(f"| {title} | {figure} | {goal} | {result} |")
    return "\n".join(lines)


RUNS = {"tests": check_tests, "equality": check_equality, "flows": check_flows,
        "segment": check_segment, "train": check_train}


def _read_rows(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    return {row["check"]: row for row in map(json.loads, path.read_text().splitlines()) if row}


def _table_main(args) -> int:
    rows = _read_rows(args.results)
    if args.dry_run:
        print("\nDRY RUN on the CPU, tiny sizes and few steps: tests the script, "
              "NOT a measurement.")
    else:
        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
        print(f"\nGPU check on {name}, torch {torch.__version__}")
    text = table(rows, dry_run=args.dry_run)
    print(text)
    return 0 if "| FAIL |" not in text else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "table"])
    parser.add_argument("check", nargs="?", choices=list(CHECKS))
    parser.add_argument("--results", type=Path, required=True, help="JSON-lines file of rows")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: not a measurement")
    parser.add_argument("--device", default="cuda:0")
    args = parser.parse_args(argv)
    if args.action == "table":
        return _table_main(args)
    if args.check is None:
        parser.error("run: name a check")
    if args.dry_run:
        sizes, device = DRY, torch.device("cpu")
    else:
        sizes, device = FULL, torch.device(args.device)
    row = {"check": args.check, **RUNS[args.check](sizes, device)}
    with args.results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    verdict = "dry run" if args.dry_run else "ok" if row["ok"] else "FAIL"
    print(f"{args.check}: {row['figure']} ({verdict})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
