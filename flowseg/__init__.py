"""flowseg: Cellpose-style instance segmentation of cells, with GPU-batched flow following.

Public API (see README): configuration objects, flow fields, metrics, model loading and
segmentation. Submodules: ``flowseg.io`` (file formats), ``flowseg.flows``,
``flowseg.metrics``, ``flowseg.model``, ``flowseg.training``.
"""

from flowseg.config import ClassThresholds, SegmentConfig

__version__ = "0.1.0"

__all__ = ["ClassThresholds", "SegmentConfig", "__version__"]
