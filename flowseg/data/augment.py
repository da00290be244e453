"""Paired random augmentation of an image and its labels (crop, flips, rotations, scale,
resolution, intensity).

All geometric steps are folded into one affine map sampled per crop: the image is resampled
bilinearly, the labels nearest, both with zeros outside the source image, so they stay aligned.
When the map is a pure flip / 90-degree rotation with an integer offset the resampling is exact.
An optional ignore mask (pixels without a training target) is resampled nearest, like the labels.

The labels can be resampled with ``label_context`` extra pixels on every side of the crop (the
same map, a wider window): training computes each crop's flow targets from those wider labels
and keeps the centre, so a cell cut by the crop's edge keeps the centre of the whole cell
instead of getting one inside the crop (see :class:`flowseg.config.TrainConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from flowseg.config import AugmentConfig
from flowseg.rescale import rescale_image

__all__ = ["AffineMap", "random_affine", "apply_affine", "warp_image", "warp_labels",
           "warp_mask", "widen", "lower_resolution",
           "adjust_intensity", "augment_pair", "augment_sample"]


@dataclass(frozen=True)
class AffineMap:
    """Output pixel ``o`` (row, col) samples the input at ``matrix @ o + offset``.

    Attributes
    ----------
    matrix : (2, 2) ndarray of float64
    offset : (2,) ndarray of float64
    shape : (int, int)
        Output (crop) shape.
    """

    matrix: np.ndarray
    offset: np.ndarray
    shape: tuple[int, int]


def _orientation(rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Random signed permutation matrix from flips and 90-degree rotations."""
    m = np.eye(2)
    if config.flip:
        m = np.diag(rng.choice([-1.0, 1.0], size=2)) @ m
    if config.rot90 and rng.random() < 0.5:
        m = np.array([[0.0, -1.0], [1.0, 0.0]]) @ m
    return m


def random_affine(image_shape: tuple[int, int], crop_size: int, rng: np.random.Generator,
                  config: AugmentConfig) -> AffineMap:
    """Sample the geometric augmentation of one ``crop_size`` crop from an image of ``image_shape``.

    The crop lies inside the (transformed) image when it fits, and is centred (zero padded)
    when it does not.
    """
    theta = np.deg2rad(rng.uniform(-config.rotation, config.rotation)) if config.rotation else 0.0
    zoom = rng.uniform(*config.scale)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    matrix = rotation @ _orientation(rng, config) / zoom
    centre_out = np.full(2, (crop_size - 1) / 2)
    half = np.abs(matrix) @ centre_out
    centre_in = np.empty(2)
    for axis, size in enumerate(image_shape):
        room = size - 1 - 2 * half[axis]
        centre_in[axis] = (size - 1) / 2 if room <= 0 else half[axis] + rng.uniform(0, room)
    offset = centre_in - matrix @ centre_out
    if np.array_equal(matrix, np.round(matrix)):
        offset = np.round(offset)
    return AffineMap(matrix, offset, (crop_size, crop_size))


def widen(transform: AffineMap, context: int) -> AffineMap:
    """The same map onto a window ``context`` pixels larger on every side: output pixel
    ``o + context`` of the result samples where ``o`` of ``transform`` does.

    Parameters
    ----------
    transform : AffineMap
    context : int
        Extra pixels per side, >= 0 (0 returns ``transform``).

    Returns
    -------
    AffineMap
        Of shape ``(h + 2 * context, w + 2 * context)``.
    """
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < 0:
        raise ValueError(f"context: expected an int >= 0 (pixels per side), got {context!r}")
    if context == 0:
        return transform
    h, w = transform.shape
    offset = transform.offset - transform.matrix @ np.full(2, float(context))
    return AffineMap(transform.matrix, offset, (h + 2 * context, w + 2 * context))


def _warp(a: np.ndarray, transform: AffineMap, order: int) -> np.ndarray:
    return ndimage.affine_transform(a, transform.matrix, transform.offset,
                                    output_shape=transform.shape, order=order,
                                    mode="constant", cval=0, prefilter=False)


def apply_affine(image: np.ndarray, labels: np.ndarray, transform: AffineMap
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``image`` (C, H, W) float32 bilinearly and ``labels`` (H, W) int nearest.

    Returns
    -------
    image : (C, h, w) ndarray of float32
    labels : (h, w) ndarray of int32
    """
    return warp_image(image, transform), warp_labels(labels, transform)


def warp_image(image: np.ndarray, transform: AffineMap) -> np.ndarray:
    """Resample ``image`` (C, H, W) bilinearly, zeros outside it -> (C, h, w) float32."""
    return np.stack([_warp(c, transform, 1) for c in image.astype(np.float32, copy=False)])


def warp_labels(labels: np.ndarray, transform: AffineMap) -> np.ndarray:
    """Resample ``labels`` (H, W) int nearest, 0 outside them -> (h, w) int32."""
    return _warp(labels.astype(np.int32, copy=False), transform, 0)


def warp_mask(mask: np.ndarray, transform: AffineMap) -> np.ndarray:
    """Resample a (H, W) bool mask nearest, as :func:`apply_affine` resamples labels (False
    outside the source image).

    Returns
    -------
    mask : (h, w) ndarray of bool
    """
    return _warp(mask.astype(np.uint8, copy=False), transform, 0).astype(bool)


def lower_resolution(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` as if taken at ``1 / factor`` of its resolution and enlarged back to its size:
    an anti-aliased shrink to ``round(side / factor)`` pixels, then a bilinear enlargement (what
    segmenting a low-magnification image at the trained cell size does to it).

    Parameters
    ----------
    image : (C, H, W) ndarray of float32
    factor : float
        Shrink factor, >= 1 (1 returns ``image`` unchanged).

    Returns
    -------
    image : (C, H, W) ndarray of float32
    """
    if factor < 1 or not np.isfinite(factor):
        raise ValueError(f"factor: expected a finite value >= 1, got {factor}")
    shrunk = rescale_image(image, 1 / factor)
    if shrunk.shape == image.shape:
        return image
    return resize(shrunk, image.shape, order=1, mode="edge", anti_aliasing=False,
                  preserve_range=True).astype(np.float32)


def adjust_intensity(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Random gamma (on the positive part), contrast and brightness of a normalised image."""
    gamma = np.exp(rng.uniform(*np.log(config.gamma)))
    contrast = rng.uniform(*config.contrast)
    brightness = rng.uniform(-config.brightness, config.brightness)
    positive = np.maximum(image, 0)
    out = np.where(image > 0, positive ** gamma, image)
    return (out * contrast + brightness).astype(np.float32)


def augment_pair(image: np.ndarray, labels: np.ndarray, *, crop_size: int,
                 rng: np.random.Generator, config: AugmentConfig | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Random crop + geometric + intensity augmentation of a normalised image and its labels.

    Parameters
    ----------
    image : (C, H, W) ndarray of float32
        Normalised image (see :func:`flowseg.data.normalize.normalize_image`).
    labels : (H, W) ndarray of int
        Instance labels of ``image``.
    crop_size : int
        Side of the square output.
    rng : numpy.random.Generator
        Source of all randomness (seed it for repeatable crops).
    config : AugmentConfig, optional
        ``None`` uses the defaults.

    Returns
    -------
    image : (C, crop_size, crop_size) ndarray of float32
    labels : (crop_size, crop_size) ndarray of int32
    """
    image, labels, _ = augment_sample(image, labels, None, crop_size=crop_size, rng=rng,
                                      config=config)
    return image, labels


def augment_sample(image: np.ndarray, labels: np.ndarray, ignore: np.ndarray | None, *,
                   crop_size: int, rng: np.random.Generator, config: AugmentConfig | None = None,
                   label_context: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`augment_pair` that also carries an ignore mask (resampled nearest, like labels).

    The random numbers drawn are those of :func:`augment_pair`, so a sample gives the same
    image and labels crop with or without a mask.

    Parameters
    ----------
    image : (C, H, W) ndarray of float32
    labels : (H, W) ndarray of int
    ignore : (H, W) ndarray of bool, or None
        Pixels without a training target; None: none.
    crop_size, rng, config
        As in :func:`augment_pair`.
    label_context : int, optional
        Extra pixels of labels on every side of the crop (``c``; see :func:`widen`). The random
        numbers drawn, and so the image, do not depend on it; ``labels[c:-c, c:-c]`` is the
        crop's labels.

    Returns
    -------
    image : (C, crop_size, crop_size) ndarray of float32
    labels : (crop_size + 2c, crop_size + 2c) ndarray of int32
    ignore : (crop_size, crop_size) ndarray of bool
        All False when ``ignore`` is None; pixels from outside the image are not ignored (they
        are background, as in the labels).
    """
    config = AugmentConfig() if config is None else config
    if image.ndim != 3 or labels.shape != image.shape[1:]:
        raise ValueError(f"image, labels: expected shapes (C, H, W) and (H, W), "
                         f"got {image.shape} and {labels.shape}")
    if ignore is not None and ignore.shape != labels.shape:
        raise ValueError(f"ignore: expected the labels' shape {labels.shape}, got {ignore.shape}")
    transform = random_affine(labels.shape, crop_size, rng, config)
    image = warp_image(image, transform)
    labels = warp_labels(labels, widen(transform, label_context))
    ignore = (np.zeros(transform.shape, bool) if ignore is None
              else warp_mask(ignore, transform))
    if config.low_res and rng.random() < config.low_res:
        image = lower_resolution(image, float(np.exp(rng.uniform(*np.log(config.low_res_factor)))))
    return adjust_intensity(image, rng, config), labels, ignore
