"""Fitting a model's size model (:class:`flowseg.size.SizeModel`) on its training images.

The training masks give the model's diameter (median instance diameter, overall and per cell
type). For the zoom regression, each of up to ``max_images`` training images gives
``zooms_per_image`` random crops (from ``min_crop`` px to the whole image) resized by random
zooms (log-uniform over ``zoom_range``); the style vector of each (after the size model's
``low_res`` downsampling) is regressed on ``log zoom``. Validation
images at fixed zooms measure the error (``SizeModel.fit_error``).

This is how cellpose fits its size model (style vectors of rescaled training images, ridge
regression), with the zoom rather than the diameter as the target (see :mod:`flowseg.size`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flowseg.data.dataset import Sample
from flowseg.model.checkpoint import Model
from flowseg.rescale import rescale_image
from flowseg.scales import image_styles
from flowseg.size import SIZE_MODEL_KEY, SizeModel, fit_size_model, label_diameters

__all__ = ["CHECK_ZOOMS", "SizeFitConfig", "attach_size_model", "fit_model_size",
           "random_crop", "training_diameters"]

log = logging.getLogger(__name__)

#: Zooms at which each check (validation) image is measured.
CHECK_ZOOMS = (0.5, 0.71, 1.0, 1.41, 2.0)


@dataclass(frozen=True)
class SizeFitConfig:
    """How the size model is fitted.

    Attributes
    ----------
    zoom_range : (float, float)
        Zooms of the training images (log-uniform); the estimate is meaningful inside it.
    zooms_per_image : int
    max_images : int
        Training images used (an even spread over the set; the cost is one encoder pass each).
    min_crop : int
        Each training image is cropped at random, sides from ``min_crop`` to the whole image
        (in zoomed pixels), so that crops and whole fields of view are estimated alike.
    max_check_images : int
    smooth_fraction : float
        Share (0-1) of the shrunk crops (zoom < 1) made smaller as most tools shrink images,
        with Gaussian anti-aliasing (:func:`flowseg.rescale.rescale_image`), the rest by
        the style pass's own resize: blur makes cells look larger to the network, so the
        estimate must learn not to depend on how an image was made small.
    low_res, levels, spread, tile, tolerance
        See :class:`flowseg.size.SizeModel`; ``levels`` None: every encoder level.
    alpha : float or None
        Ridge penalty; None: chosen by cross-validation over the images
        (:func:`flowseg.size.choose_alpha`).
    seed : int
    precision : str
        Of the style passes (see :func:`flowseg.segment`).
    """

    zoom_range: tuple[float, float] = (1 / 3, 3.0)
    zooms_per_image: int = 3
    max_images: int = 200
    max_check_images: int = 30
    min_crop: int = 96
    smooth_fraction: float = 0.5
    low_res: float = 0.5
    levels: int | None = None
    spread: bool = True
    tile: int | None = 64
    tolerance: float = 1.25
    alpha: float | None = None
    seed: int = 0
    precision: str = "auto"

    def __post_init__(self) -> None:
        low, high = self.zoom_range
        if not 0 < low < 1 < high:
            raise ValueError(f"zoom_range: expected (low, high) with 0 < low < 1 < high, got {self.zoom_range}")
        for name in ("zooms_per_image", "max_images", "max_check_images", "min_crop"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)!r}")
        if not 0 <= self.smooth_fraction <= 1:
            raise ValueError(f"smooth_fraction: expected a share in [0, 1], got {self.smooth_fraction!r}")


def training_diameters(samples: Sequence[Sample]) -> tuple[float, dict[str, float]]:
    """Median instance diameter over all samples' masks, and per cell type (pixels).

    Raises ValueError when no sample has an instance."""
    per_type: dict[str, list[np.ndarray]] = {}
    for s in samples:
        per_type.setdefault(s.cell_type, []).append(label_diameters(s.labels))
    every = np.concatenate([d for ds in per_type.values() for d in ds]) if per_type else np.zeros(0)
    if every.size == 0:
        raise ValueError("samples: no instance in any mask, so no cell diameter can be measured")
    by_type = {t: float(np.median(np.concatenate(ds))) for t, ds in sorted(per_type.items())
               if sum(d.size for d in ds)}
    return float(np.median(every)), by_type


def _spread(samples: Sequence[Sample], n: int) -> list[Sample]:
    """At most ``n`` samples evenly spread over the sequence (all cell types kept in their
    proportions when the set is sorted by type or mixed)."""
    with_cells = [s for s in samples if s.labels.any()]
    if len(with_cells) <= n:
        return with_cells
    return [with_cells[int(i)] for i in np.linspace(0, len(with_cells) - 1, n)]


def random_crop(image: np.ndarray, zoom: float, min_crop: int,
                rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``image`` (C, H, W) whose sides, once zoomed by ``zoom``, are drawn
    uniformly from ``[min_crop, zoomed side]`` (the whole image when that is smaller): the
    estimate must not depend on how much of a field of view the user's image shows."""
    out = []
    for n in image.shape[-2:]:
        zoomed = n * zoom
        side = zoomed if zoomed <= min_crop else rng.uniform(min_crop, zoomed)
        out.append(min(n, max(1, round(side / zoom))))
    h, w = out
    top = int(rng.integers(0, image.shape[-2] - h + 1))
    left = int(rng.integers(0, image.shape[-1] - w + 1))
    return image[..., top:top + h, left:left + w]


def fit_model_size(model: Model, train: Sequence[Sample], check: Sequence[Sample] = (), *,
                   config: SizeFitConfig = SizeFitConfig()) -> SizeModel:
    """Measure the training diameter and fit the zoom regression on ``model``'s styles.

    Parameters
    ----------
    model : Model
        A trained model whose network has a style vector.
    train : sequence of Sample
        Training images (their masks give the diameters; images the regression).
    check : sequence of Sample
        Validation images for ``fit_error`` (empty: measured on the fit's own samples).
    config : SizeFitConfig
    """
    diameter, class_diameters = training_diameters(train)
    levels = config.levels or len(model.model_config.widths)
    rng = np.random.default_rng(config.seed)
    chosen = _spread(train, config.max_images)
    low, high = np.log(config.zoom_range)
    zooms = np.exp(rng.uniform(low, high, (len(chosen), config.zooms_per_image)))
    images = [random_crop(s.image, z, config.min_crop, rng)
              for s, zs in zip(chosen, zooms) for z in zs]
    factors = list(zooms.ravel() * config.low_res)
    for i, z in enumerate(zooms.ravel()):
        if z < 1 and rng.random() < config.smooth_fraction:
            images[i], factors[i] = rescale_image(images[i], z), config.low_res
    # Each crop is normalised on its own percentiles, as segment() normalises a user's image.
    styles = image_styles(images, model, factors=factors,
                          levels=levels, spread=config.spread, tile=config.tile,
                          precision=config.precision)
    checked = None
    check = _spread(check, config.max_check_images)
    if check:
        check_zooms = np.array([z for _ in check for z in CHECK_ZOOMS])
        check_images = [s.image for s in check for _ in CHECK_ZOOMS]
        checked = (image_styles(check_images, model, factors=list(check_zooms * config.low_res),
                                levels=levels, spread=config.spread, tile=config.tile,
                                precision=config.precision), check_zooms)
    size = fit_size_model(styles, zooms.ravel(), diameter=diameter,
                          class_diameters=class_diameters, low_res=config.low_res,
                          levels=levels, spread=config.spread, tile=config.tile,
                          tolerance=config.tolerance,
                          alpha=config.alpha,
                          groups=np.repeat(np.arange(len(chosen)), config.zooms_per_image),
                          check=checked,
                          zoom_range=config.zoom_range)
    log.info("size model: training diameter %.1f px (%s); zoom estimate error %.1f %% (median, "
             "%s)", size.diameter,
             ", ".join(f"{k} {v:.1f}" for k, v in size.class_diameters.items()),
             100 * (np.exp(size.fit_error) - 1), "validation images" if check else "fit images")
    return size


def attach_size_model(model: Model, size: SizeModel) -> Model:
    """``model`` with ``size`` in its metadata (in place; returned for chaining)."""
    model.metadata = {**model.metadata, SIZE_MODEL_KEY: size.to_dict()}
    return model
