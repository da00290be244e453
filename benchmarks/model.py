"""Benchmark: the flowseg U-Net beside Cellpose 3's CPnet (same run, same CPU threads).

For each network: parameters, checkpoint size, forward seconds for one 520 x 704 image (eval,
no grad) and seconds per training step (batch of 8 crops of 224 x 224: forward, three-term
loss, backward, AdamW step). Timings are medians of ``--repeats`` after one warm-up.

Also timed, to choose how flow targets are made: ``labels_to_flows`` for the 8 augmented label
crops of a step (on the fly, what ``fit`` does) against one full 520 x 704 label image (what a
cache would precompute once per image; cached flows would also have to be rotated and
resampled with every augmentation).

Usage::

    python benchmarks/model.py [--repeats 3] [--threads N] [--configs default,concat,blocks2]
                               [--precision fp32,bf16]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from flowseg.config import ModelConfig
from flowseg.device import autocast, preferred_memory_format
from flowseg.flows import labels_to_flows
from flowseg.model.unet import UNet
from flowseg.synthetic import make_synthetic
from flowseg.training.losses import segmentation_loss

IMAGE = (520, 704)
CROP, BATCH = 224, 8
N_CLASSES = 3
CONFIGS = {
    "default": ModelConfig(n_classes=N_CLASSES),
    "concat": ModelConfig(n_classes=N_CLASSES, skip="concat"),
    "blocks2": ModelConfig(n_classes=N_CLASSES, blocks=2),
    "small": ModelConfig(n_classes=N_CLASSES, widths=(16, 32, 64, 128)),
}


def _interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in turns (ABAB...) after one warm-up each, so
    that all see the same machine load and allocator state."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _checkpoint_mb(net: torch.nn.Module) -> float:
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.tell() / 1e6


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [make_synthetic(("round", "irregular", "spindly")[i % 3], shape=(CROP, CROP), seed=i)
             for i in range(BATCH)]
    images = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
    labels = torch.from_numpy(np.stack([p[1] for p in pairs]))
    return images, labels


def _flowseg_step(net: UNet, optimizer, images, labels, flows, classes,
                  dtype: torch.dtype = torch.float32) -> Callable[[], None]:
    """One training step as ``fit`` takes it at ``dtype`` (bf16: autocast + channels-last on CPU)."""
    cpu = torch.device("cpu")
    layout = preferred_memory_format(cpu, dtype)
    net.to(memory_format=layout)
    images = images.contiguous(memory_format=layout)

    def step() -> None:
        with autocast(cpu, dtype):
            out = net(images)
        loss = segmentation_loss(out, flows, labels, classes).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def _cellpose_step(net, optimizer, images, labels, flows) -> Callable[[], None]:
    """Cellpose 3's loss (``train._loss_fn_seg``) on its 2-channel input."""
    x = images.repeat(1, 2, 1, 1)

    def step() -> None:
        y = net(x)[0]
        loss = F.mse_loss(y[:, :2], 5.0 * flows) / 2 + F.binary_cross_entropy_with_logits(
            y[:, 2], (labels > 0).float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def _forward(net: torch.nn.Module, in_channels: int,
             dtype: torch.dtype = torch.float32) -> Callable[[], None]:
    cpu = torch.device("cpu")
    x = torch.randn(1, in_channels, *IMAGE).contiguous(memory_format=preferred_memory_format(cpu, dtype))

    def forward() -> None:
        net.eval()
        with torch.inference_mode(), autocast(cpu, dtype):
            net(x)
    return forward


def _training(net: torch.nn.Module, step: Callable[[], None]) -> Callable[[], None]:
    def train() -> None:
        net.train()
        step()
    return train


def _print_table(rows: list[dict[str, object]]) -> None:
    keys = list(rows[0])
    print(" | ".join(f"{k:>14}" for k in keys))
    for row in rows:
        print(" | ".join(f"{v:>14.3f}" if isinstance(v, float) else f"{v!s:>14}" for v in row.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--configs", default="default", help=f"comma list of {sorted(CONFIGS)}")
    parser.add_argument("--precision", default="fp32",
                        help="comma list of fp32, bf16 (bf16 autocast + channels-last, as "
                             "flowseg-train on CPUs with native bf16); cellpose runs in fp32")
    parser.add_argument("--no-cellpose", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, repeats {args.repeats}")
    images, labels = _batch()
    flows = labels_to_flows(labels)
    classes = torch.arange(BATCH) % N_CLASSES
    nets: dict[str, tuple[torch.nn.Module, int, Callable[[], None], torch.dtype]] = {}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for name in args.configs.split(","):
        for precision in args.precision.split(","):
            torch.manual_seed(0)
            net = UNet(CONFIGS[name])
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
            step = _flowseg_step(net, opt, images, labels, flows, classes, dtypes[precision])
            nets[f"flowseg {name} {precision}"] = (net, 1, step, dtypes[precision])
    if not args.no_cellpose:
        from cellpose.resnet_torch import CPnet

        torch.manual_seed(0)
        net = CPnet(nbase=[2, 32, 64, 128, 256], nout=3, sz=3)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        nets["cellpose CPnet fp32"] = (net, 2, _cellpose_step(net, opt, images, labels, flows),
                                       torch.float32)
    fwd = _interleaved_medians({k: _forward(n, c, d) for k, (n, c, _, d) in nets.items()}, args.repeats)
    train = _interleaved_medians({k: _training(n, s) for k, (n, _, s, _) in nets.items()}, args.repeats)
    rows = [{"model": k, "params_M": sum(p.numel() for p in n.parameters()) / 1e6,
             "ckpt_MB": _checkpoint_mb(n), "fwd_520x704_s": fwd[k], "train_step_s": train[k]}
            for k, (n, _, _, _) in nets.items()]
    _print_table(rows)
    full = torch.from_numpy(make_synthetic("irregular", shape=IMAGE, seed=0)[1])
    targets = _interleaved_medians({"crops": lambda: labels_to_flows(labels),
                                    "full": lambda: labels_to_flows(full)}, args.repeats)
    crops_s, full_s = targets["crops"], targets["full"]
    print(f"\nflow targets (CPU): {BATCH} crops {CROP}x{CROP} on the fly {crops_s:.3f} s per step; "
          f"one full {IMAGE[0]}x{IMAGE[1]} image (cache build) {full_s:.3f} s")


if __name__ == "__main__":
    main()
