"""Frozen, validated configuration objects.

``SegmentConfig`` holds everything that turns network output into labels (thresholds,
flow-following settings), with optional per-cell-type overrides. It is stored inside model
checkpoints so that ``segment(config=None)`` uses the tuned values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AugmentConfig", "ClassThresholds", "ModelConfig", "SegmentConfig", "TrainConfig"]


def _check_finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """``value`` when it is an int (not a bool) >= ``minimum``; else a TypeError / ValueError
    naming ``name``, what was expected and what was received."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class ClassThresholds:
    """Per-cell-type overrides; ``None`` means "use the config's global value".

    Attributes
    ----------
    cellprob_threshold : float or None
        Cell-probability *logit* above which a pixel is foreground.
    flow_threshold : float or None
        Maximum mean squared difference between predicted flows and flows recomputed from
        the instance; ``0`` disables the flow-error check.
    min_size : int or None
        Instances with fewer pixels are removed (pixels as the network sees the image: see
        :attr:`SegmentConfig.min_size`).
    """

    cellprob_threshold: float | None = None
    flow_threshold: float | None = None
    min_size: int | None = None

    def __post_init__(self) -> None:
        if self.cellprob_threshold is not None:
            _check_finite("cellprob_threshold", self.cellprob_threshold)
        if self.flow_threshold is not None:
            if _check_finite("flow_threshold", self.flow_threshold) < 0:
                raise ValueError(f"flow_threshold: expected >= 0, got {self.flow_threshold}")
        if self.min_size is not None:
            check_int("min_size", self.min_size, minimum=0)


#: The fields that :class:`ClassThresholds` sets per cell type.
CLASS_FIELDS = tuple(f.name for f in dataclasses.fields(ClassThresholds))

#: Values of ``SegmentConfig.class_source``.
CLASS_SOURCES = ("image", "instance")


@dataclass(frozen=True)
class SegmentConfig:
    """How network output (flows, cell probability, class logits) becomes labels.

    Attributes
    ----------
    cellprob_threshold : float
        Cell-probability logit threshold (0.0 = probability 0.5).
    flow_threshold : float
        Maximum per-instance mean squared flow error; ``0`` disables the check.
    min_size : int
        Minimum instance size in pixels, counted as the network sees the image: with
        ``segment(scale=s)`` (or a scale chosen from the cell size) an instance needs
        ``min_size / s**2`` of the image's own pixels, so a model's tuned sizes follow its cells
        to any magnification. At scale 1 (the default for Cellpose-sized data) they are the
        image's pixels.
    niter : int
        Longest flow path, in pixel steps, that is followed to its end. flowseg follows flows
        by pointer jumping (``2**ceil(log2(niter))`` steps in ``ceil(log2(niter))`` rounds), so
        the cost grows with ``log(niter)``; a pixel farther than this from its cell's sink ends
        early (and may split off). The default covers cells ~1000 px long.
    fill_holes : bool
        Fill holes enclosed by each instance.
    per_class : Mapping[str, ClassThresholds]
        Overrides per cell type, applied by :meth:`for_class`.
    class_source : {"image", "instance"}
        Whose cell type selects the ``per_class`` values of an instance: its image's (every
        instance of an image filtered with the image's values) or its own (clustered with
        the most permissive values over the classes, then each instance filtered with the
        values of its own type). See :func:`flowseg.postprocess.segment_maps`.
    min_flow : float
        Foreground pixels whose (unit-scale) flow is shorter than this do not move: they are
        sinks. Targets are unit length except at the sink, and a network's flows shrink near
        cell centres, so 0.3 turns the uncertain centre into one sink; with noisy flows it
        gave the best round trip in ``benchmarks/flows.py`` (0 lets every pixel move).
    exclude_on_edges : bool
        Drop instances that touch the image border (cellpose's ``exclude_on_edges``).

    Notes
    -----
    To change some values of a model's config and keep its tuned ones, use :meth:`override`:
    ``model.segment_config.override(min_size=30)``. A new ``SegmentConfig(min_size=30)`` has
    no per-type values, and ``dataclasses.replace(config, min_size=30)`` changes only the
    global value, which every type with its own ``min_size`` in ``per_class`` ignores
    (:func:`flowseg.segment` warns about both).
    """

    cellprob_threshold: float = 0.0
    flow_threshold: float = 0.4
    min_size: int = 15
    niter: int = 1024
    fill_holes: bool = True
    per_class: Mapping[str, ClassThresholds] = field(default_factory=dict)
    class_source: str = "image"
    min_flow: float = 0.3
    exclude_on_edges: bool = False

    def __post_init__(self) -> None:
        if self.class_source not in CLASS_SOURCES:
            raise ValueError(f"class_source: expected one of {CLASS_SOURCES}, got {self.class_source!r}")
        _check_finite("cellprob_threshold", self.cellprob_threshold)
        if _check_finite("flow_threshold", self.flow_threshold) < 0:
            raise ValueError(f"flow_threshold: expected >= 0, got {self.flow_threshold}")
        check_int("min_size", self.min_size, minimum=0)
        check_int("niter", self.niter, minimum=1)
        if _check_finite("min_flow", self.min_flow) < 0:
            raise ValueError(f"min_flow: expected >= 0, got {self.min_flow}")
        for name in ("fill_holes", "exclude_on_edges"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        if not isinstance(self.per_class, Mapping):
            raise TypeError(f"per_class: expected a mapping of cell type -> ClassThresholds, "
                            f"got {type(self.per_class).__name__}")
        for name, value in self.per_class.items():
            if not isinstance(value, ClassThresholds):
                raise TypeError(f"per_class[{name!r}]: expected ClassThresholds, "
                                f"got {type(value).__name__}")

    def for_class(self, cell_type: str | None) -> SegmentConfig:
        """Return this config with the overrides of ``cell_type`` applied (no per_class)."""
        overrides = self.per_class.get(cell_type) if cell_type is not None else None
        values = {} if overrides is None else {
            k: v for k, v in dataclasses.asdict(overrides).items() if v is not None}
        return dataclasses.replace(self, per_class={}, **values)

    def override(self, **values: Any) -> SegmentConfig:
        """This config with the given values changed and every other value kept.

        Parameters
        ----------
        **values
            ``SegmentConfig`` fields. For the per-type fields (``cellprob_threshold``,
            ``flow_threshold``, ``min_size``) a number sets the value of **every** cell type
            (the global value, and that field is cleared from each ``per_class`` entry, which
            would win otherwise); a mapping ``{cell type: number}`` sets those types only. Other
            fields (``niter``, ``exclude_on_edges``, ...) take a plain value.

        Returns
        -------
        SegmentConfig

        Raises
        ------
        TypeError
            An unknown field, or a mapping for a field that has no per-type values.

        Examples
        --------
        >>> tuned = SegmentConfig(min_size=15, per_class={"astro": ClassThresholds(min_size=100)})
        >>> tuned.override(min_size=30).for_class("astro").min_size
        30
        >>> tuned.override(min_size={"cort": 50}).for_class("astro").min_size
        100
        """
        known = {f.name for f in dataclasses.fields(self)} - {"per_class"}
        per_class = dict(self.per_class)
        changes = {}
        for name, value in values.items():
            if name not in known:
                raise TypeError(f"override: unknown value {name!r}; expected one of {sorted(known)}")
            if isinstance(value, Mapping):
                if name not in CLASS_FIELDS:
                    raise TypeError(f"{name}: expected one value for all cell types (per-type "
                                    f"values exist for {CLASS_FIELDS}), got a mapping")
                for cell_type, v in value.items():
                    per_class[cell_type] = dataclasses.replace(
                        per_class.get(cell_type, ClassThresholds()), **{name: v})
                continue
            changes[name] = value
            if name in CLASS_FIELDS:
                per_class = {k: dataclasses.replace(v, **{name: None}) for k, v in per_class.items()}
        return dataclasses.replace(self, per_class=per_class, **changes)

    def shadowed(self, name: str, class_names: Iterable[str]) -> list[str]:
        """The cell types of ``class_names`` that have their own value of the per-type field
        ``name`` in ``per_class`` (so the global value does not apply to them)."""
        return [t for t in class_names
                if getattr(self.per_class.get(t, ClassThresholds()), name) is not None]

    def to_dict(self) -> dict[str, Any]:
        """Plain-python representation (for checkpoints and JSON)."""
        d = dataclasses.asdict(self)
        d["per_class"] = {k: dataclasses.asdict(v) for k, v in self.per_class.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SegmentConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"SegmentConfig: unknown keys {sorted(unknown)}; expected {sorted(known)}")
        d = dict(d)
        d["per_class"] = {k: ClassThresholds(**v) for k, v in d.get("per_class", {}).items()}
        return cls(**d)


# ----------------------------------------------------------------------------- model / training
def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def _check_range(name: str, value: Any, *, low: float, high: float) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name}: expected a pair (min, max), got {value!r}")
    lo, hi = (_check_finite(f"{name}[{i}]", v) for i, v in enumerate(value))
    if not low <= lo <= hi <= high:
        raise ValueError(f"{name}: expected {low} <= min <= max <= {high}, got {value!r}")
    return lo, hi


def _from_plain(cls: type, d: Mapping[str, Any], **nested: Any) -> Any:
    """Build a frozen config from a plain dict, refusing unknown keys; lists become tuples."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}; expected {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    values.update({k: f(values[k]) for k, f in nested.items() if k in values})
    return cls(**values)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the flowseg U-Net (stored with the weights).

    Attributes
    ----------
    in_channels : int
        Image channels C of the network input (1 for grayscale).
    n_classes : int
        Number K of cell-type classes (``K >= 1``).
    widths : tuple of int
        Feature channels per resolution level, finest first; ``len(widths) - 1`` poolings, so
        the network works internally on sizes padded to a multiple of ``2 ** (len(widths) - 1)``.
    blocks : int
        Residual units (two pre-activation convolutions each) per level, encoder and decoder.
    kernel_size : int
        Odd convolution kernel size.
    skip : {"add", "concat"}
        How encoder features join the decoder: summed (Cellpose) or concatenated.
    style : bool
        Add the image style vector (normalised global average of the deepest features) into
        the decoder convolutions.
    style_classes : bool
        Add a linear function of the style vector to the class logits (an image-level cell-type
        cue; needs ``style``). Models saved before this field load with False.
    """

    in_channels: int = 1
    n_classes: int = 1
    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: int = 1
    kernel_size: int = 3
    skip: str = "add"
    style: bool = True
    style_classes: bool = True

    def __post_init__(self) -> None:
        check_int("in_channels", self.in_channels, minimum=1)
        check_int("n_classes", self.n_classes, minimum=1)
        if not isinstance(self.widths, tuple) or len(self.widths) < 2:
            raise TypeError(f"widths: expected a tuple of at least 2 ints, got {self.widths!r}")
        for i, w in enumerate(self.widths):
            check_int(f"widths[{i}]", w, minimum=1)
        check_int("blocks", self.blocks, minimum=1)
        if check_int("kernel_size", self.kernel_size, minimum=1) % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd int, got {self.kernel_size}")
        _check_choice("skip", self.skip, ("add", "concat"))
        for name in ("style", "style_classes"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")

    @property
    def size_multiple(self) -> int:
        """Input sizes are padded internally to a multiple of this."""
        return 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain-python representation (for checkpoints and JSON)."""
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error. A dict without
        ``style_classes`` (models from before that field) has none: False."""
        return _from_plain(cls, {"style_classes": False, **d})


@dataclass(frozen=True)
class AugmentConfig:
    """Random paired image/labels augmentation used in training.

    Attributes
    ----------
    flip : bool
        Random vertical and horizontal flips.
    rot90 : bool
        Random multiples of 90 degree rotations.
    rotation : float
        Extra rotation drawn uniformly from ``[-rotation, rotation]`` degrees (0 disables).
    scale : (float, float)
        Zoom factor range (``>1`` enlarges the cells); labels resampled nearest.
    brightness : float
        Added offset drawn from ``[-brightness, brightness]`` (images are normalised to ~[0, 1]).
    contrast : (float, float)
        Multiplicative contrast factor range.
    gamma : (float, float)
        Gamma exponent range applied to the positive part of the image.

        The three photometric settings are off by default: images are percentile-normalised
        before the network, and on the Sartorius split brightness 0.1, contrast 0.8-1.2 and
        gamma 0.8-1.25 (the defaults until 2026-12-01, with which the shipped model was
        trained) cost 0.005-0.014 of val score at 20 epochs on each of 3 seeds
        (``benchmarks/README.md``).
    low_res : float
        Probability (0-1) that a crop is seen at a lower resolution: shrunk (anti-aliased) by a
        factor drawn log-uniformly from ``low_res_factor`` and enlarged back bilinearly, as an
        image taken at a lower magnification looks once enlarged to the trained cell size.
        0 (the default) draws no random numbers for it.
    low_res_factor : (float, float)
        Range of that shrink factor (>= 1).
    """

    flip: bool = True
    rot90: bool = True
    rotation: float = 180.0
    scale: tuple[float, float] = (0.75, 1.25)
    brightness: float = 0.0
    contrast: tuple[float, float] = (1.0, 1.0)
    gamma: tuple[float, float] = (1.0, 1.0)
    low_res: float = 0.0
    low_res_factor: tuple[float, float] = (1.5, 3.0)

    def __post_init__(self) -> None:
        for name in ("flip", "rot90"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        if not 0 <= _check_finite("rotation", self.rotation) <= 180:
            raise ValueError(f"rotation: expected degrees in [0, 180], got {self.rotation}")
        _check_range("scale", self.scale, low=0.1, high=10.0)
        if not 0 <= _check_finite("brightness", self.brightness) <= 1:
            raise ValueError(f"brightness: expected a value in [0, 1], got {self.brightness}")
        _check_range("contrast", self.contrast, low=0.0, high=10.0)
        _check_range("gamma", self.gamma, low=0.05, high=20.0)
        if not 0 <= _check_finite("low_res", self.low_res) <= 1:
            raise ValueError(f"low_res: expected a probability in [0, 1], got {self.low_res}")
        _check_range("low_res_factor", self.low_res_factor, low=1.0, high=10.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain-python representation (for checkpoints and JSON)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AugmentConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return _from_plain(cls, d)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that makes a training run (stored in its checkpoints).

    Attributes
    ----------
    epochs : int
        Passes over the training images.
    batch_size : int
        Crops per optimisation step.
    lr : float
        Peak AdamW learning rate (after linear warm-up; cosine decay to 0 afterwards).
    weight_decay : float
        AdamW weight decay.
    warmup_epochs : float
        Length of the linear learning-rate warm-up, in epochs.
    crop_size : int
        Side of the square training crops (a multiple of the model's size multiple is fastest).
    flow_context : int
        Pixels of label context on every side of a crop from which its flow targets are
        computed (the centre is kept): a cell cut by the crop's edge keeps the centre of the
        whole cell, as the network sees it when it segments whole images or stitched tiles.
        0 (every run before this field): targets from the crop's labels alone, which moves the
        centre of every cut cell into the crop: 9.9 % of the cell pixels of 256-pixel astro
        crops then point > 45 degrees away from their whole-cell target, 0.9 % with 64 pixels
        of context (cort 2.7 % and 0.4 %; ``benchmarks/crop_targets.py``).
    val_every : int
        Segment and score the validation images every this many epochs (and after the last).
    seed : int
        Seeds weights, augmentation and data order: equal seeds give equal runs.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda:N"``.
    num_workers : int
        DataLoader worker processes for augmentation (0 = in the main process).
    balance_classes : bool
        Draw every cell type equally often in each epoch (sampling with replacement) instead of
        visiting each image once; for data dominated by one type.
    flow_weight, cellprob_weight, class_weight : float
        Loss weights of the flow MSE, cell-probability BCE and class cross-entropy.
    class_grad : float
        Fraction (0-1) of the class loss's gradient that flows into the network's shared
        features. 0 (default): the class loss trains only the class rows of the output head, on
        the features that segmentation learns; with 1 (every model before this field) the
        class term slowed segmentation ~10x at a small budget (``benchmarks/README.md``).
    augment : AugmentConfig
        Training augmentation.
    precision : {"auto", "bf16", "fp32"}
        Numeric precision of the network's forward pass: ``"auto"`` trains with bf16 autocast
        on CUDA and on CPUs with native bf16 (AVX-512 BF16 / AMX; there also in channels-last
        memory layout), float32 elsewhere (see :func:`flowseg.device.resolve_precision`). The
        loss is always computed in float32.
    pseudo_fraction : float
        Fraction (0 <= f < 1) of each epoch's crops drawn from pseudo-labelled images (the
        ``pseudo_items`` of :func:`flowseg.training.engine.fit`, ``flowseg-train --pseudo``)
        instead of the labelled ones; an epoch keeps its length. 0 (default): none.
    """

    epochs: int = 100
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 5.0
    crop_size: int = 256
    flow_context: int = 0
    val_every: int = 5
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    flow_weight: float = 0.5
    cellprob_weight: float = 1.0
    class_weight: float = 0.5
    class_grad: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    balance_classes: bool = False
    precision: str = "auto"
    pseudo_fraction: float = 0.0

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, minimum=1)
        _check_choice("precision", self.precision, ("auto", "bf16", "fp32"))
        check_int("batch_size", self.batch_size, minimum=1)
        if _check_finite("lr", self.lr) <= 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        for name in ("weight_decay", "warmup_epochs", "flow_weight", "cellprob_weight", "class_weight"):
            if _check_finite(name, getattr(self, name)) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if not 0.0 <= _check_finite("class_grad", self.class_grad) <= 1.0:
            raise ValueError(f"class_grad: expected a fraction in [0, 1], got {self.class_grad}")
        if not 0.0 <= _check_finite("pseudo_fraction", self.pseudo_fraction) < 1.0:
            raise ValueError(f"pseudo_fraction: expected a fraction in [0, 1), got {self.pseudo_fraction}")
        check_int("crop_size", self.crop_size, minimum=8)
        check_int("flow_context", self.flow_context, minimum=0)
        check_int("val_every", self.val_every, minimum=1)
        check_int("seed", self.seed, minimum=0)
        if not isinstance(self.device, str):
            raise TypeError(f"device: expected a str ('auto', 'cpu', 'cuda:N'), got {self.device!r}")
        check_int("num_workers", self.num_workers, minimum=0)
        if not isinstance(self.balance_classes, bool):
            raise TypeError(f"balance_classes: expected a bool, got {self.balance_classes!r}")
        if not isinstance(self.augment, AugmentConfig):
            raise TypeError(f"augment: expected an AugmentConfig, got {type(self.augment).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-python representation (for checkpoints and JSON)."""
        d = dataclasses.asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error. A dict without
        ``class_grad`` (runs from before that field) trained with the full class gradient: 1;
        one without ``flow_context`` with none: 0."""
        return _from_plain(cls, {"class_grad": 1.0, "flow_context": 0, **d},
                           augment=AugmentConfig.from_dict)
