"""End-to-end segmentation speed: ``flowseg.segment`` beside cellpose 3.1 ``CellposeModel.eval``.

    python benchmarks/inference.py                       # CPU, 520x704 images, fp32 and auto (bf16)
    python benchmarks/inference.py --device cuda --n-images 64

Rows (images/s, end to end: normalisation, network, flows -> labels, per-instance stats):
- ``flowseg default-size``: a randomly initialised network of the default ModelConfig
  (widths 32-64-128-256, the same widths as cellpose's CPnet), at batch 1 and batch 32;
- ``flowseg shipped``: the default model shipped in the package (trained, smaller), same batches;
- ``cellpose CPnet``: ``CellposeModel(pretrained_model=False)`` (random CPnet, nbase 32-256) at
  batch 1 and 8 (its default), diameter 30 (no rescaling), on fewer images (it is slow on CPU).
Random weights give almost no foreground, so those rows time the network and tiling; the
shipped model's rows include real post-processing. Inputs: real Sartorius-size sample images
(``flowseg/samples``, cropped or tiled to 520x704), repeated.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from flowseg.api import load_model, segment
from flowseg.config import ModelConfig
from flowseg.device import resolve_device
from flowseg.io.images import read_image
from flowseg.model.checkpoint import Model
from flowseg.model.pretrained import sample_paths
from flowseg.model.unet import UNet

SHAPE = (520, 704)


def _images(n: int) -> list[np.ndarray]:
    """``n`` 520x704 float32 images made from the shipped samples (tiled by reflection if small)."""
    base = []
    for path in sample_paths():
        im = read_image(path).astype(np.float32)
        reps = (-(-SHAPE[0] // im.shape[0]), -(-SHAPE[1] // im.shape[1]))
        base.append(np.pad(im, [(0, im.shape[0] * (reps[0] - 1)), (0, im.shape[1] * (reps[1] - 1))],
                           mode="reflect")[:SHAPE[0], :SHAPE[1]])
    return [base[i % len(base)] for i in range(n)]


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _flowseg_rows(name: str, model: Model, images, batches, repeats, precisions) -> list[tuple]:
    rows = []
    for precision in precisions:
        segment(images[:1], model, batch_size=1, precision=precision)  # warm-up
        for b in batches:
            seconds = _time(lambda: segment(images, model, batch_size=b, precision=precision), repeats)
            rows.append((f"{name} {precision}", b, len(images), seconds, len(images) / seconds))
    return rows


def _cellpose_rows(images, batches, repeats, device) -> list[tuple]:
    from cellpose import models

    cp = models.CellposeModel(pretrained_model=False, model_type=None, device=device,
                              gpu=device.type == "cuda")
    rows = []
    cp.eval(images[0], channels=[0, 0], diameter=30.0, batch_size=1)  # warm-up
    for b in batches:
        seconds = _time(lambda: [cp.eval(im, channels=[0, 0], diameter=30.0, batch_size=b)
                                 for im in images], repeats)
        rows.append(("cellpose CPnet (random)", b, len(images), seconds, len(images) / seconds))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-images", type=int, default=32, help="images per flowseg timing")
    p.add_argument("--cellpose-images", type=int, default=2, help="images per cellpose timing")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--precision", default="fp32,auto",
                   help="comma list of flowseg precisions to time (auto = bf16 where the CPU has it)")
    p.add_argument("--batches", default="1,32", help="flowseg batch sizes (default 1,32)")
    p.add_argument("--skip", default="", help="comma list of rows to skip: default,shipped,cellpose")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    skip = set(filter(None, args.skip.split(",")))
    images = _images(args.n_images)
    precisions = args.precision.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    if "default" not in skip:
        torch.manual_seed(0)
        config = ModelConfig()
        model = Model(UNet(config).to(device).eval(), config, ("cell",))
        rows += _flowseg_rows("flowseg default-size (random)", model, images, batches, args.repeats,
                              precisions)
    if "shipped" not in skip:
        rows += _flowseg_rows("flowseg shipped model", load_model(device=device), images, batches,
                              args.repeats, precisions)
    if "cellpose" not in skip:
        rows += _cellpose_rows(images[:args.cellpose_images], [1, 8], args.repeats, device)
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, image 520x704, "
          f"medians of {args.repeats} run(s)")
    print(f"{'pipeline':37s} {'batch':>5s} {'images':>6s} {'seconds':>8s} {'images/s':>9s}")
    for name, b, n, s, ips in rows:
        print(f"{name:37s} {b:5d} {n:6d} {s:8.2f} {ips:9.3f}")


if __name__ == "__main__":
    main()
