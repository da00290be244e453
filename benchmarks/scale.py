"""Benchmark: images/s of ``flowseg-segment``'s batch path, in-process vs a local Dask cluster.

Segments ``--images`` synthetic 520 x 704 phase-contrast images (``flowseg.synthetic``, written
as uint16 TIFs) with a small untrained model (widths 16,32,64,128; loose thresholds so that
flow following runs over most pixels, roughly the post-processing load of a crowded image)
through :func:`flowseg.batch.segment_files`, each mode into a fresh output folder:

* in-process (torch's default threads, and 1 thread),
* ``--dask local`` with 1 and 2 worker processes of 1 torch thread each (cluster start-up is
  timed separately and not counted in images/s).

Every mode first runs once untimed on a few images (the first segmentation in a process is
several seconds slower: lazy initialisation), then the modes run in ``--rounds`` interleaved
rounds (fresh output folders each time); the table shows each mode's fastest run, the least
disturbed by other work on a shared machine.

There is no Cellpose column: this measures how the same flowseg work scales over processes.
On a shared machine the figures are indicative only.

Usage::

    python benchmarks/scale.py [--images 8] [--chunk 2] [--workers 1,2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from flowseg.batch import BatchConfig, local_client, segment_files
from flowseg.config import ModelConfig, SegmentConfig
from flowseg.io.images import write_image
from flowseg.model.checkpoint import Model, save_model
from flowseg.model.unet import UNet
from flowseg.synthetic import KINDS, make_synthetic

SHAPE = (520, 704)


def _inputs(root: Path, n: int) -> tuple[Path, list[Path]]:
    torch.manual_seed(0)
    config = ModelConfig(n_classes=len(KINDS), widths=(16, 32, 64, 128))
    loose = SegmentConfig(cellprob_threshold=-6.0, flow_threshold=0.0, min_flow=0.0, niter=200)
    model = save_model(root / "model.pt", Model(UNet(config).eval(), config, KINDS, loose))
    paths = []
    for i in range(n):
        image, _ = make_synthetic(KINDS[i % len(KINDS)], shape=SHAPE, seed=i)
        paths.append(root / "images" / f"img{i:04d}.tif")
        write_image(paths[-1], (image * 1000).astype(np.uint16))
    return model, paths


def _run(paths, out: Path, model, config, client=None) -> float:
    """Seconds to segment ``paths`` into the fresh folder ``out`` (nothing skipped)."""
    t0 = time.perf_counter()
    result = segment_files(paths, out, model_path=model, client=client, config=config)
    seconds = time.perf_counter() - t0
    assert not result.failed and all(o.status == "done" for o in result.outcomes)
    return seconds


def _in_process(threads: int):
    def run(paths, out, model, config):
        torch.set_num_threads(threads)
        return _run(paths, out, model, config)
    return run


def _on_cluster(client, threads: int):
    def run(paths, out, model, config):
        return _run(paths, out, model, dataclasses.replace(config, worker_threads=threads), client)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--chunk", type=int, default=2)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    config = BatchConfig(device="cpu", chunk=args.chunk)
    cores, default_threads = os.cpu_count() or 1, torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        model, paths = _inputs(root, args.images)
        modes = {f"in-process (torch threads {default_threads})": ("-", _in_process(default_threads)),
                 "in-process (torch threads 1)": ("-", _in_process(1))}
        for n in (int(w) for w in args.workers.split(",")):
            t0 = time.perf_counter()
            client = stack.enter_context(local_client(n))
            client.wait_for_workers(n)
            modes[f"--dask local --workers {n} (torch threads 1 each)"] = (
                f"{time.perf_counter() - t0:.1f}", _on_cluster(client, 1))
        for i, (_, run) in enumerate(modes.values()):  # first calls in a process are slow
            run(paths[:4 * args.chunk], root / f"warm{i}", model, config)
        best = dict.fromkeys(modes, float("inf"))
        for k in range(args.rounds):  # interleaved, so that load from others spreads evenly
            for i, (mode, (_, run)) in enumerate(modes.items()):
                best[mode] = min(best[mode], run(paths, root / f"out{k}_{i}", model, config))
        torch.set_num_threads(default_threads)
    print(f"{args.images} images {SHAPE[0]}x{SHAPE[1]}, chunk {args.chunk}, best of "
          f"{args.rounds} interleaved rounds, {cores} CPU cores, torch {torch.__version__}")
    print(f"{'mode':<45} {'start-up s':>10} {'seconds':>8} {'images/s':>9}")
    for mode, (startup, _) in modes.items():
        print(f"{mode:<45} {startup:>10} {best[mode]:>8.1f} {args.images / best[mode]:>9.2f}")


if __name__ == "__main__":
    main()
