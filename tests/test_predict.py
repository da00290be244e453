import numpy as np
import pytest
import torch

from flowseg.predict import PredictConfig, check_tile, predict_maps
from flowseg.synthetic import make_synthetic
from tests.model_fixtures import tiny_model


def test_batching_does_not_change_results():
    model = tiny_model()
    images = [make_synthetic("round", shape=(64, 64), seed=s)[0] for s in range(3)]
    together = predict_maps(images, model, predict=PredictConfig(batch_size=3, tile=32))
    alone = [predict_maps([im], model, predict=PredictConfig(batch_size=1, tile=32))[0]
             for im in images]
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
    # fp32: exact arithmetic (bf16 rounds differently in tiles and whole images)
    whole = predict_maps([image], model, predict=PredictConfig(tile=None, precision="fp32"))[0]
    tiled = predict_maps([image], model, predict=PredictConfig(tile=64, precision="fp32"))[0]
    grid = tile_grid(image.shape, tile=64, overlap=0.1, align=4)
    interior = _interior(image.shape, grid.starts, 64, margin=20)
    assert interior.sum() > 1000
    np.testing.assert_allclose(tiled[:, interior].numpy(), whole[:, interior].numpy(), atol=1e-4)
    assert not np.allclose(tiled.numpy(), whole.numpy(), atol=1e-4)  # the borders do differ


def test_tta_output_is_flip_equivariant():
    model = tiny_model()
    half = np.random.default_rng(0).random((48, 32)).astype(np.float32)
    image = np.concatenate([half, half[:, ::-1]], axis=1)  # mirror-symmetric left/right
    maps = predict_maps([image], model, predict=PredictConfig(tile=None, tta=True))[0].numpy()
    np.testing.assert_allclose(maps[1], -maps[1][:, ::-1], atol=1e-5)  # dx antisymmetric
    np.testing.assert_allclose(maps[0], maps[0][:, ::-1], atol=1e-5)   # dy symmetric
    np.testing.assert_allclose(maps[2:], maps[2:, :, ::-1], atol=1e-5)


def test_tta_none_follows_the_model_and_a_given_value_overrides_it():
    model = tiny_model()
    image = np.random.default_rng(1).random((32, 48)).astype(np.float32)

    def maps(tta, model_tta):
        model.tta = model_tta
        return predict_maps([image], model, predict=PredictConfig(tile=None, tta=tta))[0].numpy()

    flips, plain = maps(True, False), maps(False, False)
    assert not np.allclose(flips, plain, atol=1e-4)
    np.testing.assert_array_equal(maps(None, True), flips)
    np.testing.assert_array_equal(maps(None, False), plain)
    np.testing.assert_array_equal(maps(False, True), plain)


@pytest.mark.parametrize("tile, expected", [(None, None), (0, None), (np.int64(0), None),
                                            (16, 16), (np.int64(256), 256)])
def test_check_tile_zero_and_none_mean_untiled(tile, expected):

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

    with pytest.raises(exc, match=message):
        check_tile(tile, size_multiple=8)


def test_wrong_channels_say_how_many_the_model_takes():
    with pytest.raises(ValueError, match=r"images\[1\]: the model takes 1 channel\(s\), got an "
                                         r"image of shape \(5, 32, 32\) \(5 channels"):
        predict_maps([np.zeros((32, 32)), np.zeros((5, 32, 32))], tiny_model())


def test_predict_config_keeps_checked_values():
    assert PredictConfig(tile=0).tile is None          # 0: whole images, stored as None
    assert PredictConfig(normalize=[2, 98]).normalize == (2.0, 98.0)
    assert PredictConfig() == PredictConfig(batch_size=8, tile=256, tta=None, precision="auto",
                                            normalize=(1.0, 99.0))


@pytest.mark.parametrize("changes,exc,message", [
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": 2.0}, TypeError, "batch_size"),
    ({"tile": -8}, ValueError, "tile"),
    ({"tile": 64.0}, TypeError, "tile"),
    ({"tta": "yes"}, TypeError, "tta: expected a bool"),
    ({"precision": "half"}, ValueError, "precision: expected one of"),
    ({"normalize": (99, 1)}, ValueError, "normalize"),
])
def test_predict_config_names_the_bad_value(changes, exc, message):
    with pytest.raises(exc, match=message):
        PredictConfig(**changes)


def test_the_old_keywords_still_work_with_a_future_warning():
    from flowseg.api import segment

    model = tiny_model()
    image = make_synthetic("round", shape=(64, 64), seed=0)[0]
    predict = PredictConfig(tile=None, precision="fp32")
    with pytest.warns(FutureWarning, match=r"predict=flowseg.PredictConfig\(tile=None"):
        old = predict_maps([image], model, tile=None, precision="fp32")[0]
    assert torch.equal(old, predict_maps([image], model, predict=predict)[0])
    with pytest.warns(FutureWarning, match="segment"):
        (old,) = segment([image], model, tile=None, precision="fp32")
    np.testing.assert_array_equal(old.labels, segment([image], model, predict=predict)[0].labels)


def test_predict_and_old_keywords_together_or_unknown_keywords_are_refused():
    from flowseg.api import segment

    model, image = tiny_model(), np.zeros((32, 32), np.float32)
    with pytest.raises(TypeError, match="not also as keywords"):
        segment([image], model, predict=PredictConfig(), tile=None)
    with pytest.raises(TypeError, match="unexpected keyword argument.*tiles"):
        segment([image], model, tiles=64)
    with pytest.raises(TypeError, match="predict: expected a PredictConfig"):
        predict_maps([image], model, predict={"tile": None})
