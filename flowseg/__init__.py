"""flowseg: Cellpose-style instance segmentation of cells, with GPU-batched flow following.

Public API::

    model = flowseg.load_model()                       # the shipped default, or a checkpoint path
    results = flowseg.segment(images, model)           # list of SegmentResult
    flowseg.flows.labels_to_flows / flows_to_labels    # training targets / mask reconstruction
    flowseg.metrics.image_score                        # the competition metric

Configuration objects: :class:`SegmentConfig` (post-processing thresholds, per cell type),
:class:`PredictConfig` (how the network runs: tiles, flips, precision, normalisation),
:class:`ModelConfig`, :class:`TrainConfig`. Submodules: ``flowseg.io`` (file formats),
``flowseg.flows``, ``flowseg.metrics``, ``flowseg.model``, ``flowseg.training``,
``flowseg.tuning``, ``flowseg.batch``.
"""

from flowseg import flows, metrics, training
from flowseg.api import (PredictConfig, SegmentResult, load_model, predict_maps, segment,
                         segment_maps)
from flowseg.config import AugmentConfig, ClassThresholds, ModelConfig, SegmentConfig, TrainConfig
from flowseg.model.checkpoint import Model, save_model
from flowseg.model.pretrained import sample_paths
from flowseg.tuning import TuningData, TuningGrid, tune

__version__ = "0.1.0"

__all__ = [
    "AugmentConfig", "ClassThresholds", "Model", "ModelConfig", "PredictConfig", "SegmentConfig",
    "SegmentResult", "TrainConfig", "TuningData", "TuningGrid", "__version__", "flows",
    "load_model", "metrics", "predict_maps", "sample_paths", "save_model", "segment",
    "segment_maps", "training", "tune",
]
