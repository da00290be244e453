"""The Usiigaci training layout (Tsai et al., SoftwareX 2019): ``ROOT/setN/raw.tif`` (phase
contrast, uint16) with ``ROOT/setN/instances_ids.png`` (instance labels, 0 = background)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowseg.errors import InputError
from flowseg.io.images import read_image, read_labels

__all__ = ["USIIGACI_CELL_TYPE", "UsiigaciSet", "list_usiigaci"]

USIIGACI_CELL_TYPE = "usiigaci"
IMAGE_FILE = "raw.tif"
LABELS_FILE = "instances_ids.png"


@dataclass(frozen=True)
class UsiigaciSet:
    """One ``setN`` folder.

    Attributes
    ----------
    name : str
        ``"usiigaci_setN"``.
    image_path, labels_path : Path
    cell_type : str
        Always ``"usiigaci"`` (the data set has a single cell line).
    """

    name: str
    image_path: Path
    labels_path: Path
    cell_type: str = USIIGACI_CELL_TYPE

    def image(self) -> np.ndarray:
        """The phase-contrast image, ``(H, W)`` uint16."""
        return read_image(self.image_path)

    def labels(self) -> np.ndarray:
        """The instance labels, ``(H, W)`` int32 (0 = background)."""
        return read_labels(self.labels_path)


def _natural_key(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def list_usiigaci(root: str | os.PathLike) -> list[UsiigaciSet]:
    """List the ``set*`` folders under ``root`` (natural order: set2 before set10).

    Parameters
    ----------
    root : path-like
        Folder holding ``set1/``, ``set2/``, ...; a single ``setN`` folder also works.

    Raises
    ------
    InputError
        ``root`` missing, no set folder, or a set folder without both files.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder (expected the Usiigaci root with setN/ folders)")
    folders = [root] if (root / IMAGE_FILE).exists() else sorted(
        (p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"set\d+", p.name)), key=_natural_key)
    if not folders:
        raise InputError(f"{root}: no setN/ folders with {IMAGE_FILE} and {LABELS_FILE}")
    sets = []
    for folder in folders:
        for file in (IMAGE_FILE, LABELS_FILE):
            if not (folder / file).is_file():
                raise InputError(f"{folder}: missing {file} (expected {IMAGE_FILE} and {LABELS_FILE})")
        sets.append(UsiigaciSet(f"usiigaci_{folder.name}", folder / IMAGE_FILE, folder / LABELS_FILE))
    return sets
