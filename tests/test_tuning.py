"""Tests for flowseg.tuning: the search on cached (fabricated) maps, no network."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from flowseg.config import ClassThresholds, SegmentConfig
from flowseg.flows import labels_to_flows
from flowseg.tuning import (TuningData, TuningGrid, best_global, grid_scores, score_config, tune)

CLASSES = ("big", "small")
SHAPE = (64, 64)


def _squares(side: int, starts, shape=SHAPE, first: int = 1) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for i, (y, x) in enumerate(starts):
        labels[y:y + side, x:x + side] = first + i
    return labels


def _maps(pred: np.ndarray, k: int, *, cellprob: np.ndarray | None = None) -> torch.Tensor:
    """Exact maps of ``pred``: its flows, +/-8 logits (or ``cellprob``), class ``k`` logits."""
    logits = np.where(pred > 0, 8.0, -8.0) if cellprob is None else cellprob
    classes = np.full((len(CLASSES), *pred.shape), -4.0)
    classes[k] = 4.0
    return torch.from_numpy(np.concatenate([labels_to_flows(pred), logits[None], classes])
                            .astype(np.float32))


def _data(seed: int) -> TuningData:
    """"big" images: 12x12 cells plus 4x4 false blobs (16 px) in the maps; "small" images:
    true 4x4 cells (16 px). The right min size is > 16 for "big" and <= 16 for "small"."""
    rng = np.random.default_rng(seed)
    maps, truths, types = [], [], []
    for i in range(2):
        big = _squares(12, [(2 + 20 * a, 2 + 20 * b) for a in range(3) for b in range(3)])
        junk = _squares(4, [(16 + 20 * a, 16 + 20 * b) for a in range(2) for b in range(2)
                            if rng.random() < 0.9 or (a, b) == (0, 0)], first=20)
        pred = big + junk
        holes = _squares(3, [(5 + 20 * a, 5 + 20 * b) for a in range(3) for b in range(3)])
        pred[holes > 0] = 0           # 9-px holes of background logit, filled again (IoU > 0.95)
        maps.append(_maps(pred, 0))
        truths.append(big)
        types.append("big")
        small = _squares(4, [(3 + 10 * a + i, 3 + 10 * b) for a in range(6) for b in range(6)])
        maps.append(_maps(small, 1))
        truths.append(small)
        types.append("small")
    return TuningData(maps, truths, tuple(types), CLASSES)


GRID = TuningGrid(cellprob_thresholds=(0.0,), flow_thresholds=(0.0, 0.4), min_sizes=(0, 10, 20, 30, 200))


def test_per_class_min_size_is_found_and_beats_any_global_value():
    data = _data(0)
    config = SegmentConfig(min_size=0)
    result = tune(data, config=config, grid=GRID)
    assert result.per_class["big"].values.min_size == 20     # first size above the 16-px blobs
    assert result.per_class["small"].values.min_size == 0      # current value wins the tie with 10
    assert result.after == pytest.approx(1.0)
    assert result.per_class["big"].before < 1.0 and result.per_class["big"].after == 1.0
    assert result.n_trials == 10
    assert result.config.per_class["big"] == result.per_class["big"].values
    # no single set of values is right for both classes
    glob = best_global(grid_scores(data, GRID, config=config), GRID, config=config)
    g = ClassThresholds(glob.cellprob_threshold, glob.flow_threshold, glob.min_size)
    global_config = SegmentConfig(cellprob_threshold=g.cellprob_threshold,
                                  flow_threshold=g.flow_threshold, min_size=g.min_size)
    assert score_config(data, global_config).mean() < result.after


def test_grid_scores_equal_the_exact_segment_path():
    data = _data(1)
    config = SegmentConfig()
    grid = TuningGrid(cellprob_thresholds=(-1.0, 0.0), flow_thresholds=(0.0, 0.4),
                      min_sizes=(0, 20, 30))
    scores = grid_scores(data, grid, config=config)
    assert scores.shape == (4, 2, 2, 3)
    for index in [(0, 0, 0), (1, 1, 1), (0, 1, 2), (1, 0, 1)]:
        v = grid.values(index)
        exact = score_config(data, SegmentConfig(cellprob_threshold=v.cellprob_threshold,
                                                 flow_threshold=v.flow_threshold,
                                                 min_size=v.min_size))
        np.testing.assert_allclose(scores[(slice(None), *index)], exact)


def test_min_sizes_are_tuned_in_the_networks_pixels():
    """Maps predicted at scale 2 show the network cells of 4x their image area: the tuned
    min size is 4x the one tuned at scale 1, and grid scores still equal the exact path."""
    data = _data(0)
    scaled = dataclasses.replace(data, scale=2.0)
    grid = TuningGrid(cellprob_thresholds=(0.0,), flow_thresholds=(0.0,),
                      min_sizes=(0, 20, 40, 80, 800))
    config = SegmentConfig(min_size=0)
    assert tune(data, config=config, grid=grid).per_class["big"].values.min_size == 20
    assert tune(scaled, config=config, grid=grid).per_class["big"].values.min_size == 80
    scores = grid_scores(scaled, grid, config=config)
    for k, ms in enumerate(grid.min_sizes):
        np.testing.assert_allclose(scores[:, 0, 0, k],
                                   score_config(scaled, SegmentConfig(min_size=ms,
                                                                      flow_threshold=0.0)))
    with pytest.raises(ValueError, match="scale"):
        dataclasses.replace(data, scale=0.0)


def test_cellprob_threshold_per_class():
    """"small" maps have faint (logit 1) false blobs of cell size: only a threshold > 1 drops them."""
    truth = _squares(5, [(3 + 10 * a, 3 + 10 * b) for a in range(3) for b in range(6)])
    fake = _squares(5, [(33 + 10 * a, 3 + 10 * b) for a in range(3) for b in range(6)], first=50)
    logits = np.where(truth > 0, 8.0, np.where(fake > 0, 1.0, -8.0))
    maps = [_maps(truth + fake, 1, cellprob=logits), _maps(truth + fake, 0, cellprob=logits)]
    data = TuningData(maps, [truth, truth + fake], ("small", "big"), CLASSES)
    grid = TuningGrid(cellprob_thresholds=(0.0, 2.0), flow_thresholds=(0.0,), min_sizes=(0,))
    result = tune(data, config=SegmentConfig(min_size=0), grid=grid)
    assert result.per_class["small"].values.cellprob_threshold == 2.0
    assert result.per_class["big"].values.cellprob_threshold == 0.0  # there the blobs are cells
    assert result.after == 1.0 and result.per_class["small"].before < 1.0


def test_small_gains_keep_the_global_values():
    data = _data(0)
    result = tune(data, config=SegmentConfig(min_size=0), grid=GRID, min_gain=0.5)
    # "big" gains 0.25 to 0.31 (9 cells and 3 or 4 blobs: 9/13 -> 1) over the global best (min
    # size 0; ties keep the current flow threshold): below min_gain, so it keeps the global values
    assert result.global_values == ClassThresholds(0.0, 0.4, 0)
    assert result.per_class["big"].values == result.global_values
    assert not result.per_class["big"].own and not result.per_class["small"].own
    result = tune(data, config=SegmentConfig(min_size=0), grid=GRID, min_gain=0.1)
    assert result.per_class["big"].own and result.per_class["big"].values.min_size == 20
    with pytest.raises(ValueError, match="min_gain"):
        tune(data, config=SegmentConfig(), grid=GRID, min_gain=-1)


def test_min_flow_grid_keeps_the_best_tuned_min_flow():
    data = _data(0)
    start = SegmentConfig(min_size=0)
    grid = dataclasses.replace(GRID, min_flows=(0.0, 0.3, 2.0))
    result = tune(data, config=start, grid=grid)
    separate = {m: tune(data, config=dataclasses.replace(start, min_flow=m), grid=GRID)
                for m in grid.min_flows}
    best = max(separate, key=lambda m: (separate[m].after, -m))
    assert result.config.min_flow == best and result.after == separate[best].after
    assert result.config == separate[best].config
    assert result.before == separate[start.min_flow].before  # scored with the input config
    assert result.n_trials == 3 * int(np.prod(GRID.shape))


@pytest.mark.parametrize("kwargs, match", [
    ({"min_flows": (-0.1,)}, "min_flows: expected values >= 0"),
    ({"min_sizes": ()}, "min_sizes: expected at least one"),
    ({"min_sizes": (1.5,)}, "min_sizes: expected finite int"),
    ({"flow_thresholds": (-1.0,)}, "flow_thresholds: expected values >= 0"),
    ({"cellprob_thresholds": (0.0, 0.0)}, "distinct"),
])
def test_bad_grids_are_clear_errors(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        TuningGrid(**kwargs)


def test_bad_data_is_a_clear_error():
    maps = [_maps(_squares(5, [(3, 3)]), 0)]
    with pytest.raises(ValueError, match="one per map"):
        TuningData(maps, [], ("big",), CLASSES)
    with pytest.raises(ValueError, match=r"maps\[0\]: expected shape \(3 \+ 3"):
        TuningData(maps, [np.zeros(SHAPE, np.int32)], ("big",), ("a", "b", "c"))


def test_grid_scores_equal_the_exact_path_at_a_scale_that_does_not_divide_the_sizes():
    """Min sizes become image pixels by one rule (rounded ``min_size / scale**2``) in the
    grid search and in segment_maps, also where the quotient is not a whole number."""
    data = dataclasses.replace(_data(2), scale=1.7)
    grid = TuningGrid(cellprob_thresholds=(0.0,), flow_thresholds=(0.0,),
                      min_sizes=(0, 15, 45, 47, 49, 300))
    scores = grid_scores(data, grid, config=SegmentConfig())
    for k, ms in enumerate(grid.min_sizes):
        np.testing.assert_allclose(scores[:, 0, 0, k],
                                   score_config(data, SegmentConfig(min_size=ms, flow_threshold=0.0)))
