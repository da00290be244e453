"""The Python API: ``load_model`` and ``segment`` (numpy in, result objects out).

``segment`` runs in three batched stages, after choosing each image's resize factor
(:func:`choose_scales`: given, from a cell diameter, or estimated by the model's size model):

1. network: every image is cut into equal tiles (or kept whole with ``tile=None``); tiles of all
   images share network batches; optional flip test-time augmentation; tiles are blended back;
2. classes: each image's cell type is first estimated from the class probabilities of its
   foreground pixels;
3. masks (:func:`segment_maps`): ``flows_to_labels`` clusters all images of one size at once
   (cell-probability threshold of the image's type, or the lowest over the types with
   ``SegmentConfig.class_source == "instance"``), then :func:`filter_instances` applies the
   per-class cell-probability threshold, min size and flow-error threshold to each instance
   (of its image's type, or of its own); last, per-instance cell type (highest mean class
   probability over the instance), class probabilities and confidence, and the image type
   (highest area-weighted mean class probability over the instances: a soft vote).

:func:`predict_maps` and :func:`segment_maps` are the two halves of :func:`segment`; tuning
(:mod:`flowseg.tuning`) runs the first once and the second many times.

Each stage has its own module: :mod:`flowseg.scales` (resize factors), :mod:`flowseg.predict`
(input checks, network), :mod:`flowseg.postprocess` (classes and masks, ``SegmentResult``);
their public names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from flowseg.config import CLASS_FIELDS, SegmentConfig
from flowseg.data.normalize import normalize_images
from flowseg.device import resolve_device
from flowseg.model.checkpoint import Model
from flowseg.model.checkpoint import load_model as _load_checkpoint
from flowseg.postprocess import (ClassValues, SegmentResult, cluster_config, cluster_maps, filter_instances,
                                 image_min_sizes, instance_classes, segment_maps)
from flowseg.predict import (DEFAULT_TILE, NORMALIZE, PredictConfig, check_image, check_images,
                             check_model, check_predict, check_tile, predict_maps)
from flowseg.scales import choose_scales, image_styles, model_size

__all__ = ["DEFAULT_TILE", "NORMALIZE", "ClassValues", "PredictConfig", "SegmentResult",
           "check_image", "check_model", "check_tile", "choose_scales", "cluster_config",
           "cluster_maps", "filter_instances", "image_min_sizes", "image_styles",
           "instance_classes", "load_model", "model_size", "predict_maps", "segment",
           "segment_maps", "warn_dropped_tuning"]

log = logging.getLogger(__name__)


def load_model(path: str | Path | Sequence[str | Path] | None = None, *,
               device: str | torch.device = "auto") -> Model:
    """Load a flowseg checkpoint onto ``device`` (``"auto"``: CUDA if available).

    ``path=None`` loads the default model shipped inside the package; a list of paths loads
    an ensemble of their networks (:func:`flowseg.model.ensemble.ensemble`: maps averaged,
    the first file's thresholds until the ensemble is tuned).
    """
    if path is None:
        from flowseg.model.pretrained import default_model_path

        path = default_model_path()
    device = resolve_device(device)
    if isinstance(path, (list, tuple)):
        from flowseg.model.ensemble import ensemble

        return ensemble([_load_checkpoint(p, device=device) for p in path],
                        names=[str(p) for p in path])
    return _load_checkpoint(path, device=device)


# ----------------------------------------------------------------------------- entry point
def warn_dropped_tuning(config: SegmentConfig, model: Model) -> None:
    """Log a warning when ``config`` loses the model's tuned per-type values, changes a global
    value that some cell types do not use (they have their own in ``per_class``), or names
    cell types the model does not have."""
    tuned = model.segment_config
    if config is tuned:
        return
    if tuned.per_class and not config.per_class:
        log.warning("config has no per-cell-type values: the model's tuned ones (%s) are not "
                    "used; to change a few values and keep the rest, pass "
                    "model.segment_config.override(...)", ", ".join(sorted(tuned.per_class)))
    for name in CLASS_FIELDS:
        own = config.shadowed(name, model.class_names)
        if own and getattr(config, name) != getattr(tuned, name):
            log.warning("config.%s = %s is not used for %s (their own %s in config.per_class); "
                        "set it for every type with config.override(%s=...)", name,
                        getattr(config, name), ", ".join(own), name, name)
    unknown = sorted(set(config.per_class) - set(model.class_names))
    if unknown:
        log.warning("config.per_class names cell types the model does not have: %s (its "
                    "types: %s)", ", ".join(unknown), ", ".join(model.class_names))


def segment(images: Sequence[np.ndarray], model: Model, *, config: SegmentConfig | None = None,
            predict: PredictConfig | None = None, scale: float | Sequence[float] | None = None,
            diameter: float | None = None, return_maps: bool = False,
            **options) -> list[SegmentResult]:
    """Segment images with a flowseg model.

    Parameters
    ----------
    images : sequence of (H, W) or (C, H, W) ndarrays
        Any sizes, any numeric dtype (each image is percentile-normalised).
    model : Model or list of Model
        From :func:`load_model` (a path or ``None`` is refused with a TypeError: load the model
        once, then call ``segment`` as often as needed). A list segments with the ensemble of
        the models (maps averaged; ``config=None`` takes the first model's thresholds: tune the
        ensemble for its own, ``flowseg-evaluate tune --model a.pt --model b.pt ...``).
    config : SegmentConfig, optional
        Post-processing thresholds; ``None`` uses those stored with the model (tuned values).
        To change a few and keep the tuned rest: ``model.segment_config.override(min_size=30)``
        (a config that would drop or ignore the tuned values is used, with a warning).
    predict : PredictConfig, optional
        How the network runs: batch size, tile side (default 256; None: whole images), flip
        test-time augmentation (default: the model's choice, ``model.tta``; the shipped model
        flips), precision (bf16 where the hardware has it), percentile normalisation;
        ``None``: the defaults. E.g. ``PredictConfig(tile=512, tta=False)``.
    scale : float or sequence of float, optional
        Resize factor (one, or one per image) applied to each image before the network (the
        network's maps are resized back, so labels always have the image's size). A network
        sees cells best at the size it was trained on: with cells twice that diameter, use
        0.5. ``min_size`` counts pixels as the network sees them (the model's tuned sizes are
        for cells at its training size): at scale ``s`` an instance needs ``min_size / s**2``
        of the image's pixels. ``niter`` stays in the image's pixels.
    diameter : float, optional
        Mean cell diameter in the images, in pixels: sets ``scale = model diameter / diameter``
        (cellpose's rule; the model's training diameter is ``model_size(model).diameter``).
        With neither ``scale`` nor ``diameter``, each image's cell size is estimated (one extra
        encoder pass at half resolution; :func:`choose_scales`) and images whose cells look
        more than 25 % larger or smaller than the training cells are resized; the choice is in
        ``SegmentResult.scale`` and ``.diameter``.
    return_maps : bool
        Keep the predicted flows and cell-probability logits in the results.
    **options
        Deprecated: the :class:`PredictConfig` fields (``batch_size``, ``tile``, ``tta``,
        ``precision``, ``normalize``) as separate keywords, the way before it; they still work, with
        a FutureWarning.

    Returns
    -------
    list of SegmentResult
        One per image, in order.
    """
    predict = check_predict(predict, options)
    model = check_model(model)
    config = model.segment_config if config is None else config
    if not isinstance(config, SegmentConfig):
        raise TypeError(f"config: expected a SegmentConfig or None, got {type(config).__name__}")
    warn_dropped_tuning(config, model)
    images = check_images(images, model.model_config.in_channels)
    if not images:
        return []
    # Normalised once here for both the size estimate and the network (each would redo it).
    images = normalize_images(images, percentiles=predict.normalize)
    normalized = dataclasses.replace(predict, normalize=None)
    scales, diameters = choose_scales(images, model, scale=scale, diameter=diameter,
                                      predict=normalized)
    maps = predict_maps(images, model, predict=normalized, scale=scales)
    results = segment_maps(maps, model.class_names, config=config, batch_size=predict.batch_size,
                           return_maps=return_maps, scales=scales)
    return [dataclasses.replace(r, scale=f, diameter=d)
            for r, f, d in zip(results, scales, diameters)]
