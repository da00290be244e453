import math

import numpy as np
import pytest
from skimage.draw import disk

from flowseg.size import (SCALE_LIMITS, SizeModel, fit_ridge, fit_size_model, label_diameter,
                          label_diameters, scale_for_diameter)


def _discs(radius: int, n: int = 4, shape=(200, 200)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for i in range(n):
        rr, cc = disk((30 + 45 * i, 40 + 30 * i), radius, shape=shape)
        labels[rr, cc] = i + 1
    return labels


@pytest.mark.parametrize("radius", [8, 12, 20])
def test_disc_diameter_is_twice_its_radius(radius):
    assert label_diameter(_discs(radius, n=3)) == pytest.approx(2 * radius, rel=0.05)


def test_diameters_per_instance_and_empty_images():
    labels = _discs(6, n=2)
    labels[labels == 2] = 7  # ids need not be consecutive
    assert len(label_diameters(labels)) == 2
    assert math.isnan(label_diameter(np.zeros((10, 10), np.int32)))
    with pytest.raises(ValueError, match="integer label image"):
        label_diameters(np.zeros((4, 4), np.float32))


def test_scale_for_diameter_is_the_cellpose_rule_and_checks_values():
    assert scale_for_diameter(40.0, 20.0) == 0.5
    for bad in (0, -3, math.nan, "30", True):
        with pytest.raises(ValueError, match="diameter"):
            scale_for_diameter(bad, 20.0)


def test_ridge_recovers_a_linear_function():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.7
    coef, intercept = fit_ridge(x, y, alpha=0.0)
    np.testing.assert_allclose(coef, [1.0, -2.0, 0.5, 0.0, 3.0], atol=1e-8)
    assert intercept == pytest.approx(0.7)
    shrunk, _ = fit_ridge(x, y, alpha=10.0)
    assert np.abs(shrunk).sum() < np.abs(coef).sum()


def test_size_model_estimates_the_zoom_it_was_fitted_on():
    rng = np.random.default_rng(1)
    direction = rng.normal(size=8)
    zooms = np.exp(rng.uniform(np.log(1 / 3), np.log(3), 100))
    styles = np.log(zooms)[:, None] * direction + rng.normal(scale=0.01, size=(100, 8))
    size = fit_size_model(styles, zooms, diameter=17.0, class_diameters={"a": 30.0})
    np.testing.assert_allclose(size.zooms(styles), zooms, rtol=0.05)
    assert size.fit_error < 0.05
    assert size.scale(1.1) == 1.0 and size.scale(1 / 1.2) == 1.0  # within the tolerance
    assert size.scale(2.0) == 0.5
    assert size.scale(100.0) == 1 / 3  # the zoom is bounded to the fitted range
    assert SizeModel(diameter=1.0, zoom_range=(0.1, 10)).scale(100.0) == SCALE_LIMITS[0]


def test_size_model_round_trips_and_refuses_bad_values():
    size = SizeModel(diameter=17.0, class_diameters={"a": 30}, coef=(1.0, 2.0), intercept=0.1)
    assert SizeModel.from_dict(size.to_dict()) == size
    with pytest.raises(ValueError, match="unknown keys"):
        SizeModel.from_dict({**size.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="diameter"):
        SizeModel(diameter=0.0)
    with pytest.raises(ValueError, match="styles: expected shape"):
        size.zooms(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="no zoom regression"):
        SizeModel(diameter=10.0).zooms(np.zeros((1, 2)))
