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

``--stages`` prints instead where the end-to-end time per image goes (seconds per image, batch
``--batches``' first value), on the real 704x520 Sartorius PNGs of ``flowseg/samples`` and
``tests/data``, repeated to ``--n-images``; each stage is one library call timed over all images:
- flowseg (shipped model, each ``--precision``): read ``read_image``; normalise
  ``normalize_image``; network ``predict_maps`` (``PredictConfig(normalize=None)``) on the
  normalised images (tiling, autocast, stitching); flows -> masks ``segment_maps`` (flow
  following, clustering, per-type filtering, instance stats); write ``write_labels`` (the masks
  TIF, as ``flowseg-segment`` writes by default).
- cellpose 3.1 (no pretrained weights can be downloaded here, so a random CPnet, as above): read
  the same ``read_image``; normalise ``transforms.normalize_img`` (what ``eval`` calls, 1-99
  percentiles); network ``CellposeModel.eval(normalize=False, compute_masks=False,
  diameter=30)`` on the normalised images (its tiling, 224 px tiles, overlap 0.1); flows -> masks
  ``dynamics.resize_and_compute_masks`` (what ``eval`` calls: 200 Euler steps, flow-error QC,
  size filter) on flowseg's shipped-model maps converted to cellpose's convention (flows x 5,
  cellprob logit), since a random CPnet has no cells to follow; write ``io.imsave`` of the masks.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from flowseg.api import PredictConfig, load_model, predict_maps, segment, segment_maps
from flowseg.config import ModelConfig
from flowseg.device import resolve_device
from flowseg.data.normalize import normalize_image
from flowseg.io.images import read_image, write_labels
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
        segment(images[:1], model,
                predict=PredictConfig(batch_size=1, tta=False, precision=precision))  # warm-up
        for b in batches:
            predict = PredictConfig(batch_size=b, tta=False, precision=precision)
            seconds = _time(lambda: segment(images, model, predict=predict), repeats)
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


REAL_704x520 = ("flowseg/samples/sartorius_*.png", "tests/data/sartorius*/train/*.png")


def _real_paths(n: int) -> list[str]:
    """``n`` paths of the repository's real 704x520 Sartorius PNGs, repeated."""
    root = Path(__file__).resolve().parents[1]
    paths = sorted(p for g in REAL_704x520 for p in glob.glob(str(root / g)))
    return [paths[i % len(paths)] for i in range(n)]


def _stage(fn, items, repeats):
    """Median over ``repeats`` of ``fn(items)``'s seconds per item, and its last output."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(items)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / len(items), out


def _flowseg_stages(model, paths, out_dir, batch, precision, repeats):
    """Seconds per image of read, normalise, network, flows -> masks, write; and the maps."""
    read, images = _stage(lambda ps: [read_image(p) for p in ps], paths, repeats)
    norm, normed = _stage(lambda ims: [normalize_image(im) for im in ims], images, repeats)
    predict = PredictConfig(batch_size=batch, tta=False, precision=precision, normalize=None)
    predict_maps(normed[:1], model, predict=predict)  # warm-up
    net, maps = _stage(lambda xs: predict_maps(xs, model, predict=predict), normed, repeats)
    segment_maps(maps[:1], model.class_names, config=model.segment_config)  # warm-up
    post, results = _stage(lambda ms: segment_maps(ms, model.class_names,
                                                   config=model.segment_config,
                                                   batch_size=batch), maps, repeats)
    write, _ = _stage(lambda rs: [write_labels(Path(out_dir) / f"{i}_masks.tif", r.labels)
                                  for i, r in enumerate(rs)], results, repeats)
    return (read, norm, net, post, write), maps


def _cellpose_stages(paths, maps, out_dir, device, repeats):
    """Seconds per image of cellpose 3.1's read, normalise, network, dynamics, write."""
    from cellpose import dynamics, io, models, transforms

    cp = models.CellposeModel(pretrained_model=False, model_type=None, device=device,
                              gpu=device.type == "cuda")
    read, images = _stage(lambda ps: [read_image(p) for p in ps], paths, repeats)
    norm, normed = _stage(lambda ims: [transforms.normalize_img(im[..., None].astype(np.float32))
                                       for im in ims], images, repeats)
    net_eval = lambda xs: [cp.eval(x, channels=[0, 0], channel_axis=-1, diameter=30.0,
                                   normalize=False, compute_masks=False) for x in xs]
    net_eval(normed[:1])  # warm-up
    net, _ = _stage(net_eval, normed, repeats)
    flows = [(m[:2].cpu().numpy() * 5.0, m[2].cpu().numpy()) for m in maps[:len(paths)]]
    post, masks = _stage(lambda fs: [dynamics.resize_and_compute_masks(dp, prob, device=device)
                                     for dp, prob in fs], flows, repeats)
    write, _ = _stage(lambda ms: [io.imsave(str(Path(out_dir) / f"{i}_cp_masks.tif"), m)
                                  for i, m in enumerate(ms)], masks, repeats)
    return read, norm, net, post, write


def stage_table(args, device) -> None:
    """Print the per-stage split of the end-to-end time per image (see the module docstring)."""
    paths = _real_paths(args.n_images)
    batch = int(args.batches.split(",")[0])
    model = load_model(device=device)
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        for precision in args.precision.split(","):
            times, maps = _flowseg_stages(model, paths, out_dir, batch, precision, args.repeats)
            rows.append((f"flowseg shipped {precision}", times))
        if "cellpose" not in set(args.skip.split(",")):
            cp_paths = paths[:args.cellpose_images]
            rows.append(("cellpose 3.1 CPnet (random) bs 8",
                         _cellpose_stages(cp_paths, maps, out_dir, device, args.repeats)))
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, {len(paths)} real 704x520 "
          f"images, flowseg batch {batch}, medians of {args.repeats} run(s); seconds per image")
    names = ("read", "normalise", "network", "flows->masks", "write")
    print(f"{'pipeline':34s} " + " ".join(f"{n:>12s}" for n in names) + f" {'total':>8s} {'images/s':>9s}")
    for name, times in rows:
        total = sum(times)
        print(f"{name:34s} " + " ".join(f"{t:12.4f}" for t in times) + f" {total:8.3f} {1 / total:9.2f}")


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
    p.add_argument("--stages", action="store_true",
                   help="print where the time per image goes (read, normalise, network, "
                        "flows -> masks, write) instead")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.stages:
        stage_table(args, device)
        return
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
