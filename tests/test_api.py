import dataclasses

import numpy as np
import pytest
import torch

from flowseg.api import PredictConfig, predict_maps, segment
from flowseg.config import ModelConfig, SegmentConfig
from flowseg.metrics import image_score
from flowseg.model.checkpoint import Model
from flowseg.synthetic import make_synthetic
from tests.model_fixtures import OracleNet, tiny_model

WHOLE = PredictConfig(tile=None)   # whole images, untiled
WHOLE_FP32 = PredictConfig(tile=None, precision="fp32")


def test_mixed_sizes_give_consistent_results():
    model = tiny_model()
    images = [np.random.default_rng(i).random(shape).astype(np.float32)
              for i, shape in enumerate([(40, 50), (70, 33), (40, 50)])]
    results = segment(images, model, predict=PredictConfig(batch_size=2, tile=32), return_maps=True)
    assert len(results) == 3
    for image, res in zip(images, results):
        n = int(res.labels.max())
        assert res.labels.shape == image.shape and res.labels.dtype == np.int32
        assert len(res.cell_types) == n == res.n_instances
        assert res.class_probs.shape == (n, 2) and res.scores.shape == (n,)
        assert res.image_cell_type in model.class_names
        assert res.flows.shape == (2, *image.shape) and res.cellprob.shape == image.shape


def test_bf16_maps_are_close_to_fp32_maps():
    model = tiny_model()
    image = make_synthetic("round", shape=(64, 80), seed=2)[0]
    fp32 = predict_maps([image], model, predict=WHOLE_FP32)[0]
    bf16 = predict_maps([image], model, predict=PredictConfig(tile=None, precision="bf16"))[0]
    assert fp32.dtype == bf16.dtype == torch.float32
    scale = fp32.abs().max().item()
    assert (bf16 - fp32).abs().max().item() <= 0.05 * scale
    assert not torch.equal(bf16, fp32)  # bf16 did run
    (result,) = segment([image], model, predict=PredictConfig(precision="bf16"))
    assert result.labels.shape == image.shape
    with pytest.raises(ValueError, match="precision: expected one of"):
        segment([image], model, predict=PredictConfig(precision="half"))


def test_oracle_maps_give_back_the_labels_and_types():
    _, labels = make_synthetic("round", shape=(96, 96), seed=3)
    config = ModelConfig(n_classes=3, widths=(8, 16))
    model = Model(OracleNet(labels, k=2, n_classes=3), config, ("a", "b", "c"),
                  SegmentConfig(min_size=0))
    (res,) = segment([np.zeros((96, 96), np.float32)], model, predict=WHOLE)
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
    (res,) = segment([np.zeros((96, 96), np.float32)], model, predict=WHOLE)
    assert res.n_instances == 0 and res.image_cell_type == "b"
    (res,) = segment([np.zeros((96, 96), np.float32)], model, predict=WHOLE,
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
        segment([np.zeros((32, 32))], model, predict=PredictConfig(batch_size=0))
    assert segment([], model) == []


def test_scale_runs_the_network_at_the_scaled_size_and_returns_full_size_labels():
    from flowseg.rescale import rescale_pair

    _, labels = make_synthetic("round", shape=(128, 128), seed=3)
    _, half = rescale_pair(np.zeros(labels.shape, np.float32), labels, 0.5)
    config = ModelConfig(n_classes=2, widths=(8, 16))
    # The oracle only accepts 64 x 64 input: the network must see the image at scale 0.5.
    model = Model(OracleNet(half, k=0, n_classes=2), config, ("a", "b"), SegmentConfig(min_size=0))
    (res,) = segment([np.zeros((128, 128), np.float32)], model, predict=WHOLE, scale=0.5)
    assert res.labels.shape == (128, 128)
    # Halving these ~12 px cells loses detail: the best possible is the halved labels enlarged.
    _, best = rescale_pair(np.zeros(half.shape, np.float32), half, 2.0)
    assert image_score(labels, res.labels).score >= 0.75 * image_score(labels, best).score
    assert image_score(labels, res.labels).tp[0] >= 0.8 * labels.max()
    with pytest.raises(ValueError, match="scale"):
        segment([np.zeros((128, 128), np.float32)], model, predict=WHOLE, scale=0.0)


def test_segment_applies_min_size_at_the_chosen_scale():
    from flowseg.rescale import rescale_pair

    _, labels = make_synthetic("round", shape=(128, 128), seed=3)
    _, half = rescale_pair(np.zeros(labels.shape, np.float32), labels, 0.5)
    area = np.bincount(half.ravel())[1:]
    cut = int(np.median(area[area > 0]))          # about half the cells are smaller at scale 1
    model = Model(OracleNet(labels, k=0, n_classes=2), ModelConfig(n_classes=2, widths=(8, 16)),
                  ("a", "b"), SegmentConfig(min_size=4 * cut))
    # the user's image is the half-size one; scale 2 shows the network the full-size cells
    (res,) = segment([np.zeros(half.shape, np.float32)], model, predict=WHOLE, scale=2.0)
    kept = np.bincount(res.labels.ravel())[1:]
    assert res.labels.shape == half.shape
    assert kept.size >= 0.8 * (area >= cut).sum() and kept.min() >= 0.8 * cut
    assert kept.size > (area >= 4 * cut).sum()     # min_size in image pixels would drop them


def test_tile_zero_is_untiled_in_segment_and_predict_maps():
    model = tiny_model()
    image = np.random.default_rng(0).random((40, 56)).astype(np.float32)
    np.testing.assert_array_equal(predict_maps([image], model,
                                               predict=PredictConfig(tile=0))[0].numpy(),
                                  predict_maps([image], model, predict=WHOLE)[0].numpy())
    with pytest.raises(ValueError, match="multiple of 4"):  # widths (8, 16, 32): 2 poolings
        segment([image], model, predict=PredictConfig(tile=18))


@pytest.mark.parametrize("batch_size, exc", [(2.5, TypeError), (True, TypeError), ("8", TypeError),
                                             (0, ValueError)])
def test_batch_size_must_be_an_int(batch_size, exc):
    model = tiny_model()
    image = np.zeros((32, 32), np.float32)
    with pytest.raises(exc, match="batch_size: expected an int"):
        segment([image], model, predict=PredictConfig(batch_size=batch_size))
    with pytest.raises(exc, match="batch_size: expected an int"):
        predict_maps([image], model, predict=PredictConfig(batch_size=batch_size))


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
    assert segment(image, model, predict=WHOLE)[0].n_instances == 0
    config = model.segment_config.override(min_size=0)           # for every type
    assert config.for_class("b").flow_threshold == 0.0            # the tuned rest is kept
    assert segment(image, model, predict=WHOLE, config=config)[0].n_instances == labels.max()
    config = model.segment_config.override(min_size={"a": 5})    # another type: b still tuned
    assert segment(image, model, predict=WHOLE, config=config)[0].n_instances == 0
    caplog.clear()
    segment(image, model, predict=WHOLE,
            config=dataclasses.replace(model.segment_config, min_size=7))
    assert "config.min_size = 7 is not used for b (their own min_size" in caplog.text
    assert "override(min_size=...)" in caplog.text
    caplog.clear()
    segment(image, model, predict=WHOLE, config=SegmentConfig(min_size=30))
    assert "the model's tuned ones (b) are not used" in caplog.text


def test_exclude_on_edges_drops_cells_touching_the_border():
    _, labels = make_synthetic("round", shape=(96, 96), seed=3)
    model = _oracle(labels, {})
    config = model.segment_config.override(exclude_on_edges=True)
    (res,) = segment([np.zeros((96, 96), np.float32)], model, predict=WHOLE, config=config)
    border = {*labels[0], *labels[-1], *labels[:, 0], *labels[:, -1]} - {0}
    assert border and res.n_instances == labels.max() - len(border)
    assert not ({*res.labels[0], *res.labels[-1], *res.labels[:, 0], *res.labels[:, -1]} - {0})


def test_normalize_none_feeds_the_pixels_as_they_are():
    model = tiny_model()
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    raw_fp32 = PredictConfig(tile=None, normalize=None, precision="fp32")
    raw = predict_maps([image], model, predict=raw_fp32)[0]
    same = predict_maps([image * 1000], model, predict=WHOLE_FP32)[0]
    other = predict_maps([image * 1000], model, predict=raw_fp32)[0]
    assert not torch.allclose(raw, other)
    assert torch.allclose(same, predict_maps([image], model, predict=WHOLE_FP32)[0])
    with pytest.raises(ValueError, match=r"normalize: expected percentiles 0 <= low < high"):
        segment([image], model, predict=PredictConfig(normalize=(99, 1)))


def test_segment_takes_one_scale_per_image():
    model = tiny_model()
    images = [np.random.default_rng(i).random((48, 40)).astype(np.float32) for i in range(2)]
    results = segment(images, model, predict=WHOLE, scale=[1.0, 0.5])
    assert [r.scale for r in results] == [1.0, 0.5]
    assert all(r.labels.shape == (48, 40) for r in results)
    with pytest.raises(ValueError, match=r"scale: expected one factor or one per image \(2\), got 3"):
        segment(images, model, predict=WHOLE, scale=[1.0, 0.5, 2.0])


@pytest.mark.parametrize("normalize", [(1, 99), None])
def test_segment_names_the_image_with_nans(normalize):
    images = [np.zeros((32, 32), np.float32), np.full((32, 32), np.nan, np.float32)]
    with pytest.raises(ValueError, match=r"images\[1\]: expected finite values, found 1024 NaN"):
        segment(images, tiny_model(), predict=PredictConfig(normalize=normalize))
