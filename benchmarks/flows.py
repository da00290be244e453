"""flowseg flows beside cellpose 3.1: speed of targets and flows -> labels, and round-trip scores.

Usage
-----
    python benchmarks/flows.py                      # speed table + round-trip table (CPU)
    python benchmarks/flows.py --part roundtrip     # only the round trip over all real data
    python benchmarks/flows.py --part noise         # round trip with noisy flows (robustness)
    python benchmarks/flows.py --device cuda --batch 32   # GPU throughput (images/s)

Speed inputs are label images at 520x704 with ~50 (astro-like), ~200 and ~600 cells, plus
the ~200-cell image tiled 4x4 (2080x2816, 16x the pixels), and the real Sartorius astro image
when /work/shared/data is present. Both libraries get the same labels; flowseg's flows ->
labels runs on flowseg's targets, cellpose's on cellpose's (network scale x5), each with its
default parameters (cellprob_threshold 0, flow_threshold 0.4, min_size 15).
Round trip: ``flows_to_labels(labels_to_flows(L), cellprob=+10 inside L)`` scored against L
with the Kaggle metric (``flowseg.metrics.image_score``); cellpose: ``compute_masks(5 *
masks_to_flows(L), cellprob)``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import fastremap
import numpy as np
import torch

from flowseg.flows import compile_kernels, flows_to_labels, labels_to_flows
from flowseg.metrics import image_score
from flowseg.synthetic import KINDS, keep_largest_pieces, synthetic_labels

#: Default real-data root: the ``shared/data`` folder beside the repository checkout.
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CELLPOSE_FLOW_SCALE = 5.0    # cellpose's network predicts 5x unit flows; compute_masks divides


def _cellpose():
    from cellpose import dynamics
    return dynamics


def cellpose_targets(labels: np.ndarray, device: torch.device) -> np.ndarray:
    return _cellpose().masks_to_flows(labels, device=device).astype(np.float32)


def cellpose_masks(flows: np.ndarray, cellprob: np.ndarray, device: torch.device) -> np.ndarray:
    return _cellpose().compute_masks(CELLPOSE_FLOW_SCALE * flows, cellprob, min_size=15,
                                     device=device)


def cellprob_for(labels: np.ndarray) -> np.ndarray:
    return np.where(labels > 0, 10.0, -10.0).astype(np.float32)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def upscaled(labels: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(labels, factor, 0), factor, 1)


def tiled(labels: np.ndarray, n: int) -> np.ndarray:
    tiles = [[np.where(labels > 0, labels + (i * n + j) * int(labels.max()), 0) for j in range(n)]
             for i in range(n)]
    return np.block(tiles).astype(np.int32)


def speed_inputs(data: Path) -> dict[str, np.ndarray]:
    """Label images for the speed table (synthetic, drawn at half size and upscaled 2x)."""
    half = (260, 352)
    inputs = {
        "astro-like ~50 cells 520x704": upscaled(synthetic_labels("irregular", shape=half, seed=1, n_cells=50), 2),
        "spindly ~200 cells 520x704": upscaled(synthetic_labels("spindly", shape=half, seed=2, n_cells=210), 2),
        "dense ~600 cells 520x704": upscaled(synthetic_labels("round", shape=half, seed=3, n_cells=700), 2),
    }
    inputs["spindly ~3200 cells 2080x2816 (16x px)"] = tiled(inputs["spindly ~200 cells 520x704"], 4)
    sartorius = data / "sartorius" / "train.csv"
    if sartorius.exists():
        from flowseg.io.sartorius import read_train_csv
        inputs["real astro 0a6ecc5fe78a 520x704"] = read_train_csv(sartorius)["0a6ecc5fe78a"].labels()
    return {k: fastremap.renumber(v)[0].astype(np.int32) for k, v in inputs.items()}


def speed_row(name: str, labels: np.ndarray, repeats: int) -> str:
    cpu = torch.device("cpu")
    cellprob = cellprob_for(labels)
    ours_flows, cp_flows = labels_to_flows(labels), cellpose_targets(labels, cpu)
    t_ours = median_time(lambda: labels_to_flows(labels), repeats)
    t_cp = median_time(lambda: cellpose_targets(labels, cpu), repeats)
    ours_labels = flows_to_labels(ours_flows, cellprob)
    cp_labels = cellpose_masks(cp_flows, cellprob, cpu)
    m_ours = median_time(lambda: flows_to_labels(ours_flows, cellprob), repeats)
    m_cp = median_time(lambda: cellpose_masks(cp_flows, cellprob, cpu), max(1, repeats // 2))
    s_ours, s_cp = image_score(labels, ours_labels).score, image_score(labels, cp_labels).score
    return (f"{name:40s} {int(labels.max()):6d} {int((labels > 0).sum()):8d} | {t_ours:8.4f} {t_cp:8.4f} "
            f"{t_cp / t_ours:6.1f}x | {m_ours:8.4f} {m_cp:8.4f} {m_cp / m_ours:6.1f}x | {s_ours:.4f} {s_cp:.4f}")


def warm_up() -> None:
    """Compile the numba kernels in this process (or load them from numba's on-disk cache:
    on a new machine the CPU would otherwise take the torch route while they compile in the
    background), then the first calls; timed once here and kept out of the medians."""
    start = time.perf_counter()
    compile_kernels()
    compiled = time.perf_counter()
    labels = synthetic_labels("round", shape=(64, 64), seed=0)
    flows = labels_to_flows(labels)
    middle = time.perf_counter()
    flows_to_labels(flows, cellprob_for(labels))
    end = time.perf_counter()
    print(f"Kernels compiled (or loaded from numba's cache; not in the medians) in "
          f"{compiled - start:.2f} s; first calls: labels_to_flows {middle - compiled:.2f} s, "
          f"flows_to_labels {end - middle:.2f} s")


def speed_table(repeats: int, data: Path) -> None:
    print(f"Load average (1, 5, 15 min) at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    warm_up()
    print(f"Speed, CPU, torch threads={torch.get_num_threads()}, medians of {repeats} runs "
          f"(cellpose flows->labels: {max(1, repeats // 2)}; 2080x2816: 3 / 1). Shared 2-core machine: "
          "other jobs were running, absolute times are noisy; both libraries ran interleaved.")
    print(f"{'input':40s} {'cells':>6s} {'fg px':>8s} | {'targets s':>8s} {'cellpose':>8s} {'ratio':>7s} | "
          f"{'f->lab s':>8s} {'cellpose':>8s} {'ratio':>7s} | {'RT ours':6s} {'RT cp':6s}")
    for name, labels in speed_inputs(data).items():
        big = labels.size > 4 * 520 * 704
        print(speed_row(name, labels, 3 if big else repeats), flush=True)
    print(f"Load average (1, 5, 15 min) at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def real_label_sets(data: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Every real label image under ``data`` (the shared data folder), grouped by data set."""
    from flowseg.io.images import read_labels
    from flowseg.io.sartorius import read_train_csv
    sets: dict[str, list[tuple[str, np.ndarray]]] = {}
    if (data / "sartorius" / "train.csv").exists():
        sets["sartorius"] = [(k, a.labels()) for k, a in read_train_csv(data / "sartorius" / "train.csv").items()]
    usiigaci = sorted((data / "usiigaci").glob("set*/instances_ids.png"))
    if usiigaci:
        sets["usiigaci"] = [(p.parent.name, read_labels(p)) for p in usiigaci]
    if (data / "dsb2018_stardist_sample" / "mask2d.tif").exists():
        sets["dsb2018"] = [("mask2d", read_labels(data / "dsb2018_stardist_sample" / "mask2d.tif"))]
    return sets


def synthetic_label_sets(seeds: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    return {f"synthetic {kind}": [(f"seed{s}", synthetic_labels(kind, seed=s)) for s in range(seeds)]
            for kind in KINDS}


def roundtrip_scores(labels: np.ndarray) -> tuple[float, float, float, float]:
    """(flowseg, cellpose) scores against the labels, then against their largest pieces."""
    labels = fastremap.renumber(labels)[0].astype(np.int32)
    cellprob = cellprob_for(labels)
    ours = flows_to_labels(labels_to_flows(labels), cellprob)
    cp = cellpose_masks(cellpose_targets(labels, torch.device("cpu")), cellprob, torch.device("cpu"))
    reachable = keep_largest_pieces(labels)
    return (image_score(labels, ours).score, image_score(labels, cp).score,
            image_score(reachable, ours).score, image_score(reachable, cp).score)


def roundtrip_table(seeds: int, data: Path) -> None:
    print("\nRound trip (labels -> flows -> labels, default parameters), Kaggle metric (mean / min "
          "over images) vs the labels, and vs the 'reachable' labels (each cell's largest 8-connected "
          "piece: no flow field can bring back a cell cut in pieces)")
    print(f"{'data set':20s} {'images':>6s} {'cells':>6s} | {'flowseg':>15s} | {'cellpose':>15s} || "
          f"{'flowseg reach':>15s} | {'cellpose reach':>15s}")
    groups = {**real_label_sets(data), **synthetic_label_sets(seeds)}
    for name, items in groups.items():
        scores = np.array([roundtrip_scores(labels) for _, labels in items])
        cells = sum(len(np.unique(labels)) - 1 for _, labels in items)
        cols = [f"{scores[:, k].mean():.4f} / {scores[:, k].min():.4f}" for k in range(4)]
        print(f"{name:20s} {len(items):6d} {cells:6d} | {cols[0]:>15s} | {cols[1]:>15s} || "
              f"{cols[2]:>15s} | {cols[3]:>15s}", flush=True)


def smooth_noise(shape: tuple[int, int], sigma: float, amplitude: float, seed: int) -> np.ndarray:
    """(2, H, W) float32 Gaussian-filtered noise with standard deviation ``amplitude``."""
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    noise = np.stack([ndimage.gaussian_filter(rng.normal(0, 1, shape), sigma) for _ in range(2)])
    return (amplitude * noise / noise.std()).astype(np.float32)


def noise_table(seeds: int) -> None:
    """Round trip when each library's flow targets get the same smooth noise added."""
    print("\nRobustness: flows_to_labels(targets + noise) vs labels, mean over seeds; noise = "
          "Gaussian-filtered (sigma px) normal field scaled to std a per component, unit-scale flows")
    settings = [(0.1, 1.0), (0.2, 1.0), (0.2, 3.0), (0.4, 3.0)]
    print(f"{'data set':20s} | " + " | ".join(f"a={a} s={s}: flowseg / cellpose" for a, s in settings))
    cpu = torch.device("cpu")
    for name, items in synthetic_label_sets(seeds).items():
        cells = []
        for a, s in settings:
            pairs = []
            for i, (_, labels) in enumerate(items):
                noise, cellprob = smooth_noise(labels.shape, s, a, i), cellprob_for(labels)
                ours = flows_to_labels(labels_to_flows(labels) + noise, cellprob)
                cp = cellpose_masks(cellpose_targets(labels, cpu) + noise, cellprob, cpu)
                pairs.append((image_score(labels, ours).score, image_score(labels, cp).score))
            mean = np.mean(pairs, axis=0)
            cells.append(f"{mean[0]:.3f} / {mean[1]:.3f}".center(len(f"a={a} s={s}: flowseg / cellpose")))
        print(f"{name:20s} | " + " | ".join(cells), flush=True)


def gpu_throughput(device: str, batch: int, repeats: int, data: Path) -> None:
    dev = torch.device(device)
    labels = speed_inputs(data)["spindly ~200 cells 520x704"]
    stack = torch.from_numpy(np.stack([labels] * batch)).to(dev)
    flows = labels_to_flows(stack)
    cellprob = torch.where(stack > 0, 10.0, -10.0)

    def sync(fn):
        def run():
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
        return run

    sync(lambda: flows_to_labels(flows, cellprob))()
    t_targets = median_time(sync(lambda: labels_to_flows(stack)), repeats)
    t_masks = median_time(sync(lambda: flows_to_labels(flows, cellprob)), repeats)
    cp_flows = cellpose_targets(labels, dev)
    one = cellprob_for(labels)
    t_cp = median_time(sync(lambda: cellpose_masks(cp_flows, one, dev)), repeats)
    print(f"device {dev}, batch {batch} x 520x704 ({int(labels.max())} cells each), medians of {repeats}")
    print(f"flowseg labels_to_flows: {t_targets:.3f} s/batch = {batch / t_targets:.1f} images/s")
    print(f"flowseg flows_to_labels: {t_masks:.3f} s/batch = {batch / t_masks:.1f} images/s")
    print(f"cellpose compute_masks (one image at a time): {t_cp:.3f} s/image = {1 / t_cp:.1f} images/s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["speed", "roundtrip", "noise", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3, help="synthetic images per morphology")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="real data root (sartorius/, usiigaci/, dsb2018_stardist_sample/); "
                             "missing sets are skipped (default: ../shared/data beside the repo)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for both libraries (1 avoids OpenMP contention "
                             "on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device != "cpu":
        gpu_throughput(args.device, args.batch, args.repeats, args.data)
        return 0
    if args.part in ("speed", "all"):
        speed_table(args.repeats, args.data)
    if args.part in ("roundtrip", "all"):
        roundtrip_table(args.seeds, args.data)
    if args.part in ("noise", "all"):
        noise_table(args.seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
