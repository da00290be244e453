import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from flowseg.api import predict_maps, segment, segment_maps
from flowseg.config import ModelConfig, SegmentConfig
from flowseg.flows import labels_to_flows
from flowseg.metrics import image_score
from flowseg.model.checkpoint import Model
from flowseg.model.unet import FLOW_SCALE, NetOutput, UNet
from flowseg.synthetic import make_synthetic


def tiny_model(*, style: bool = True, n_classes: int = 2, seed: int = 0) -> Model:
    torch.manual_seed(seed)
    config = ModelConfig(n_classes=n_classes, widths=(8, 16, 32), style=style)
    net = UNet(config).eval()
    return Model(net, config, tuple(f"type{k}" for k in range(n_classes)))


class OracleNet(nn.Module):
    """Returns the exact maps of fixed labels: the targets' flows, +/-8 logits, class ``k``."""

    def __init__(self, labels: np.ndarray, k: int, n_classes: int) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        lab = torch.from_numpy(labels)
        self.flows = torch.from_numpy(labels_to_flows(labels)) * FLOW_SCALE
        self.cellprob = torch.where(lab > 0, 8.0, -8.0)
        self.classes = torch.full((n_classes, *labels.shape), -4.0)
        self.classes[k] = 4.0

    def forward(self, x: torch.Tensor) -> NetOutput:
        assert x.shape[-2:] == self.cellprob.shape
        b = x.shape[0]
        return NetOutput(self.flows.expand(b, -1, -1, -1), self.cellprob.expand(b, -1, -1),
                         self.classes.expand(b, -1, -1, -1))


def test_mixed_sizes_give_consistent_results():
    model = tiny_model()
    images = [np.random.default_rng(i).random(shape).astype(np.float32)
              for i, shape in enumerate([(40, 50), (70, 33), (40, 50)])]
    results = segment(images, model, batch_size=2, tile=32, return_maps=True)
    assert len(results) == 3
    for image, res in zip(images, results):
        n = int(res.labels.max())
        assert res.labels.shape == image.shape and res.labels.dtype == np.int32
        assert len(res.cell_types) == n == res.n_instances
        assert res.class_probs.shape == (n, 2) and res.scores.shape == (n,)
        assert res.image_cell_type in model.class_names
        assert res.flows.shape == (2, *image.shape) and res.cellprob.shape == image.shape


def test_batching_does_not_change_results():
    model = tiny_model()
    images = [make_synthetic("round", shape=(64, 64), seed=s)[0] for s in range(3)]
    together = predict_maps(images, model, batch_size=3, tile=32)
    alone = [predict_maps([im], model, batch_size=1, tile=32)[0] for im in images]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _interior(shape, starts, tile, margin):
    """Pixels at least ``margin`` from the image border and from every tile border they lie in."""
    ok = np.zeros(shape, bool)
    ok[margin:shape[0] - margin, margin:shape[1] - margin] = True
    near_edge = np.zeros(shape, bool)
    for y, x in starts:
        inner = np.zeros(shape, bool)
        inner[y:y + tile, x:x + tile] = True
        core = np.zeros(shape, bool)
        core[y + margin:y + tile - margin, x + margin:x + tile - margin] = True
        near_edge |= inner & ~core
    return ok & ~near_edge


def test_tiled_and_untiled_agree_away_from_tile_borders():
    from flowseg.tiling import tile_grid

    model = tiny_model(style=False)  # the style vector is a global (per tile) statistic
    image = make_synthetic("irregular", shape=(150, 180), seed=1)[0]
    whole = predict_maps([image], model, tile=None, precision="fp32")[0]  # exact arithmetic:
    tiled = predict_maps([image], model, tile=64, precision="fp32")[0]    # bf16 rounds differently
    grid = tile_grid(image.shape, tile=64, overlap=0.1, align=4)
    interior = _interior(image.shape, grid.starts, 64, margin=20)
    assert interior.sum() > 1000
    np.testing.assert_allclose(tiled[:, interior].numpy(), whole[:, interior].numpy(), atol=1e-4)
    assert not np.allclose(tiled.numpy(), whole.numpy(), atol=1e-4)  # the borders do differ


def test_bf16_maps_are_close_to_fp32_maps():
    model = tiny_model()
    image = make_synthetic("round", shape=(64, 80), seed=2)[0]
    fp32 = predict_maps([image], model, tile=None, precision="fp32")[0]
    bf16 = predict_maps([image], model, tile=None, precision="bf16")[0]
    assert fp32.dtype == bf16.dtype == torch.float32
    scale = fp32.abs().max().item()
    assert (bf16 - fp32).abs().max().item() <= 0.05 * scale
    assert not torch.equal(bf16, fp32)  # bf16 did run
    (result,) = segment([image], model, precision="bf16")
    assert result.labels.shape == image.shape
    with pytest.raises(ValueError, match="precision: expected one of"):
        segment([image], model, precision="half")


def test_tta_output_is_flip_equivariant():
    model = tiny_model()
    half = np.random.default_rng(0).random((48, 32)).astype(np.float32)
    image = np.concatenate([half, half[:, ::-1]], axis=1)  # mirror-symmetric left/right
    maps = predict_maps([image], model, tile=None, tta=True)[0].numpy()
    np.testing.assert_allclose(maps[1], -maps[1][:, ::-1], atol=1e-5)  # dx antisymmetric
    np.testing.assert_allclose(maps[0], maps[0][:, ::-1], atol=1e-5)   # dy symmetric
    np.testing.assert_allclose(maps[2:], maps[2:, :, ::-1], atol=1e-5)


def test_oracle_maps_give_back_the_labels_and_types():
    _, labels = make_synthetic("round", shape=(96, 96), seed=3)
    config = ModelConfig(n_classes=3, widths=(8, 16))
    model = Model(OracleNet(labels, k=2, n_classes=3), config, ("a", "b", "c"),
                  SegmentConfig(min_size=0))
    (res,) = segment([np.zeros((96, 96), np.float32)], model, tile=None)
    assert image_score(labels, res.labels).score >= 0.99
    assert set(res.cell_types) == {"c"} and res.image_cell_type == "c"
    assert np.all(res.scores > 0.9)
    np.testing.assert_allclose(res.image_class_probs.sum(), 1.0, rtol=1e-5)


def test_per_class_thresholds_follow_the_image_class():
    from flowseg.config import ClassThresholds

    _, labels = make_synthetic("round", shape=(96, 96), seed=3)
    config = ModelConfig(n_classes=2, widths=(8, 16))
    huge = ClassThresholds(min_size=10_000)
    model = Model(OracleNet(labels, k=1, n_classes=2), config, ("a", "b"),
                  SegmentConfig(min_size=0, per_class={"b": huge}))
    (res,) = segment([np.zeros((96, 96), np.float32)], model, tile=None)
    assert res.n_instances == 0 and res.image_cell_type == "b"
    (res,) = segment([np.zeros((96, 96), np.float32)], model, tile=None,
                     config=SegmentConfig(min_size=0, per_class={"a": huge}))
    assert res.n_instances == labels.max()


def test_bad_inputs_are_clear_errors():
    model = tiny_model()
    with pytest.raises(TypeError, match="wrap one image in a list"):
        segment(np.zeros((32, 32)), model)
    with pytest.raises(ValueError, match=r"images\[0\]: the model takes 1 channel"):
        segment([np.zeros((3, 32, 32))], model)
    with pytest.raises(ValueError, match=r"images\[1\]: expected shape"):
        segment([np.zeros((32, 32)), np.zeros(5)], model)
    with pytest.raises(TypeError, match="config"):
        segment([np.zeros((32, 32))], model, config={"min_size": 3})
    with pytest.raises(ValueError, match="batch_size"):
        segment([np.zeros((32, 32))], model, batch_size=0)
    assert segment([], model) == []


# ----------------------------------------------------------------------------- class decisions
def _two_type_maps(rim_logit: float = 8.0):
    """Maps of 6 squares of type "a" (10x10, left) and 6 of type "b" (6x6, right); the cell
    probability logit is 8 inside and ``rim_logit`` on each square's one-pixel rim."""
    labels = np.zeros((64, 96), np.int32)
    classes = np.full((2, 64, 96), -4.0, np.float32)
    n = 0
    for row in range(3):
        for col in range(2):
            n += 1
            labels[3 + 20 * row:13 + 20 * row, 3 + 20 * col:13 + 20 * col] = n
            n += 1
            labels[3 + 20 * row:9 + 20 * row, 50 + 20 * col:56 + 20 * col] = n
    kind = np.where(labels % 2 == 1, 0, 1)  # odd ids: type a
    classes[0][(labels > 0) & (kind == 0)] = 4.0
    classes[1][(labels > 0) & (kind == 1)] = 4.0
    interior = _interiors(labels)
    cellprob = np.where(labels == 0, -8.0, np.where(interior, 8.0, rim_logit)).astype(np.float32)
    maps = np.concatenate([labels_to_flows(labels), cellprob[None], classes])
    return torch.from_numpy(maps.astype(np.float32)), labels, kind


def _interiors(labels):
    """Pixels of an instance whose 4 neighbours are all in the same instance."""
    inside = labels > 0
    for axis in (0, 1):
        for shift in (1, -1):
            inside &= np.roll(labels, shift, axis=axis) == labels
    return inside


@pytest.mark.parametrize("source", ["image", "instance"])
def test_class_source_selects_whose_values_filter_an_instance(source):
    from flowseg.config import ClassThresholds

    maps, labels, kind = _two_type_maps()
    config = SegmentConfig(min_size=0, class_source=source,
                           per_class={"b": ClassThresholds(min_size=50)})
    (res,) = segment_maps([maps], ("a", "b"), config=config)
    assert res.image_cell_type == "a"   # type a covers more pixels
    if source == "image":               # every instance filtered with type a's values
        assert res.n_instances == 12 and sorted(set(res.cell_types)) == ["a", "b"]
    else:                               # the 36-px type-b instances fall under b's min size
        assert res.n_instances == 6 and set(res.cell_types) == {"a"}
        assert image_score(np.where(kind == 0, labels, 0), res.labels).score == 1.0


def test_instance_source_trims_pixels_below_the_class_cellprob_threshold():
    from flowseg.config import ClassThresholds

    maps, labels, kind = _two_type_maps(rim_logit=2.0)
    config = SegmentConfig(min_size=0, class_source="instance", fill_holes=False,
                           per_class={"b": ClassThresholds(cellprob_threshold=4.0)})
    (res,) = segment_maps([maps], ("a", "b"), config=config)
    assert res.n_instances == 12
    fg = res.labels > 0
    rim = (labels > 0) & ~_interiors(labels)
    np.testing.assert_array_equal(fg[rim & (kind == 1)], False)   # b's rims trimmed
    np.testing.assert_array_equal(fg[rim & (kind == 0)], True)    # a's kept
    (res,) = segment_maps([maps], ("a", "b"), config=dataclasses.replace(config, class_source="image"))
    assert fg.sum() < (res.labels > 0).sum() == (labels > 0).sum()


def test_class_source_is_validated_and_stored():
    with pytest.raises(ValueError, match="class_source: expected one of"):
        SegmentConfig(class_source="pixel")
    config = SegmentConfig(class_source="instance")
    assert SegmentConfig.from_dict(config.to_dict()) == config
    assert config.for_class("x").class_source == "instance"
    d = config.to_dict()
    del d["class_source"]   # checkpoints written before the option load with the default
    assert SegmentConfig.from_dict(d).class_source == SegmentConfig().class_source


def test_segment_maps_checks_its_maps():
    with pytest.raises(ValueError, match=r"maps\[0\]: expected shape \(3 \+ 2, H, W\)"):
        segment_maps([torch.zeros(4, 8, 8)], ("a", "b"), config=SegmentConfig())


def test_scale_runs_the_network_at_the_scaled_size_and_returns_full_size_labels():
    from flowseg.rescale import rescale_pair

    _, labels = make_synthetic("round", shape=(128, 128), seed=3)
    _, half = rescale_pair(np.zeros(labels.shape, np.float32), labels, 0.5)
    config = ModelConfig(n_classes=2, widths=(8, 16))
    # The oracle only accepts 64 x 64 input: the network must see the image at scale 0.5.
    model = Model(OracleNet(half, k=0, n_classes=2), config, ("a", "b"), SegmentConfig(min_size=0))
    (res,) = segment([np.zeros((128, 128), np.float32)], model, tile=None, scale=0.5)
    assert res.labels.shape == (128, 128)
    # Halving these ~12 px cells loses detail: the best possible is the halved labels enlarged.
    _, best = rescale_pair(np.zeros(half.shape, np.float32), half, 2.0)
    assert image_score(labels, res.labels).score >= 0.75 * image_score(labels, best).score
    assert image_score(labels, res.labels).tp[0] >= 0.8 * labels.max()
    with pytest.raises(ValueError, match="scale"):
        segment([np.zeros((128, 128), np.float32)], model, tile=None, scale=0.0)


def test_min_size_counts_the_pixels_the_network_sees():
    """A 6x6 cell (36 px) predicted at scale 2 is 144 px to the network: min_size 100 keeps it;
    at scale 1 (or in maps taken as scale 1) it is dropped."""
    labels = np.zeros((32, 32), np.int32)
    labels[4:10, 4:10] = 1
    labels[16:30, 16:30] = 2                                    # 196 px
    maps = [torch.from_numpy(np.concatenate([labels_to_flows(labels),
                                             np.where(labels > 0, 8.0, -8.0)[None],
                                             np.zeros((2, 32, 32))]).astype(np.float32))]
    config = SegmentConfig(min_size=100)
    assert segment_maps(maps, ("a", "b"), config=config)[0].n_instances == 1
    assert segment_maps(maps, ("a", "b"), config=config, scales=[2.0])[0].n_instances == 2
    assert segment_maps(maps, ("a", "b"), config=config, scales=0.5)[0].n_instances == 0
    with pytest.raises(ValueError, match="scale"):
        segment_maps(maps, ("a", "b"), config=config, scales=[1.0, 2.0])


def test_segment_applies_min_size_at_the_chosen_scale():
    from flowseg.rescale import rescale_pair

    _, labels = make_synthetic("round", shape=(128, 128), seed=3)
    _, half = rescale_pair(np.zeros(labels.shape, np.float32), labels, 0.5)
    area = np.bincount(half.ravel())[1:]
    cut = int(np.median(area[area > 0]))          # about half the cells are smaller at scale 1
    model = Model(OracleNet(labels, k=0, n_classes=2), ModelConfig(n_classes=2, widths=(8, 16)),
                  ("a", "b"), SegmentConfig(min_size=4 * cut))
    # the user's image is the half-size one; scale 2 shows the network the full-size cells
    (res,) = segment([np.zeros(half.shape, np.float32)], model, tile=None, scale=2.0)
    kept = np.bincount(res.labels.ravel())[1:]
    assert res.labels.shape == half.shape
    assert kept.size >= 0.8 * (area >= cut).sum() and kept.min() >= 0.8 * cut
    assert kept.size > (area >= 4 * cut).sum()     # min_size in image pixels would drop them


@pytest.mark.parametrize("tile, expected", [(None, None), (0, None), (np.int64(0), None),
                                            (16, 16), (np.int64(256), 256)])
def test_check_tile_zero_and_none_mean_untiled(tile, expected):
    from flowseg.api import check_tile

    assert check_tile(tile, size_multiple=8) == expected


@pytest.mark.parametrize("tile, exc, message", [
    (20, ValueError, r"tile: expected 0 \(whole images, untiled\) or a tile side in pixels that "
                     r"is a positive multiple of 8 \(this model halves the image size 3 times\), "
                     r"e.g. 16 or 24; got 20"),
    (4, ValueError, r"multiple of 8 .*e.g. 8 or 16; got 4"),
    (-256, ValueError, r"e.g. 256; got -256"),
    (256.0, TypeError, r"tile: expected an int \(0 or None: whole images, untiled\), got float"),
    (True, TypeError, r"got bool True"),
])
def test_check_tile_says_which_sizes_are_allowed(tile, exc, message):
    from flowseg.api import check_tile

    with pytest.raises(exc, match=message):
        check_tile(tile, size_multiple=8)


def test_tile_zero_is_untiled_in_segment_and_predict_maps():
    model = tiny_model()
    image = np.random.default_rng(0).random((40, 56)).astype(np.float32)
    np.testing.assert_array_equal(predict_maps([image], model, tile=0)[0].numpy(),
                                  predict_maps([image], model, tile=None)[0].numpy())
    with pytest.raises(ValueError, match="multiple of 4"):  # widths (8, 16, 32): 2 poolings
        segment([image], model, tile=18)


@pytest.mark.parametrize("batch_size, exc", [(2.5, TypeError), (True, TypeError), ("8", TypeError),
                                             (0, ValueError)])
def test_batch_size_must_be_an_int(batch_size, exc):
    model = tiny_model()
    image = np.zeros((32, 32), np.float32)
    with pytest.raises(exc, match="batch_size: expected an int"):
        segment([image], model, batch_size=batch_size)
    with pytest.raises(exc, match="batch_size: expected an int"):
        predict_maps([image], model, batch_size=batch_size)


@pytest.mark.parametrize("model, message", [
    ("x.pt", r"model: expected a loaded flowseg Model, got the path 'x.pt'; load it once first: "
             r"model = flowseg.load_model\('x.pt'\)"),
    (None, r"model: expected a loaded flowseg Model \(flowseg.load_model\(path\), or "
           r"flowseg.load_model\(\) for the shipped default\), got NoneType None"),
])
def test_model_must_be_a_loaded_model(model, message):
    with pytest.raises(TypeError, match=message):
        segment([np.zeros((32, 32))], model)
    with pytest.raises(TypeError, match=message):
        predict_maps([np.zeros((32, 32))], model)


@pytest.mark.parametrize("images", [None, "a.tif", 3])
def test_images_must_be_a_list_of_arrays(images):
    with pytest.raises(TypeError, match=r"images: expected a list of arrays \(H, W\) or "
                                        r"\(C, H, W\) \(read files with "
                                        r"flowseg.io.images.read_image\), got"):
        segment(images, tiny_model())


def test_wrong_channels_say_how_many_the_model_takes():
    with pytest.raises(ValueError, match=r"images\[1\]: the model takes 1 channel\(s\), got an "
                                         r"image of shape \(5, 32, 32\) \(5 channels"):
        predict_maps([np.zeros((32, 32)), np.zeros((5, 32, 32))], tiny_model())


def _oracle(labels, per_class):
    config = ModelConfig(n_classes=2, widths=(8, 16))
    return Model(OracleNet(labels, k=1, n_classes=2), config, ("a", "b"),
                 SegmentConfig(min_size=0, per_class=per_class))


def test_overriding_one_value_keeps_the_tuned_rest(caplog):
    from flowseg.config import ClassThresholds

    _, labels = make_synthetic("round", shape=(96, 96), seed=3)
    image = [np.zeros((96, 96), np.float32)]
    tuned = {"b": ClassThresholds(min_size=10_000, flow_threshold=0.0)}
    model = _oracle(labels, tuned)
    assert segment(image, model, tile=None)[0].n_instances == 0
    config = model.segment_config.override(min_size=0)           # for every type
    assert config.for_class("b").flow_threshold == 0.0            # the tuned rest is kept
    assert segment(image, model, tile=None, config=config)[0].n_instances == labels.max()
    config = model.segment_config.override(min_size={"a": 5})    # another type: b still tuned
    assert segment(image, model, tile=None, config=config)[0].n_instances == 0
    caplog.clear()
    segment(image, model, tile=None, config=dataclasses.replace(model.segment_config, min_size=7))
    assert "config.min_size = 7 is not used for b (their own min_size" in caplog.text
    assert "override(min_size=...)" in caplog.text
    caplog.clear()
    segment(image, model, tile=None, config=SegmentConfig(min_size=30))
    assert "the model's tuned ones (b) are not used" in caplog.text


def test_exclude_on_edges_drops_cells_touching_the_border():
    _, labels = make_synthetic("round", shape=(96, 96), seed=3)
    model = _oracle(labels, {})
    config = model.segment_config.override(exclude_on_edges=True)
    (res,) = segment([np.zeros((96, 96), np.float32)], model, tile=None, config=config)
    border = {*labels[0], *labels[-1], *labels[:, 0], *labels[:, -1]} - {0}
    assert border and res.n_instances == labels.max() - len(border)
    assert not ({*res.labels[0], *res.labels[-1], *res.labels[:, 0], *res.labels[:, -1]} - {0})


def test_normalize_none_feeds_the_pixels_as_they_are():
    model = tiny_model()
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    raw = predict_maps([image], model, tile=None, normalize=None, precision="fp32")[0]
    same = predict_maps([image * 1000], model, tile=None, precision="fp32")[0]
    other = predict_maps([image * 1000], model, tile=None, normalize=None, precision="fp32")[0]
    assert not torch.allclose(raw, other)
    assert torch.allclose(same, predict_maps([image], model, tile=None, precision="fp32")[0])
    with pytest.raises(ValueError, match=r"normalize: expected percentiles 0 <= low < high"):
        segment([image], model, normalize=(99, 1))


def test_the_first_style_pass_computes_what_later_ones_do():
    """predict_maps puts the weights in the inputs' memory layout; the style pass must too, or
    its first call (before any predict_maps) runs other kernels (bf16: other last bits)."""
    from flowseg.api import image_styles

    from flowseg.api import load_model

    model = load_model(device="cpu")   # the shipped network: a tiny one runs the same kernels
    images = [np.random.default_rng(i).random((128, 96)).astype(np.float32) for i in range(2)]
    first = image_styles(images, model, factors=[0.5] * 2, levels=4, spread=True, tile=64)
    predict_maps(images, model, tile=64)
    np.testing.assert_array_equal(
        image_styles(images, model, factors=[0.5] * 2, levels=4, spread=True, tile=64), first)


def test_segment_takes_one_scale_per_image():
    model = tiny_model()
    images = [np.random.default_rng(i).random((48, 40)).astype(np.float32) for i in range(2)]
    results = segment(images, model, tile=None, scale=[1.0, 0.5])
    assert [r.scale for r in results] == [1.0, 0.5]
    assert all(r.labels.shape == (48, 40) for r in results)
    with pytest.raises(ValueError, match=r"scale: expected one factor or one per image \(2\), got 3"):
        segment(images, model, tile=None, scale=[1.0, 0.5, 2.0])
