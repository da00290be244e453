"""Tests for flowseg.metrics: hand-computed cases and agreement with cellpose.metrics."""

from __future__ import annotations

import numpy as np
import pytest

from flowseg.metrics import (IOU_THRESHOLDS, ImageScore, image_score, iou_matrix, match_counts,
                             mean_score)

SHAPE = (20, 24)


def _square(shape=SHAPE, rows=slice(2, 12), cols=slice(3, 13), label=1, out=None):
    labels = np.zeros(shape, np.int32) if out is None else out
    labels[rows, cols] = label
    return labels


def _indices(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask.ravel())


def test_thresholds_are_exact():
    assert IOU_THRESHOLDS.tolist() == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


def test_perfect_prediction_with_other_label_ids():
    truth = _square()
    _square(rows=slice(14, 18), cols=slice(0, 5), label=2, out=truth)
    pred = np.where(truth == 1, 7, np.where(truth == 2, 3, 0))
    result = image_score(truth, pred)
    assert isinstance(result, ImageScore)
    assert result.score == 1.0
    assert result.tp.tolist() == [2] * 10
    assert result.fp.tolist() == result.fn.tolist() == [0] * 10
    assert (result.n_true, result.n_pred) == (2, 2)


def test_shifted_square_passes_thresholds_below_two_thirds():
    truth = _square()                                   # 10 x 10
    pred = _square(rows=slice(4, 14))                   # shifted 2 rows: 80 / 120
    np.testing.assert_allclose(iou_matrix(truth, pred), [[2 / 3]])
    result = image_score(truth, pred)
    assert result.tp.tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]   # 0.667 > 0.65, < 0.70
    assert result.fp.tolist() == result.fn.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert result.score == pytest.approx(0.4)


def test_shifted_square_beside_perfect_one():
    truth = _square()
    _square(rows=slice(14, 18), cols=slice(0, 5), label=2, out=truth)
    pred = _square(rows=slice(4, 14))
    _square(rows=slice(14, 18), cols=slice(0, 5), label=2, out=pred)
    # four thresholds with 2 TP (score 1), six with 1 TP, 1 FP, 1 FN (score 1/3)
    assert image_score(truth, pred).score == pytest.approx((4 + 6 / 3) / 10)


@pytest.mark.parametrize(("true_px", "pred_px", "n_pass"), [(4, 3, 5), (20, 11, 1), (20, 19, 9)])
def test_iou_equal_to_threshold_does_not_match(true_px, pred_px, n_pass):
    """IoU 3/4 = 0.75, 11/20 = 0.55, 19/20 = 0.95 exactly: the match needs IoU > t."""
    truth = np.zeros((1, 30), np.int32)
    truth[0, :true_px] = 1
    pred = np.zeros_like(truth)
    pred[0, :pred_px] = 1
    assert iou_matrix(truth, pred)[0, 0] in IOU_THRESHOLDS
    result = image_score(truth, pred)
    assert result.tp.tolist() == [1] * n_pass + [0] * (10 - n_pass)
    assert result.score == pytest.approx(n_pass / 10)


def test_both_empty_scores_one():
    result = image_score(np.zeros(SHAPE, np.int32), np.zeros(SHAPE, np.int32))
    assert result.score == 1.0
    assert result.scores.tolist() == [1.0] * 10
    assert (result.n_true, result.n_pred) == (0, 0)
    assert iou_matrix(np.zeros(SHAPE, np.int32), np.zeros(SHAPE, np.int32)).shape == (0, 0)


def test_empty_truth_list_and_empty_prediction_scores_one():
    assert image_score([], np.zeros(SHAPE, np.uint16)).score == 1.0


def test_empty_truth_with_prediction_scores_zero():
    result = image_score(np.zeros(SHAPE, np.int32), _square())
    assert result.score == 0.0
    assert result.fp.tolist() == [1] * 10 and result.fn.tolist() == [0] * 10


def test_empty_prediction_scores_zero():
    result = image_score(_square(), np.zeros(SHAPE, np.int32))
    assert result.score == 0.0
    assert result.fn.tolist() == [1] * 10 and result.fp.tolist() == [0] * 10
    assert iou_matrix(_square(), np.zeros(SHAPE, np.int32)).shape == (1, 0)


def test_one_truth_split_into_two_predictions():
    truth = _square()                                         # 10 x 10 = 100 px
    pred = _square(cols=slice(3, 9))                          # 60 px: IoU 0.6
    pred[2:12, 9:13] = 2                                      # 40 px: IoU 0.4
    np.testing.assert_allclose(iou_matrix(truth, pred), [[0.6, 0.4]])
    result = image_score(truth, pred)
    assert result.tp.tolist() == [1, 1] + [0] * 8             # 0.6 > 0.55, not > 0.6
    assert result.fp.tolist() == [1, 1] + [2] * 8
    assert result.fn.tolist() == [0, 0] + [1] * 8
    assert result.score == pytest.approx(2 * 0.5 / 10)


def test_overlapping_truths_are_scored_as_their_own_masks():
    a = _square().astype(bool)                                # 100 px
    b = a.copy()
    b[2, :] = False                                           # 90 px, inside a
    pred = _square()
    np.testing.assert_allclose(iou_matrix([_indices(a), _indices(b)], pred), [[1.0], [0.9]])
    result = image_score([_indices(a), _indices(b)], pred)
    # one prediction matches at most one of them, at every threshold
    assert result.tp.tolist() == [1] * 10
    assert result.fn.tolist() == [1] * 10
    assert result.score == pytest.approx(0.5)


def test_overlapping_truths_with_two_predictions_match_both():
    a = _square().astype(bool)                                # rows 2..11
    b = _square(rows=slice(4, 14)).astype(bool)               # rows 4..13, overlaps a
    pred = _square(rows=slice(2, 9))                          # rows 2..8 : 70 px
    pred[9:14, 3:13] = 2                                      # rows 9..13: 50 px
    iou = iou_matrix([_indices(a), _indices(b)], pred)
    np.testing.assert_allclose(iou, [[70 / 100, 30 / 120], [50 / 120, 50 / 100]])
    assert image_score([_indices(a), _indices(b)], pred).tp[0] == 1   # only a-1 > 0.5
    assert match_counts(iou, [0.4]).tp.tolist() == [2]                # a-1 and b-2


def test_match_counts_is_a_maximum_matching():
    """Greedy matching of the first row to its first candidate would find only one pair."""
    iou = np.array([[0.3, 0.3], [0.3, 0.0]])
    counts = match_counts(iou, [0.2])
    assert (counts.tp.tolist(), counts.fp.tolist(), counts.fn.tolist()) == ([2], [0], [0])
    tp, fp, fn = match_counts(np.zeros((3, 0)))
    assert tp.tolist() == [0] * 10 and fn.tolist() == [3] * 10 and fp.tolist() == [0] * 10


def test_label_image_and_index_list_truth_agree():
    truth, pred = _random_pair(np.random.default_rng(3))
    instances = [_indices(truth == k) for k in range(1, truth.max() + 1)]
    np.testing.assert_array_equal(iou_matrix(truth, pred), iou_matrix(instances, pred))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
def test_label_dtypes_and_sparse_label_ids(dtype):
    truth = _square(label=3).astype(dtype)
    truth[14:18, 0:5] = 200
    pred = truth.copy()
    pred[pred == 200] = 90
    assert image_score(truth, pred).score == 1.0
    assert image_score(truth, pred).n_true == 2


def test_huge_label_ids():
    truth = _square().astype(np.int64) * (2**40)
    truth[14:18, 0:5] = 2**41
    pred = (truth > 0).astype(np.int64)
    pred[14:18, 0:5] = 5
    assert image_score(truth, pred).score == 1.0


def test_label_ids_without_background():
    truth = np.full((4, 4), 2**40, np.int64)
    pred = np.ones((4, 4), np.int32)
    assert image_score(truth, pred).score == 1.0


def test_mean_score_is_mean_of_image_scores():
    truth = _square()
    shifted = _square(rows=slice(4, 14))
    assert mean_score([truth, truth], [truth, shifted]) == pytest.approx((1.0 + 0.4) / 2)
    with pytest.raises(ValueError, match="same number"):
        mean_score([truth], [])


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"truth \(20, 24\).*pred \(20, 25\)"):
        image_score(np.zeros((20, 24), np.int32), np.zeros((20, 25), np.int32))


@pytest.mark.parametrize("which", ["truth", "pred"])
def test_float_labels_are_a_type_error(which):
    labels = {"truth": np.zeros(SHAPE, np.int32), "pred": np.zeros(SHAPE, np.int32)}
    labels[which] = labels[which].astype(np.float32)
    with pytest.raises(TypeError, match=f"{which}.*dtype float32"):
        iou_matrix(labels["truth"], labels["pred"])


@pytest.mark.parametrize("which", ["truth", "pred"])
def test_negative_labels_are_a_value_error(which):
    labels = {"truth": np.zeros(SHAPE, np.int32), "pred": np.zeros(SHAPE, np.int32)}
    labels[which][0, 0] = -1
    with pytest.raises(ValueError, match=f"{which}.*>= 0"):
        iou_matrix(labels["truth"], labels["pred"])


def test_bad_pixel_indices():
    pred = np.zeros(SHAPE, np.int32)
    with pytest.raises(ValueError, match=r"truth\[1\].*\[0, 480\)"):
        iou_matrix([np.arange(3), np.array([5, 480])], pred)
    with pytest.raises(ValueError, match=r"truth\[0\].*distinct"):
        iou_matrix([np.array([5, 6, 5])], pred)
    with pytest.raises(TypeError, match=r"truth\[0\].*integer"):
        iou_matrix([np.array([0.5])], pred)


def test_bad_thresholds():
    with pytest.raises(ValueError, match="thresholds"):
        match_counts(np.zeros((1, 1)), [1.5])


# --------------------------------------------------------------------------- cellpose


def _random_labels(rng: np.random.Generator, shape=(96, 128), n=25) -> np.ndarray:
    """Non-overlapping label image of random ellipses, labels 1..k consecutive."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(3, 10, size=2)
        labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = k
    _, consecutive = np.unique(labels, return_inverse=True)
    return consecutive.reshape(shape).astype(np.int32)


def _random_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Truth and a perturbed prediction: shifted, dropped and split instances, extra ones."""
    truth = _random_labels(rng)
    pred = np.zeros_like(truth)
    for k in range(1, truth.max() + 1):
        mask = truth == k
        action = rng.integers(4)
        if action == 1:
            mask = np.roll(mask, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        elif action == 2:
            continue
        pred[mask] = k
        if action == 3:
            ys, _ = np.nonzero(mask)
            pred[mask & (np.arange(mask.shape[0])[:, None] > np.median(ys))] = truth.max() + k
    extra = _random_labels(rng, n=4)
    pred[(extra > 0) & (pred == 0)] = extra[(extra > 0) & (pred == 0)] + 3 * truth.max()
    _, consecutive = np.unique(pred, return_inverse=True)
    return truth, consecutive.reshape(pred.shape).astype(np.int32)


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_cellpose_where_conventions_agree(seed):
    metrics = pytest.importorskip("cellpose.metrics")
    truth, pred = _random_pair(np.random.default_rng(seed))
    # offsets keep thresholds off every IoU value, where cellpose's >= and our > differ
    thresholds = IOU_THRESHOLDS + 0.0123
    assert not np.isin(iou_matrix(truth, pred), thresholds).any()
    ours = image_score(truth, pred, thresholds=thresholds)
    _, tp, fp, fn = metrics.average_precision(truth, pred, threshold=thresholds)
    np.testing.assert_array_equal(ours.tp, tp)
    np.testing.assert_array_equal(ours.fp, fp)
    np.testing.assert_array_equal(ours.fn, fn)
    assert 0 < ours.score < 1


def test_unsorted_indices_and_empty_instances():
    truth = _square()
    pred = _square(rows=slice(4, 14))
    shuffled = np.random.default_rng(0).permutation(_indices(truth))
    empty = np.zeros(0, np.int64)
    np.testing.assert_array_equal(iou_matrix([shuffled, empty], pred), [[2 / 3]])
    with pytest.raises(ValueError, match=r"truth\[1\].*distinct"):
        iou_matrix([shuffled, np.array([9, 3, 9])], pred)


def test_sparse_table_gives_the_dense_result(monkeypatch):
    import flowseg.metrics as metrics

    truth, pred = _random_pair(np.random.default_rng(4))
    instances = [_indices(truth == k) for k in range(1, truth.max() + 1)]
    dense = iou_matrix(truth, pred), iou_matrix(instances, pred)
    monkeypatch.setattr(metrics, "_MAX_DENSE_TABLE", 0)
    np.testing.assert_array_equal(iou_matrix(truth, pred), dense[0])
    np.testing.assert_array_equal(iou_matrix(instances, pred), dense[1])
