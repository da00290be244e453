"""Training samples in memory and the augmented crop dataset.

Randomness is keyed by ``(seed, epoch, index)``: a crop does not depend on worker processes
or on where a run was resumed, so equal seeds give equal runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from flowseg.config import AugmentConfig
from flowseg.data.augment import augment_sample
from flowseg.data.normalize import normalize_image
from flowseg.errors import InputError, some_names

__all__ = ["Sample", "make_sample", "load_folder", "class_names_of", "images_without_cells",
           "CropDataset", "epoch_order", "mixed_epoch_order"]


@dataclass(frozen=True)
class Sample:
    """One normalised training or validation image.

    Attributes
    ----------
    name : str
    image : (C, H, W) ndarray of float32
        Normalised (:func:`normalize_image`).
    labels : (H, W) ndarray of int32
    cell_type : str
    ignore : (H, W) ndarray of bool, or None
        Pixels without a training target (no loss there), e.g. where a pseudo-labelling
        teacher was unsure; None: every pixel's label is known.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    cell_type: str
    ignore: np.ndarray | None = None


def make_sample(name: str, image: np.ndarray, labels: np.ndarray, cell_type: str, *,
                ignore: np.ndarray | None = None) -> Sample:
    """Normalise ``image`` ((H, W) or (C, H, W), any dtype) and check it against ``labels``
    (and the optional bool ``ignore`` mask)."""
    image = normalize_image(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape[1:]:
        raise ValueError(f"{name}: labels shape {labels.shape} does not match the image's "
                         f"height and width {image.shape[1:]}")
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise ValueError(f"{name}: expected non-negative integer labels, got dtype {labels.dtype}")
    if ignore is not None:
        ignore = np.asarray(ignore)
        if ignore.shape != labels.shape or ignore.dtype != bool:
            raise ValueError(f"{name}: expected a bool ignore mask of shape {labels.shape}, got "
                             f"{ignore.dtype} {ignore.shape}")
    return Sample(name, image, labels.astype(np.int32, copy=False), str(cell_type), ignore)


def load_folder(directory: str | os.PathLike) -> list[Sample]:
    """Read and normalise every image of a Cellpose-style folder (see flowseg.io.folders),
    with its ``_ignore`` mask where the folder has one.

    Raises
    ------
    InputError
        A bad file (see :func:`flowseg.io.folders.list_folder`), or images with different
        numbers of channels, e.g. grayscale and RGB (the message names the files).
    """
    from flowseg.io.folders import list_folder, read_ignore_mask
    from flowseg.io.images import read_image, read_labels

    items = list_folder(directory)
    samples = [make_sample(item.name, read_image(item.image_path), read_labels(item.masks_path),
                           item.cell_type,
                           ignore=None if item.ignore_path is None else read_ignore_mask(item.ignore_path))
               for item in items]
    _check_same_channels(directory, [(item.image_path.name, s.image.shape[0])
                                     for item, s in zip(items, samples)])
    return samples


def _check_same_channels(directory: str | os.PathLike, channels: Sequence[tuple[str, int]]) -> None:
    """Refuse a folder whose images (file name, channel count) differ in channel count."""
    files: dict[int, list[str]] = {}
    for name, count in channels:
        files.setdefault(count, []).append(name)
    if len(files) > 1:
        groups = "; ".join(f"{count} channel(s) in {some_names(names, limit=5)}"
                           for count, names in sorted(files.items()))
        raise InputError(f"{directory}: expected every image to have the same number of channels "
                         f"(all grayscale or all colour), got {groups}")


def images_without_cells(samples: Sequence[Sample]) -> list[str]:
    """Names of the samples whose labels hold no cell (all 0)."""
    return [s.name for s in samples if not s.labels.any()]


def class_names_of(samples: Sequence[Sample]) -> tuple[str, ...]:
    """Sorted distinct cell types of ``samples``."""
    return tuple(sorted({s.cell_type for s in samples}))


def epoch_order(n: int, *, seed: int, epoch: int, groups: Sequence[str] | None = None) -> np.ndarray:
    """The order in which ``epoch`` visits ``n`` samples (a pure function of seed and epoch).

    Without ``groups``: a permutation of ``0..n-1``. With ``groups`` (one label per sample,
    e.g. its cell type): ``n`` draws in which every group is equally likely and samples within a
    group are equally likely (class-balanced sampling, with replacement). A sample drawn again
    in the same epoch is returned as ``index + n * k`` (its k-th repeat), so that
    :class:`CropDataset` gives each draw its own random crop.

    Returns
    -------
    (n,) ndarray of int64
    """
    rng = np.random.default_rng([seed, epoch, 0])
    if groups is None:
        return rng.permutation(n)
    if len(groups) != n:
        raise ValueError(f"groups: expected {n} labels (one per sample), got {len(groups)}")
    names, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    weights = 1.0 / (len(names) * counts[inverse])
    draws = rng.choice(n, size=n, replace=True, p=weights / weights.sum())
    return draws + n * _repeat_counts(draws)


def _repeat_counts(draws: np.ndarray) -> np.ndarray:
    """For each draw, how often the same value was drawn before it."""
    repeat = np.zeros(len(draws), dtype=np.int64)
    seen: dict[int, int] = {}
    for pos, idx in enumerate(draws.tolist()):
        repeat[pos] = seen.get(idx, 0)
        seen[idx] = repeat[pos] + 1
    return repeat


def mixed_epoch_order(n: int, n_extra: int, *, fraction: float, seed: int, epoch: int,
                      groups: Sequence[str] | None = None) -> np.ndarray:
    """An epoch of ``n`` draws, a ``fraction`` of them from ``n_extra`` extra samples (e.g.
    pseudo-labelled images), the rest from ``n`` labelled ones; a pure function of its arguments.

    Samples are numbered as in one dataset of ``n + n_extra`` samples, the labelled ones first.
    The labelled draws are the first ``n - round(fraction * n)`` of :func:`epoch_order` (with
    ``groups``: class-balanced); the extra draws visit the extra samples in a seeded random
    order, cycling when more draws than samples are needed. Both are shuffled together. A
    sample drawn again in the epoch is returned as ``index + (n + n_extra) * k`` (its k-th
    repeat; see :class:`CropDataset`). With ``fraction == 0`` or no extra samples this is
    :func:`epoch_order` itself.

    Returns
    -------
    (n,) ndarray of int64
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction: expected a value in [0, 1), got {fraction}")
    base = epoch_order(n, seed=seed, epoch=epoch, groups=groups)
    n_mixed = round(fraction * n) if n_extra else 0
    if n_mixed == 0:
        return base
    rng = np.random.default_rng([seed, epoch, 2])
    cycles = -(-n_mixed // n_extra)
    extra = np.concatenate([rng.permutation(n_extra) for _ in range(cycles)])[:n_mixed] + n
    draws = np.concatenate([base[:n - n_mixed] % n, extra])[rng.permutation(n)]
    return draws + (n + n_extra) * _repeat_counts(draws)


class CropDataset(Dataset):
    """Augmented square crops of samples: item ``i`` -> (image, labels, class index, ignore).

    Parameters
    ----------
    samples : sequence of Sample
    class_names : tuple of str
        ``class_index = class_names.index(sample.cell_type)``.
    crop_size : int
    augment : AugmentConfig
    seed : int
        With :meth:`set_epoch`, keys every crop's random numbers.
    label_context : int, optional
        Extra pixels of labels on every side of each crop (``c``, for flow targets of whole
        cells; see :func:`flowseg.data.augment.augment_sample`). Default 0.

    Items
    -----
    image : (C, crop, crop) tensor of float32
    labels : (crop + 2c, crop + 2c) tensor of int32
        The crop's labels are ``labels[c:-c, c:-c]`` (all of it for ``c = 0``).
    class_index : int
    ignore : (crop, crop) tensor of bool
        Pixels without a training target (all False for a sample without an ignore mask).
    """

    def __init__(self, samples: Sequence[Sample], class_names: Sequence[str], *, crop_size: int,
                 augment: AugmentConfig, seed: int, label_context: int = 0) -> None:
        unknown = sorted({s.cell_type for s in samples} - set(class_names))
        if unknown:
            raise ValueError(f"samples: cell types {unknown} are not in class_names {tuple(class_names)}")
        self.samples = list(samples)
        self.class_index = {name: i for i, name in enumerate(class_names)}
        self.crop_size = crop_size
        self.label_context = label_context
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the random numbers of ``epoch`` (call before iterating)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        """Crop of sample ``index % len(self)``; ``index`` keys the random numbers (repeats of a
        sample in one epoch, see :func:`epoch_order`, get different crops)."""
        sample = self.samples[index % len(self.samples)]
        rng = np.random.default_rng([self.seed, self.epoch, 1, index])
        image, labels, ignore = augment_sample(sample.image, sample.labels, sample.ignore,
                                               crop_size=self.crop_size, rng=rng,
                                               config=self.augment,
                                               label_context=self.label_context)
        return (torch.from_numpy(image), torch.from_numpy(labels),
                self.class_index[sample.cell_type], torch.from_numpy(ignore))
