"""Tests for flowseg.evaluation: pairing, per-image results and summaries (no files)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from flowseg.errors import InputError
from flowseg.evaluation import (TruthImage, cell_type_confusion, check_prediction_ids,
                                format_confusion_table, format_summary_table, per_image_table,
                                score_image, score_images, summarize)
from flowseg.metrics import IOU_THRESHOLDS


def _truth(image_id: str, cell_type: str, n: int) -> TruthImage:
    labels = np.zeros((6, 6 * n), np.int32)
    for k in range(n):
        labels[1:5, 6 * k + 1:6 * k + 5] = k + 1
    return TruthImage(image_id, cell_type, labels.shape, labels)


def test_check_prediction_ids(caplog):
    with caplog.at_level(logging.WARNING, logger="flowseg.evaluation"):
        assert check_prediction_ids(["a", "b", "c"], iter(["c", "a"])) == ["b"]
    assert "no prediction" in caplog.text and ": b" in caplog.text
    with pytest.raises(InputError, match=r"pred dir: prediction\(s\) for 2 id\(s\) not in the "
                                         r"truth: x, y"):
        check_prediction_ids(["a"], ["a", "y", "x"], source="pred dir")


def test_missing_prediction_scores_as_empty():
    truth = _truth("a", "astro", 2)
    result = score_image(truth, None)
    assert not result.has_prediction and result.score.score == 0.0
    assert result.score.fn.tolist() == [2] * 10
    empty = TruthImage("e", "astro", (4, 4), np.zeros((4, 4), np.int32))
    assert score_image(empty, None).score.score == 1.0


def test_wrong_prediction_shape_names_id_and_shapes():
    with pytest.raises(InputError, match=r"id a: .*\(6, 7\).*\(6, 12\)"):
        score_image(_truth("a", "astro", 2), np.zeros((6, 7), np.int32))


def test_summary_per_class_and_threshold():
    truths = [_truth("a", "astro", 2), _truth("b", "cort", 1), _truth("c", "cort", 3)]
    preds = {"a": truths[0].instances, "b": np.zeros((6, 6), np.int32)}
    results = score_images(truths, preds)
    assert [r.score.score for r in results] == [1.0, 0.0, 0.0]
    summary = summarize(results)
    assert summary.overall.mean_ap == pytest.approx(1 / 3)
    assert {c: g.mean_ap for c, g in summary.per_class.items()} == {"astro": 1.0, "cort": 0.0}
    assert (summary.overall.n_true, summary.overall.n_pred) == (6, 2)
    assert summary.missing_predictions == ("c",)
    np.testing.assert_allclose(summary.per_class["astro"].per_threshold, np.ones(10))
    as_json = summary.to_json()
    assert as_json["per_class"] == {"astro": 1.0, "cort": 0.0}
    assert as_json["n_images"] == 3 and as_json["n_images_per_class"] == {"astro": 1, "cort": 2}
    assert list(as_json["per_threshold"]) == [f"{t:.2f}" for t in IOU_THRESHOLDS]
    table = format_summary_table(summary).splitlines()
    assert [line.split()[0] for line in table] == ["cell", "astro", "cort", table[3], "all"]


def test_per_image_table_columns_and_rows():
    truth = _truth("a", "astro", 2)
    pred = np.where(truth.instances == 2, 0, truth.instances)  # one of the two found
    results = score_images([truth], {"a": pred})
    columns, rows = per_image_table(results)
    assert columns[:6] == ["id", "cell_type", "pred_cell_type", "n_true", "n_pred", "score"]
    assert columns[6:9] == ["tp@0.50", "tp@0.55", "tp@0.60"] and columns[-1] == "fn@0.95"
    assert len(columns) == 6 + 30 and len(rows) == 1 and len(rows[0]) == len(columns)
    assert rows[0][:6] == ["a", "astro", "", 2, 1, "0.500000"]
    results = score_images([truth], {"a": pred}, pred_cell_types={"a": "cort"})
    assert per_image_table(results)[1][0][:3] == ["a", "astro", "cort"]


def test_summarize_needs_results():
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_cell_type_confusion_and_accuracy():
    truths = [_truth("a", "astro", 1), _truth("b", "cort", 1), _truth("c", "cort", 1),
              _truth("d", "shsy5y", 1)]
    preds = {t.id: t.instances for t in truths}
    results = score_images(truths, preds, pred_cell_types={"a": "astro", "b": "astro", "c": "cort",
                                                           "d": "other"})
    confusion = cell_type_confusion(results)
    assert confusion == {"astro": {"astro": 1, "cort": 0, "other": 0, "shsy5y": 0},
                         "cort": {"astro": 1, "cort": 1, "other": 0, "shsy5y": 0},
                         "shsy5y": {"astro": 0, "cort": 0, "other": 1, "shsy5y": 0}}
    summary = summarize(results)
    assert summary.confusion == confusion and summary.type_accuracy == 0.5
    as_json = summary.to_json()
    assert as_json["cell_type_confusion"] == confusion and as_json["cell_type_accuracy"] == 0.5
    table = format_confusion_table(confusion).splitlines()
    assert table[0].split() == ["true/pred", "astro", "cort", "other", "shsy5y"]
    assert table[2].split() == ["cort", "1", "1", "0", "0"]


def test_no_predicted_types_no_confusion():
    results = score_images([_truth("a", "astro", 1)], {}, pred_cell_types={})
    assert cell_type_confusion(results) is None
    summary = summarize(results)
    assert summary.type_accuracy is None and summary.to_json()["cell_type_confusion"] is None
