"""Build the real development set used by the training runs reported in README/benchmarks.

    python benchmarks/dev_data.py --shared ../shared/data --out .devdata/dev

Runs ``data_prep`` on the Usiigaci sets (31 images, cell type ``usiigaci``; resized by
``--usiigaci-scale``, default 0.5, which brings their cells, median diameter 37-74 px, to the
size of the Sartorius cells, 14-28 px, so that one network sees one cell scale) and on the three
Sartorius images (``astro`` x1, ``cort`` x2, holes filled), then merges both into
``OUT/train`` and ``OUT/val``. A cell type with a single image (Sartorius astro) cannot be split
by image, so its image is cut into a left half (train) and a right half (val); instances cut
by the line are kept on both sides as their visible parts.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from flowseg.cli.data_prep import main as data_prep
from flowseg.io.folders import list_folder, write_cell_types, write_folder_item
from flowseg.io.images import read_image, read_labels
from flowseg.io.instances import relabel_consecutive


def _copy_split(src: Path, dst: Path, types: dict[str, str]) -> None:
    for item in list_folder(src):
        write_folder_item(dst, item.name, read_image(item.image_path), read_labels(item.masks_path),
                          item.cell_type)
        types[item.name] = item.cell_type


def _halve(item, train: Path, val: Path, types: dict[str, dict[str, str]]) -> None:
    image, labels = read_image(item.image_path), read_labels(item.masks_path)
    mid = image.shape[-1] // 2
    for split, folder, cols in (("train", train, slice(0, mid)), ("val", val, slice(mid, None))):
        name = f"{item.name}_{'left' if split == 'train' else 'right'}"
        write_folder_item(folder, name, image[..., cols], relabel_consecutive(labels[:, cols]),
                          item.cell_type)
        types[split][name] = item.cell_type


def build(shared: Path, out: Path, *, seed: int = 0, usiigaci_scale: float = 0.5) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_prep(["usiigaci", "--root", str(shared / "usiigaci"), "--out", str(tmp / "u"),
                   "--val-fraction", "0.2", "--seed", str(seed), "--scale", str(usiigaci_scale),
                   "--quiet"])
        data_prep(["sartorius", "--csv", str(shared / "sartorius" / "train.csv"),
                   "--images", str(shared / "sartorius" / "train"), "--out", str(tmp / "s"),
                   "--fill-holes", "--val-fraction", "0.5", "--seed", str(seed), "--quiet"])
        if out.exists():
            shutil.rmtree(out)
        types: dict[str, dict[str, str]] = {"train": {}, "val": {}}
        for split in ("train", "val"):
            _copy_split(tmp / "u" / split, out / split, types[split])
        s_train, s_val = list_folder(tmp / "s" / "train"), list_folder(tmp / "s" / "val")
        val_types = {i.cell_type for i in s_val}
        for item in s_train:
            if item.cell_type in val_types:
                write_folder_item(out / "train", item.name, read_image(item.image_path),
                                  read_labels(item.masks_path), item.cell_type)
                types["train"][item.name] = item.cell_type
            else:
                _halve(item, out / "train", out / "val", types)
        _copy_split(tmp / "s" / "val", out / "val", types["val"])
        for split in ("train", "val"):
            write_cell_types(out / split, types[split])
    for split in ("train", "val"):
        counts: dict[str, list[int]] = {}
        for item in list_folder(out / split):
            n = len(np.unique(read_labels(item.masks_path))) - 1
            c = counts.setdefault(item.cell_type, [0, 0])
            c[0] += 1
            c[1] += n
        for cell_type, (n_img, n_inst) in sorted(counts.items()):
            print(f"{split:5s} {cell_type:9s} images {n_img:3d} instances {n_inst:5d}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, default=Path(".devdata/dev"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--usiigaci-scale", type=float, default=0.5,
                   help="resize factor of the Usiigaci images (default 0.5)")
    args = p.parse_args()
    build(args.shared, args.out, seed=args.seed, usiigaci_scale=args.usiigaci_scale)


if __name__ == "__main__":
    main()
