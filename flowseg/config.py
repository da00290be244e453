"""Frozen, validated configuration objects.

``SegmentConfig`` holds everything that turns network output into labels (thresholds,
flow-following settings), with optional per-cell-type overrides. It is stored inside model
checkpoints so that ``segment(config=None)`` uses the tuned values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ClassThresholds", "SegmentConfig"]


def _check_finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _check_int(name: str, value: Any, *, minimum: int) -> int:
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
        Instances with fewer pixels are removed.
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
            _check_int("min_size", self.min_size, minimum=0)


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
        Minimum instance size in pixels.
    niter : int
        Number of flow-following steps.
    fill_holes : bool
        Fill holes enclosed by each instance.
    per_class : Mapping[str, ClassThresholds]
        Overrides per cell type, applied by :meth:`for_class`.
    """

    cellprob_threshold: float = 0.0
    flow_threshold: float = 0.4
    min_size: int = 15
    niter: int = 200
    fill_holes: bool = True
    per_class: Mapping[str, ClassThresholds] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_finite("cellprob_threshold", self.cellprob_threshold)
        if _check_finite("flow_threshold", self.flow_threshold) < 0:
            raise ValueError(f"flow_threshold: expected >= 0, got {self.flow_threshold}")
        _check_int("min_size", self.min_size, minimum=0)
        _check_int("niter", self.niter, minimum=1)
        if not isinstance(self.fill_holes, bool):
            raise TypeError(f"fill_holes: expected a bool, got {self.fill_holes!r}")
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
