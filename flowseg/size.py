"""Cell size: the diameter of a label image, and the size model that estimates per image how
far its cells are from the size the network was trained at.

A network sees cells well only near the sizes it was trained on. Every model records the
median cell diameter of its training masks (:func:`label_diameters`), so a user who knows the
diameter of their cells can ask for it (``segment(diameter=PX)``: resize factor
``model diameter / PX``, cellpose's rule). Without a diameter, a :class:`SizeModel` estimates
the *zoom* of each image: how much larger its cells look than those of training images of the
same kind (a ridge regression of ``log zoom`` on the network's style vector of the image
downsampled by ``low_res``, one encoder pass at a quarter of the pixels: the means and standard
deviations of every encoder level, averaged over tiles of 64 x 64 so that the estimate does
not depend on the image's size). The image is then
resized by ``1 / zoom`` -- unless the zoom is within ``tolerance`` of 1, where the network
already sees sizes it was trained on and the image is left as it is.

The style-vector regression follows cellpose's size model (``SizeModel``: ridge regression of
the log diameter on the style); regressing the zoom rather than the diameter keeps each cell
type at its own trained size (cortical neurons and astrocytes differ 2x in diameter in the same
training set).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

__all__ = ["ALPHAS", "SIZE_MODEL_KEY", "SizeModel", "check_diameter", "choose_alpha", "fit_ridge",
           "fit_size_model", "label_diameter", "label_diameters", "scale_for_diameter"]

#: Key of the size model in a checkpoint's metadata.
SIZE_MODEL_KEY = "size_model"
#: Resize factors ``segment`` applies at most / at least (a wrong estimate stays bounded).
SCALE_LIMITS = (0.25, 4.0)


def label_diameters(labels: np.ndarray) -> np.ndarray:
    """Diameter of each instance: that of the disc of equal area, ``2 sqrt(area / pi)``.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 = background.

    Returns
    -------
    (N,) ndarray of float64
        One per instance present (in increasing id order); empty without instances.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected an (H, W) integer label image, got shape "
                         f"{labels.shape} dtype {labels.dtype}")
    counts = np.bincount(labels[labels > 0].ravel())
    counts = counts[counts > 0]
    return 2.0 * np.sqrt(counts / np.pi)


def label_diameter(labels: np.ndarray) -> float:
    """Median instance diameter of a label image in pixels (cellpose's ``diameters``);
    NaN without instances."""
    d = label_diameters(labels)
    return float(np.median(d)) if d.size else math.nan


def check_diameter(value: object, name: str = "diameter") -> float:
    """``value`` as a float; ValueError unless it is a positive, finite number of pixels."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive cell diameter in pixels, got {value!r}")
    return float(value)


def scale_for_diameter(diameter: float, model_diameter: float) -> float:
    """Resize factor that brings cells of ``diameter`` pixels to the model's diameter."""
    return check_diameter(model_diameter, "model_diameter") / check_diameter(diameter)


def fit_ridge(x: np.ndarray, y: np.ndarray, *, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge regression ``y ~ x @ coef + intercept`` (intercept not penalised).

    Parameters
    ----------
    x : (N, D) ndarray of float
    y : (N,) ndarray of float
    alpha : float
        Penalty per sample: ``|| y - x coef ||^2 / N + alpha || coef ||^2``.

    Returns
    -------
    coef : (D,) ndarray of float64
    intercept : float
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.shape != (len(x),) or len(x) < 2:
        raise ValueError(f"x, y: expected (N, D) and (N,) with N >= 2, got {x.shape} and {y.shape}")
    mean = x.mean(axis=0)
    xc = x - mean
    gram = xc.T @ xc + alpha * len(x) * np.eye(x.shape[1])
    coef = np.linalg.solve(gram, xc.T @ (y - y.mean()))
    return coef, float(y.mean() - mean @ coef)


@dataclass(frozen=True)
class SizeModel:
    """How large the cells of an image are, from the network's style vector.

    Attributes
    ----------
    diameter : float
        Median cell diameter of the training masks, in pixels (the model's diameter).
    class_diameters : mapping of str to float
        The same per cell type.
    coef : tuple of float
        Ridge coefficients of ``log zoom`` on the style vector (its length = style size).
    intercept : float
    low_res : float
        Images are downsampled by this factor before the style pass.
    levels : int
        Encoder levels whose styles are regressed (``UNet.level_styles``; 1 = the style vector).
    spread : bool
        Also the levels' standard deviations (``UNet.level_styles(spread=True)``).
    tile : int or None
        The style of an image is the mean over tiles of this side (pixels after ``low_res``),
        so that crops and whole fields of view are estimated alike; None: the whole image.
    tolerance : float
        Estimated zooms within ``[1 / tolerance, tolerance]`` leave the image unresized.
    fit_error : float
        Median absolute error of ``log zoom`` on the images it was checked on (0.1 = 10 %).
    zoom_range : (float, float)
        The zooms the regression was fitted over.
    """

    diameter: float
    class_diameters: Mapping[str, float] = field(default_factory=dict)
    coef: tuple[float, ...] = ()
    intercept: float = 0.0
    low_res: float = 0.5
    levels: int = 4
    spread: bool = True
    tile: int | None = 64
    tolerance: float = 1.25
    fit_error: float = math.nan
    zoom_range: tuple[float, float] = (1 / 3, 3.0)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.diameter) and self.diameter > 0):
            raise ValueError(f"diameter: expected a positive number of pixels, got {self.diameter!r}")
        if not 0 < self.low_res <= 1:
            raise ValueError(f"low_res: expected a factor in (0, 1], got {self.low_res!r}")
        if not self.tolerance >= 1:
            raise ValueError(f"tolerance: expected a factor >= 1, got {self.tolerance!r}")
        object.__setattr__(self, "coef", tuple(float(c) for c in self.coef))
        object.__setattr__(self, "class_diameters",
                           {str(k): float(v) for k, v in self.class_diameters.items()})
        object.__setattr__(self, "zoom_range", tuple(float(z) for z in self.zoom_range))

    @property
    def can_estimate(self) -> bool:
        """Whether a zoom regression was fitted (else only ``diameter`` is known)."""
        return len(self.coef) > 0

    def zooms(self, styles: np.ndarray) -> np.ndarray:
        """Estimated zoom of each image, ``(N,)`` float64, from its styles ``(N, D)``."""
        styles = np.asarray(styles, dtype=np.float64)
        if not self.can_estimate:
            raise ValueError("size model: no zoom regression was fitted (diameter only)")
        if styles.ndim != 2 or styles.shape[1] != len(self.coef):
            raise ValueError(f"styles: expected shape (N, {len(self.coef)}), got {styles.shape}")
        return np.exp(styles @ np.asarray(self.coef) + self.intercept)

    def scale(self, zoom: float) -> float:
        """Resize factor for an image of estimated ``zoom``: 1 within the tolerance, else
        ``1 / zoom`` with the zoom bounded to ``zoom_range`` (the regression knows nothing
        beyond it) and the factor to :data:`SCALE_LIMITS`."""
        if 1 / self.tolerance <= zoom <= self.tolerance:
            return 1.0
        zoom = float(np.clip(zoom, *self.zoom_range))
        return float(np.clip(1.0 / zoom, *SCALE_LIMITS))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for a checkpoint's metadata)."""
        values = asdict(self)
        values["class_diameters"] = dict(self.class_diameters)
        values["coef"] = list(self.coef)
        values["zoom_range"] = list(self.zoom_range)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SizeModel:
        """Inverse of :meth:`to_dict` (unknown keys refused)."""
        if not isinstance(values, Mapping):
            raise TypeError(f"size model: expected a mapping, got {type(values).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"size model: unknown keys {unknown} (known: {sorted(known)})")
        return cls(**values)


#: Ridge penalties :func:`fit_size_model` chooses from by cross-validation.
ALPHAS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def choose_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *,
                 alphas: Sequence[float] = ALPHAS, folds: int = 5) -> float:
    """The ridge penalty of ``alphas`` with the least median absolute error over ``folds``
    folds that keep each group (the zooms of one image) together."""
    groups = np.asarray(groups)
    if groups.shape != (len(x),):
        raise ValueError(f"groups: expected shape ({len(x)},), got {groups.shape}")
    ids = np.unique(groups)
    fold_of = {g: i % folds for i, g in enumerate(ids)}
    fold = np.array([fold_of[g] for g in groups])
    if len(ids) < 2:
        return float(alphas[len(alphas) // 2])
    errors = []
    for alpha in alphas:
        residuals = []
        for f in np.unique(fold):
            train, test = fold != f, fold == f
            coef, intercept = fit_ridge(x[train], y[train], alpha=alpha)
            residuals.append(np.abs(x[test] @ coef + intercept - y[test]))
        errors.append(float(np.median(np.concatenate(residuals))))
    return float(alphas[int(np.argmin(errors))])


def fit_size_model(styles: np.ndarray, zooms: np.ndarray, *, diameter: float,
                   class_diameters: Mapping[str, float] | None = None, low_res: float = 0.5,
                   levels: int = 4, spread: bool = True, tile: int | None = 64,
                   tolerance: float = 1.25,
                   alpha: float | None = None,
                   groups: np.ndarray | None = None,
                   check: tuple[np.ndarray, np.ndarray] | None = None,
                   zoom_range: Sequence[float] = (1 / 3, 3.0)) -> SizeModel:
    """Fit the zoom regression of a :class:`SizeModel`.

    Parameters
    ----------
    styles : (N, D) ndarray of float
        Style vectors of training images, each zoomed by ``zooms[i]`` then downsampled by
        ``low_res``.
    zooms : (N,) ndarray of float
        The zoom applied to each (> 0).
    diameter, class_diameters, low_res, levels, spread, tile, tolerance
        Stored as given (see :class:`SizeModel`).
    alpha : float, optional
        Ridge penalty (see :func:`fit_ridge`); None: chosen from :data:`ALPHAS` by
        cross-validation over ``groups`` (:func:`choose_alpha`).
    groups : (N,) ndarray, optional
        Which image each style comes from (default: each its own).
    check : ((M, D), (M,)) ndarrays, optional
        Styles and zooms of other images: ``fit_error`` is measured on them (else on the fit's own).
    """
    zooms = np.asarray(zooms, dtype=np.float64)
    if np.any(~np.isfinite(zooms)) or np.any(zooms <= 0):
        raise ValueError("zooms: expected positive finite factors")
    styles = np.asarray(styles, dtype=np.float64)
    if alpha is None:
        alpha = choose_alpha(styles, np.log(zooms),
                             np.arange(len(zooms)) if groups is None else groups)
    coef, intercept = fit_ridge(styles, np.log(zooms), alpha=alpha)
    model = SizeModel(diameter=diameter, class_diameters=class_diameters or {}, coef=tuple(coef),
                      intercept=intercept, low_res=low_res, levels=levels, spread=spread, tile=tile,
                      tolerance=tolerance,
                      zoom_range=tuple(zoom_range))
    check_styles, check_zooms = check if check is not None else (styles, zooms)
    error = np.abs(np.log(model.zooms(check_styles)) - np.log(np.asarray(check_zooms)))
    return replace(model, fit_error=float(np.median(error)))
