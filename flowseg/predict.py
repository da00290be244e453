"""The network stage of segmentation: input checks, then the network run over images of any
sizes (:func:`predict_maps`: tiles of all images batched together, optional flip test-time
augmentation, tiles blended back, maps resized back to each image's size). How the network runs
is one :class:`PredictConfig`."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from flowseg.config import check_int
from flowseg.data.normalize import check_percentiles, normalize_images
from flowseg.device import PRECISIONS, autocast, preferred_memory_format, resolve_precision
from flowseg.model.checkpoint import Model
from flowseg.rescale import check_scales, resize_stack, scaled_shape
from flowseg.tiling import TileGrid, split_tiles, stitch_tiles, tile_grid

__all__ = ["DEFAULT_TILE", "NORMALIZE", "PREDICT_FIELDS", "TILE_OVERLAP", "PredictConfig",
           "check_image", "check_images", "check_model", "check_predict", "check_tile",
           "predict_maps", "resolve_tta", "set_layout"]

#: Default network tile side in pixels (images larger than this are tiled with overlap).
DEFAULT_TILE = 256
#: Fraction of a tile shared with its neighbour.
TILE_OVERLAP = 0.1
#: Default percentiles of each image mapped to 0 and 1 before the network (as in training).
NORMALIZE = (1.0, 99.0)


# ----------------------------------------------------------------------------- input checks
def check_model(model: object) -> Model:
    """``model`` if it is a loaded :class:`~flowseg.model.checkpoint.Model` (a list of them: their
    ensemble, :func:`flowseg.model.ensemble.ensemble`), else a TypeError that says how to get
    one (a path is not loaded here: loading is :func:`load_model`'s job, once, not on every
    call)."""
    if isinstance(model, Model):
        return model
    if isinstance(model, (list, tuple)) and model and all(isinstance(m, Model) for m in model):
        from flowseg.model.ensemble import ensemble

        return ensemble(model)
    if isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model: expected a loaded flowseg Model, got the path {str(model)!r}; "
                        f"load it once first: model = flowseg.load_model({str(model)!r})")
    raise TypeError(f"model: expected a loaded flowseg Model (flowseg.load_model(path), or "
                    f"flowseg.load_model() for the shipped default), got "
                    f"{type(model).__name__} {model!r:.40}")


def check_tile(tile: object, *, size_multiple: int) -> int | None:
    """The network tile side to use: ``None`` (whole images) for ``tile`` None or 0.

    Parameters
    ----------
    tile : int or None
        0 or None: whole images (untiled); else the side of the square tiles in pixels, a
        positive multiple of ``size_multiple``.
    size_multiple : int
        The model's :attr:`~flowseg.config.ModelConfig.size_multiple` (``2 ** poolings``).

    Returns
    -------
    int or None

    Raises
    ------
    TypeError
        ``tile`` is not an int (bool is not).
    ValueError
        A negative ``tile``, or one that is not a multiple of ``size_multiple``; the message
        names the allowed sizes.
    """
    if tile is None:
        return None
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)):
        raise TypeError(f"tile: expected an int (0 or None: whole images, untiled), "
                        f"got {type(tile).__name__} {tile!r}")
    if tile == 0:
        return None
    if tile < 0 or tile % size_multiple:
        below = max(size_multiple, int(tile) // size_multiple * size_multiple)
        example = f"{DEFAULT_TILE}" if tile < 0 else f"{below} or {below + size_multiple}"
        allowed = "a positive tile side in pixels" if size_multiple == 1 else (
            f"a tile side in pixels that is a positive multiple of {size_multiple} (this model "
            f"halves the image size {size_multiple.bit_length() - 1} times)")
        raise ValueError(f"tile: expected 0 (whole images, untiled) or {allowed}, e.g. {example}; "
                         f"got {tile}")
    return int(tile)


@dataclass(frozen=True)
class PredictConfig:
    """How the network runs over images (what the maps are made of is
    :class:`~flowseg.config.SegmentConfig`'s part). Checked when made; change one value with
    ``dataclasses.replace(config, tile=512)``.

    Attributes
    ----------
    batch_size : int
        Network tiles (or whole images) per forward pass.
    tile : int or None
        Network tile side in pixels, a positive multiple of the model's ``size_multiple`` (8
        for the default model; checked against the model when it runs, :func:`check_tile`);
        larger images are tiled with overlap and blended. ``0`` or ``None`` runs each image
        whole (untiled; ``0`` is stored as ``None``).
    tta : bool or None
        Average the four flips of each tile (4x the network cost). None (the default): as the
        model chose (:attr:`flowseg.Model.tta`, set when its thresholds were tuned on
        flip-averaged maps; False for models that record no choice).
    precision : {"auto", "bf16", "fp32"}
        The network's arithmetic: ``"auto"`` is bf16 autocast on CUDA and on CPUs with native
        bf16 (AVX-512 BF16 / AMX, where it is 2-3x faster), float32 elsewhere; ``"fp32"``
        always float32 (see :func:`flowseg.device.resolve_precision`). Maps are float32 either
        way, and flow following is the same.
    normalize : (float, float) or None
        Percentiles of each image channel mapped to 0 and 1 before the network (default 1, 99,
        as in training; cellpose's ``norm_percentile``); None: pixel values as they are
        (cellpose's ``--no_norm``), for images already scaled to about [0, 1].
    """

    batch_size: int = 8
    tile: int | None = DEFAULT_TILE
    tta: bool | None = None
    precision: str = "auto"
    normalize: tuple[float, float] | None = NORMALIZE

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size, minimum=1)
        object.__setattr__(self, "tile", check_tile(self.tile, size_multiple=1))
        if self.tta is not None and not isinstance(self.tta, bool):
            raise TypeError(f"tta: expected a bool or None (the model's choice), got {self.tta!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {self.precision!r}")
        object.__setattr__(self, "normalize", check_percentiles(self.normalize))


#: The fields of :class:`PredictConfig` (the keyword options ``segment`` took before it).
PREDICT_FIELDS = tuple(f.name for f in dataclasses.fields(PredictConfig))


def check_predict(predict: object, options: dict | None = None, *, caller: str = "segment"
                  ) -> PredictConfig:
    """``predict`` as a :class:`PredictConfig` (None: the defaults).

    ``options``: the network options given one by one as keywords (``batch_size``, ``tile``,
    ``tta``, ``precision``, ``normalize``), as ``caller`` took them before ``PredictConfig``;
    they still work, with a FutureWarning, and make the config.

    Raises
    ------
    TypeError
        ``predict`` is not a PredictConfig or None; an unknown keyword; both ``predict`` and
        ``options``.
    """
    options = options or {}
    unknown = sorted(set(options) - set(PREDICT_FIELDS))
    if unknown:
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {', '.join(unknown)}")
    if predict is not None and not isinstance(predict, PredictConfig):
        raise TypeError(f"predict: expected a PredictConfig or None, got {type(predict).__name__}")
    if not options:
        return PredictConfig() if predict is None else predict
    given = ", ".join(f"{k}={v!r}" for k, v in options.items())
    if predict is not None:
        raise TypeError(f"{caller}: give the network options in predict=PredictConfig(...) only, "
                        f"not also as keywords ({given})")
    warnings.warn(f"{caller}({', '.join(options)}=...) is deprecated: pass "
                  f"predict=flowseg.PredictConfig({given})", FutureWarning, stacklevel=3)
    return PredictConfig(**options)


def check_image(image: object, in_channels: int, name: str) -> np.ndarray:
    """``image`` if it is an ``(H, W)`` or ``(C, H, W)`` array with the model's channels.

    Parameters
    ----------
    image : ndarray
    in_channels : int
        The model's input channels C (an ``(H, W)`` image has 1).
    name : str
        How messages name the image (``"images[2]"``, a file path).

    Raises
    ------
    TypeError
        Not a numpy array.
    ValueError
        Not 2-D or 3-D, or another number of channels (e.g. an RGB image or a z-stack for a
        1-channel model).
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(image).__name__}")
    channels = 1 if image.ndim == 2 else (image.shape[0] if image.ndim == 3 else None)
    if channels is None:
        raise ValueError(f"{name}: expected shape (H, W) or (C, H, W), got {image.shape}")
    if channels != in_channels:
        raise ValueError(f"{name}: the model takes {in_channels} channel(s), got an image of "
                         f"shape {image.shape} ({channels} channels: colour, a z-stack or a "
                         "time series?)")
    return image


def check_images(images: Sequence[np.ndarray], in_channels: int) -> list[np.ndarray]:
    if isinstance(images, (np.ndarray, torch.Tensor)):
        raise TypeError("images: expected a list of arrays (H, W) or (C, H, W); got a single "
                        f"{type(images).__name__} of shape {tuple(images.shape)} — wrap one image "
                        "in a list: segment([image], model)")
    if images is None or isinstance(images, (str, os.PathLike)) \
            or not isinstance(images, Iterable):
        raise TypeError(f"images: expected a list of arrays (H, W) or (C, H, W) (read files with "
                        f"flowseg.io.images.read_image), got {type(images).__name__} "
                        f"{images!r:.40}")
    return [check_image(image, in_channels, f"images[{i}]") for i, image in enumerate(images)]

# ----------------------------------------------------------------------------- network stage
def resolve_tta(predict: PredictConfig, model: Model) -> bool:
    """Whether the network runs with flip test-time augmentation: ``predict.tta``, or the
    model's own choice (``model.tta``) where that is None."""
    return model.tta if predict.tta is None else predict.tta


def _forward(model: Model, x: torch.Tensor, *, tta: bool, dtype: torch.dtype) -> torch.Tensor:
    """Network output (B, 3 + K, h, w) float32: unit flows (dy, dx), cellprob logit, class logits.

    The network runs under autocast to ``dtype``. With ``tta`` the outputs of the four flips are
    averaged (flow components un-flipped).
    """
    flips = [(), (-1,), (-2,), (-2, -1)] if tta else [()]
    layout = preferred_memory_format(x.device, dtype)
    total = None
    for dims in flips:
        xin = (x.flip(dims) if dims else x).contiguous(memory_format=layout)
        with autocast(x.device, dtype):
            out = model.net(xin)
        maps = torch.cat([out.flows / model.flow_scale, out.cellprob[:, None], out.class_logits], 1).float()
        if dims:
            maps = maps.flip(dims)
            if -2 in dims:
                maps[:, 0] = -maps[:, 0]
            if -1 in dims:
                maps[:, 1] = -maps[:, 1]
        total = maps if total is None else total + maps
    return (total / len(flips)).float()


def set_layout(model: Model, device: torch.device, dtype: torch.dtype) -> None:
    """Put the network's weights in the memory layout its inputs will have. Only the layout
    changes, but the kernels (and so the last bits of bf16 results) follow it: every pass sets
    it, so that a first call computes what later calls do."""
    model.net.to(memory_format=preferred_memory_format(device, dtype))


def predict_maps(images: Sequence[np.ndarray], model: Model, *,
                 predict: PredictConfig | None = None, scale: float | Sequence[float] = 1.0,
                 **options) -> list[torch.Tensor]:
    """Run the network over images of any sizes, batching tiles of all images together.

    ``predict``: how the network runs (tiles, flips, precision, normalisation; None: the
    defaults), see :class:`PredictConfig`. With ``scale != 1`` (one factor, or one per image)
    each normalised image is resized by its factor before the network and its maps are resized
    back to the image's own size (see ``segment``). ``options``: the :class:`PredictConfig`
    fields as keywords, the way before it (deprecated).

    Returns
    -------
    list of (3 + K, H, W) float32 tensors (on the model's device)
        Per image: unit flows (dy, dx), cell-probability logit, K class logits.
    """
    predict = check_predict(predict, options, caller="predict_maps")
    model = check_model(model)
    images = check_images(images, model.model_config.in_channels)
    tile = check_tile(predict.tile, size_multiple=model.model_config.size_multiple)
    scales = check_scales(scale, len(images))
    device = next(model.net.parameters()).device
    dtype = resolve_precision(predict.precision, device)
    set_layout(model, device, dtype)
    normalized = normalize_images(images, percentiles=predict.normalize)
    tensors = [torch.from_numpy(im) for im in normalized]
    shapes = [tuple(t.shape[-2:]) for t in tensors]
    tensors = [resize_stack(t, scaled_shape(hw, f)) if f != 1.0 else t
               for t, hw, f in zip(tensors, shapes, scales)]
    align = model.model_config.size_multiple  # the network's total pooling stride
    grids: list[TileGrid | None] = [
        tile_grid(t.shape[-2:], tile=tile, overlap=TILE_OVERLAP, align=align) if tile else None
        for t in tensors]
    # Units of network work: whole images (tile=None) or tiles; batched by shape.
    pieces = []  # (image index, piece tensor)
    for i, (t, grid) in enumerate(zip(tensors, grids)):
        pieces.extend((i, p) for p in (split_tiles(t, grid) if grid else t[None]))
    outputs: list[list[torch.Tensor]] = [[] for _ in tensors]
    order = sorted(range(len(pieces)), key=lambda k: tuple(pieces[k][1].shape))
    tta = resolve_tta(predict, model)
    model.net.eval()
    with torch.inference_mode():
        start = 0
        while start < len(order):
            shape = pieces[order[start]][1].shape
            batch = [order[start]]
            while (len(batch) < predict.batch_size and start + len(batch) < len(order)
                   and pieces[order[start + len(batch)]][1].shape == shape):
                batch.append(order[start + len(batch)])
            x = torch.stack([pieces[k][1] for k in batch]).to(device)
            y = _forward(model, x, tta=tta, dtype=dtype)
            for k, out in zip(batch, y):
                outputs[pieces[k][0]].append((k, out))
            start += len(batch)
    maps = []
    for i, grid in enumerate(grids):
        outs = torch.stack([o for _, o in sorted(outputs[i], key=lambda ko: ko[0])])
        out = stitch_tiles(outs, grid) if grid else outs[0]
        maps.append(resize_stack(out, shapes[i]) if scales[i] != 1.0 else out)
    return maps
