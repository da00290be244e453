import numpy as np
import pytest
from scipy import ndimage

from flowseg.config import AugmentConfig
from flowseg.data.augment import (adjust_intensity, apply_affine, augment_pair, augment_sample,
                                  lower_resolution, random_affine, warp_mask, widen)

EXACT = AugmentConfig(rotation=0.0, scale=(1.0, 1.0))


def _labels(shape=(70, 90), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 40, shape).astype(np.int32)


@pytest.mark.parametrize("seed", range(8))
def test_flips_and_rot90_crop_exactly(seed):
    """An image whose pixels equal its labels stays equal to them; the crop is a real window."""
    labels = _labels(seed=seed)
    rng = np.random.default_rng(seed)
    transform = random_affine(labels.shape, 32, rng, EXACT)
    image, crop = apply_affine(labels[None].astype(np.float32), labels, transform)
    assert np.array_equal(image[0], crop)
    windows = [np.rot90(np.flip(crop, axes), k) for k in range(4) for axes in [(), 0, 1, (0, 1)]]
    found = any(np.array_equal(w, labels[r:r + 32, c:c + 32])
                for w in windows for r in range(70 - 31) for c in range(90 - 31))
    assert found


@pytest.mark.parametrize("seed", range(5))
def test_rotation_and_scale_keep_image_and_labels_aligned(seed):
    labels = ndimage.zoom(_labels((12, 15), seed), 8, order=0)   # blocks of 8x8 pixels
    config = AugmentConfig(rotation=180.0, scale=(0.7, 1.4))
    transform = random_affine(labels.shape, 64, np.random.default_rng(seed), config)
    image, crop = apply_affine(labels[None].astype(np.float32), labels, transform)
    # Away from label edges bilinear and nearest sampling agree exactly.
    interior = (ndimage.minimum_filter(crop, 3, mode="constant", cval=-1)
                == ndimage.maximum_filter(crop, 3, mode="constant", cval=-1))
    assert interior.sum() > 200
    np.testing.assert_allclose(image[0][interior], crop[interior], atol=1e-4)


def test_small_image_is_centred_and_zero_padded():
    labels = np.ones((10, 12), np.int32)
    image, crop = augment_pair(np.ones((1, 10, 12), np.float32), labels, crop_size=32,
                               rng=np.random.default_rng(0), config=EXACT)
    assert image.shape == (1, 32, 32) and crop.shape == (32, 32)
    assert crop.sum() == 120 and crop[0].sum() == 0 and crop[16, 16] == 1


def test_same_seed_same_crop_and_different_seed_differs():
    labels = _labels()
    image = labels[None].astype(np.float32) / 40
    a = augment_pair(image, labels, crop_size=24, rng=np.random.default_rng(3))
    b = augment_pair(image, labels, crop_size=24, rng=np.random.default_rng(3))
    c = augment_pair(image, labels, crop_size=24, rng=np.random.default_rng(4))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert a[0].dtype == np.float32 and a[1].dtype == np.int32


def test_intensity_is_monotone_and_bounded():
    config = AugmentConfig(brightness=0.1, contrast=(0.8, 1.2), gamma=(0.8, 1.25))
    image = np.linspace(-0.2, 1.2, 100, dtype=np.float32)[None, None]
    for seed in range(10):
        out = adjust_intensity(image, np.random.default_rng(seed), config)
        assert np.all(np.diff(out.ravel()) > 0)
        assert out.dtype == np.float32 and np.isfinite(out).all()


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="image, labels"):
        augment_pair(np.zeros((1, 8, 8), np.float32), np.zeros((8, 9), np.int32), crop_size=8,
                     rng=np.random.default_rng(0))


@pytest.mark.parametrize("seed", range(4))
def test_ignore_mask_follows_the_labels(seed):
    """The ignore mask is resampled like the labels; image and labels are those of augment_pair."""
    labels = ndimage.zoom(_labels((12, 15), seed), 6, order=0)
    ignore = labels % 3 == 0
    image = labels[None].astype(np.float32) / 40
    config = AugmentConfig(rotation=180.0, scale=(0.7, 1.4))
    out_image, out_labels, out_ignore = augment_sample(
        image, labels, ignore, crop_size=48, rng=np.random.default_rng(seed), config=config)
    pair = augment_pair(image, labels, crop_size=48, rng=np.random.default_rng(seed), config=config)
    assert np.array_equal(out_image, pair[0]) and np.array_equal(out_labels, pair[1])
    assert out_ignore.dtype == bool and out_ignore.shape == (48, 48)
    inside = warp_mask(np.ones(labels.shape, bool),
                       random_affine(labels.shape, 48, np.random.default_rng(seed), config))
    assert np.array_equal(out_ignore, (out_labels % 3 == 0) & inside)


@pytest.mark.parametrize("seed", range(4))
def test_label_context_widens_the_labels_around_the_same_crop(seed):
    """Labels with context: the centre is the crop's labels, the rim the image around it (the
    same map), and the image does not change."""
    labels = ndimage.zoom(_labels((12, 15), seed), 6, order=0)
    image = labels[None].astype(np.float32) / 40
    config = AugmentConfig(rotation=180.0, scale=(0.7, 1.4))
    plain = augment_sample(image, labels, None, crop_size=32, rng=np.random.default_rng(seed),
                           config=config)
    wide = augment_sample(image, labels, None, crop_size=32, rng=np.random.default_rng(seed),
                          config=config, label_context=8)
    assert wide[1].shape == (48, 48) and wide[1].dtype == np.int32
    assert np.array_equal(wide[1][8:-8, 8:-8], plain[1])
    assert np.array_equal(wide[0], plain[0]) and np.array_equal(wide[2], plain[2])
    transform = random_affine(labels.shape, 32, np.random.default_rng(seed), config)
    whole = widen(transform, 8)
    _, expected = apply_affine(image, labels, whole)
    assert np.array_equal(wide[1], expected)
    assert set(np.unique(wide[1][:8])) - {0}   # the rim holds cells of the image


def test_widen_by_zero_is_the_map_and_negative_context_is_an_error():
    transform = random_affine((40, 50), 16, np.random.default_rng(0), EXACT)
    assert widen(transform, 0) is transform
    wide = widen(transform, 3)
    assert wide.shape == (22, 22)
    assert np.allclose(wide.matrix @ np.array([3.0, 3.0]) + wide.offset, transform.offset)
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="context"):
            widen(transform, bad)


def test_no_ignore_mask_gives_all_false():
    labels = _labels()
    _, _, ignore = augment_sample(labels[None].astype(np.float32), labels, None, crop_size=16,
                                  rng=np.random.default_rng(0))
    assert ignore.shape == (16, 16) and not ignore.any()
    with pytest.raises(ValueError, match="ignore"):
        augment_sample(labels[None].astype(np.float32), labels, np.zeros((3, 3), bool),
                       crop_size=16, rng=np.random.default_rng(0))


def test_lower_resolution_blurs_keeps_shape_and_factor_one_is_identity():
    rng = np.random.default_rng(0)
    image = rng.random((2, 64, 80)).astype(np.float32)
    assert lower_resolution(image, 1.0) is image
    low = lower_resolution(image, 2.0)
    assert low.shape == image.shape and low.dtype == np.float32
    # noise loses its high frequencies; a smooth ramp survives almost unchanged
    assert np.abs(np.diff(low, axis=-1)).mean() < 0.5 * np.abs(np.diff(image, axis=-1)).mean()
    ramp = np.broadcast_to(np.linspace(0, 1, 80, dtype=np.float32), (1, 64, 80)).copy()
    assert np.abs(lower_resolution(ramp, 2.0) - ramp)[..., 4:-4].max() < 0.02
    with pytest.raises(ValueError, match="factor"):
        lower_resolution(image, 0.5)


def test_low_res_changes_only_the_image_and_zero_keeps_the_random_stream():
    rng = np.random.default_rng(0)
    image = rng.random((1, 120, 120)).astype(np.float32)
    labels = (rng.random((120, 120)) > 0.5).astype(np.int32)
    plain = augment_pair(image, labels, crop_size=64, rng=np.random.default_rng(3))
    zero = augment_pair(image, labels, crop_size=64, rng=np.random.default_rng(3),
                        config=AugmentConfig(low_res=0.0))
    low = augment_pair(image, labels, crop_size=64, rng=np.random.default_rng(3),
                       config=AugmentConfig(low_res=1.0))
    np.testing.assert_array_equal(plain[0], zero[0])
    np.testing.assert_array_equal(plain[1], low[1])      # labels keep full resolution
    assert not np.allclose(plain[0], low[0])


@pytest.mark.parametrize("bad", [dict(low_res=1.5), dict(low_res=-0.1),
                                 dict(low_res_factor=(0.5, 2.0)), dict(low_res_factor=(3.0, 2.0))])
def test_low_res_settings_are_checked(bad):
    with pytest.raises(ValueError, match="low_res"):
        AugmentConfig(**bad)


def test_default_intensity_augmentation_is_the_identity():
    image = np.linspace(-0.2, 1.2, 100, dtype=np.float32)[None, None]
    np.testing.assert_array_equal(adjust_intensity(image, np.random.default_rng(0), AugmentConfig()),
                                  image)
