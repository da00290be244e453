import numpy as np
import pytest

from flowseg.data.normalize import normalize_image, normalize_images


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64])
def test_percentiles_map_to_zero_and_one(dtype):
    image = np.arange(100 * 50).reshape(50, 100) % 200
    out = normalize_image(image.astype(dtype))
    assert out.shape == (1, 50, 100) and out.dtype == np.float32
    np.testing.assert_allclose(np.percentile(out, [1, 99]), [0, 1], atol=1e-5)


def test_channels_are_normalised_separately():
    rng = np.random.default_rng(0)
    image = np.stack([rng.normal(0, 1, (30, 40)), rng.normal(1000, 50, (30, 40))])
    out = normalize_image(image)
    assert out.shape == (2, 30, 40)
    for channel in out:
        np.testing.assert_allclose(np.percentile(channel, [1, 99]), [0, 1], atol=1e-5)


@pytest.mark.parametrize("value", [0, 7, -3.5])
def test_constant_image_gives_zeros(value):
    out = normalize_image(np.full((8, 9), value))
    assert np.array_equal(out, np.zeros((1, 8, 9), np.float32))


def test_sparse_bright_pixels_fall_back_to_min_max():
    image = np.zeros((50, 50), np.uint16)
    image[0, :3] = 1000          # fewer than 1% of pixels: both percentiles are 0
    out = normalize_image(image)
    assert out.min() == 0 and out.max() == 1 and np.isfinite(out).all()


def test_bool_image():
    image = np.zeros((10, 10), bool)
    image[:5] = True
    assert set(np.unique(normalize_image(image))) == {0.0, 1.0}


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "inf")])
def test_non_finite_values_are_refused(bad, word):
    image = np.ones((5, 5), np.float32)
    image[2, 2] = bad
    with pytest.raises(ValueError, match=f"image: expected finite values.*1 {word}"):
        normalize_image(image)


@pytest.mark.parametrize("image, error", [
    (np.zeros(5), ValueError), (np.zeros((1, 2, 3, 4)), ValueError), (np.zeros((0, 4)), ValueError),
    ([[1, 2], [3, 4]], TypeError), (np.array([["a", "b"]]), TypeError),
    (np.zeros((3, 3), complex), TypeError)])
def test_bad_inputs(image, error):
    with pytest.raises(error, match="image"):
        normalize_image(image)


def test_percentiles_or_none():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    assert normalize_image(image, percentiles=None)[0, 9, 9] == 99.0
    wide = normalize_image(image, percentiles=(0, 100))
    assert wide.min() == 0 and wide.max() == 1
    with pytest.raises(TypeError, match="normalize: expected None"):
        normalize_image(image, percentiles=5)


def test_normalize_images_names_the_bad_image():
    good = np.arange(64, dtype=np.float32).reshape(8, 8)
    bad = good.copy()
    bad[2, 3] = np.nan
    assert len(normalize_images([good, good], percentiles=None)) == 2
    with pytest.raises(ValueError, match=r"^images\[1\]: expected finite values, found 1 NaN"):
        normalize_images([good, bad])
    with pytest.raises(TypeError, match=r"^images\[0\]: expected an integer or float dtype"):
        normalize_images([good.astype(np.complex64)])
