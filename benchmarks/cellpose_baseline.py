"""The cellpose 3.x baseline: CPnet trained from scratch on a flowseg data set, same budget.

    python benchmarks/cellpose_baseline.py --data .devdata/dev05 --out runs/cellpose_baseline \\
        --epochs 386 --nimg-per-epoch 28 --widths 16,32,64,128 --balance-classes
    evaluate --truth .devdata/dev05/val --pred runs/cellpose_baseline/pred_val --out runs/cellpose_baseline/report

Trains cellpose 3.1's own U-Net (``CPnet``) with cellpose's own recipe (``train_seg``: AdamW,
lr 0.005, its augmentation and loss), on the ``train/`` folder that ``flowseg-train`` uses,
at the images' own pixel scale (``rescale=False``, like flowseg), then segments ``val/`` the way
``CellposeModel.eval`` does with its default thresholds (``normalize_img``, the network on the
whole image, ``dynamics.compute_masks``: cellprob 0, flow error 0.4, min size 15; cellpose's
tiled ``run_net`` assumes 256 final channels, so the network runs on the padded whole image
instead) and writes ``<name>_masks.tif`` to
``OUT/pred_val`` (and ``OUT/pred_test`` with ``--predict val,test``) for ``evaluate`` (no ``cell_types.csv``: CPnet has no cell-type head). Budget parity with a flowseg run of E epochs over N training
images at batch 8 and 256-pixel crops: ``--epochs`` x ``--nimg-per-epoch`` = E x N crops.
cellpose draws ``nimg_per_epoch`` images per epoch with ``train_probs`` only when
``nimg_per_epoch != N``, so balanced runs use N + 1 (and E x N / (N + 1) epochs).
``--balance-classes`` gives every cell type the same total probability (images of a type
equally likely), the distribution of ``flowseg-train --balance-classes``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from flowseg.io.folders import list_folder
from flowseg.io.images import read_image, read_labels, write_labels


def _load(folder: Path):
    items = list_folder(folder)
    images = [read_image(i.image_path).astype(np.float32) for i in items]
    labels = [read_labels(i.masks_path).astype(np.int32) for i in items]
    return items, images, labels


def balanced_probs(cell_types: list[str]) -> np.ndarray:
    """Per-image draw probabilities that give every cell type an equal share."""
    names, inverse, counts = np.unique(np.asarray(cell_types), return_inverse=True, return_counts=True)
    w = 1.0 / (len(names) * counts[inverse])
    return w / w.sum()


def cellpose_maps(net, image: np.ndarray) -> np.ndarray:
    """(3, H, W): a CPnet's 5x unit flows (dy, dx) and cellprob logit for one (H, W) image,
    with cellpose's normalisation, on the whole image padded to a multiple of 16."""
    from cellpose import transforms
    x = transforms.normalize_img(transforms.convert_image(image, channels=[0, 0], nchan=2))
    h, w = x.shape[:2]
    x = np.pad(x, ((0, -h % 16), (0, -w % 16), (0, 0)), mode="reflect")
    with torch.inference_mode():
        y = net(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].float())[0]
    return y[0, :3, :h, :w].numpy()


def cellpose_masks(flows: np.ndarray, cellprob: np.ndarray) -> np.ndarray:
    """(H, W) labels from cellpose's mask step with ``CellposeModel.eval``'s defaults."""
    from cellpose import dynamics
    out = dynamics.compute_masks(flows, cellprob, niter=200, cellprob_threshold=0.0,
                                 flow_threshold=0.4, min_size=15)
    return out[0] if isinstance(out, tuple) else out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="data_prep output (train/, val/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=386)
    p.add_argument("--nimg-per-epoch", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=256, help="cellpose bsize")
    p.add_argument("--widths", default="32,64,128,256", help="CPnet nbase after the input channels")
    p.add_argument("--balance-classes", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--predict", default="val",
                   help="comma list of the data's folders to segment into OUT/pred_<folder> "
                        "(default val; e.g. val,test for a data_prep --test-fraction split)")
    args = p.parse_args()

    from cellpose import io as cpio
    from cellpose.resnet_torch import CPnet
    from cellpose.train import train_seg
    cpio.logger_setup()
    logging.getLogger("cellpose").setLevel(logging.WARNING)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    train_items, train_x, train_y = _load(args.data / "train")
    probs = balanced_probs([i.cell_type for i in train_items]) if args.balance_classes else None
    nbase = [2] + [int(w) for w in args.widths.split(",")]
    net = CPnet(nbase, 3, sz=3, mkldnn=False, max_pool=True, diam_mean=30.0)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    path, train_losses, _ = train_seg(
        net, train_data=train_x, train_labels=train_y, train_probs=probs, channels=[0, 0],
        batch_size=args.batch_size, n_epochs=args.epochs, nimg_per_epoch=args.nimg_per_epoch,
        rescale=False, bsize=args.crop, min_train_masks=1, save_path=str(args.out),
        model_name="cpnet", save_every=10**9)
    train_s = time.perf_counter() - t0

    net.eval()
    t0 = time.perf_counter()
    for folder in args.predict.split(","):
        items, images, _ = _load(args.data / folder)
        pred = args.out / f"pred_{folder}"
        for item, image in zip(items, images):
            maps = cellpose_maps(net, image)
            masks = cellpose_masks(maps[:2], maps[2])
            write_labels(pred / f"{item.name}_masks.tif", masks.astype(np.int32))
    eval_s = time.perf_counter() - t0
    crops = args.epochs * (args.nimg_per_epoch or len(train_items))
    print(f"cellpose CPnet nbase {nbase}: {sum(q.numel() for q in net.parameters())} parameters; "
          f"{args.epochs} epochs, {crops} crops of {args.crop}, train {train_s:.0f} s "
          f"(final loss {train_losses[-1]:.4f}); segmentation of {args.predict} {eval_s:.1f} s; "
          f"weights {path}")


if __name__ == "__main__":
    main()
