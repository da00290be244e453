"""Tests for the ``evaluate`` program (flowseg.cli.evaluate), called through ``main``/``run``."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from flowseg.cli.evaluate import main, run
from flowseg.io.folders import write_cell_types, write_folder_item
from flowseg.io.images import write_labels
from flowseg.io.rle import rle_encode
from flowseg.io.submission import write_submission

SHAPE = (8, 10)  # (H, W)


def _mask(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[rows, cols] = True
    return mask


# Image a (astro): B lies inside A. Image b, c (shsy5y): one instance each.
TRUTH = {
    "a": ("astro", [_mask(slice(1, 5), slice(1, 5)), _mask(slice(1, 5), slice(1, 4))]),
    "b": ("shsy5y", [_mask(slice(2, 6), slice(2, 7))]),
    "c": ("shsy5y", [_mask(slice(0, 3), slice(0, 3))]),
}
# a: A exactly (IoU 1 with A, 12/16 = 0.75 with B: one match, one miss -> 0.5 everywhere)
# b: shifted one row (IoU 15/25 = 0.6: matches at 0.50 and 0.55 only -> 0.2); c: no prediction
PRED = {"a": TRUTH["a"][1][0].astype(np.int32),
        "b": _mask(slice(3, 7), slice(2, 7)).astype(np.int32) * 4}
EXPECTED = {"a": 0.5, "b": 0.2, "c": 0.0}


def _train_csv(path, truth=TRUTH):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "annotation", "width", "height", "cell_type", "plate_time"])
        for image_id, (cell_type, masks) in truth.items():
            for mask in masks:
                writer.writerow([image_id, rle_encode(mask), SHAPE[1], SHAPE[0], cell_type, ""])
    return path


def _pred_folder(directory, preds=PRED):
    directory.mkdir(exist_ok=True)
    for image_id, labels in preds.items():
        write_labels(directory / f"{image_id}_masks.tif", labels)
    return directory


def _read_per_image(out):
    with open(out / "per_image.csv", newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


@pytest.fixture
def truth_csv(tmp_path):
    return _train_csv(tmp_path / "train.csv")


def test_sartorius_truth_with_pred_folder(tmp_path, truth_csv, capsys):
    out = tmp_path / "report" / "nested"
    assert main(["--truth", str(truth_csv), "--pred", str(_pred_folder(tmp_path / "pred")),
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "WARNING: 1 truth image(s) have no prediction and score as empty predictions: c\n" \
        in captured.err
    rows = _read_per_image(out)
    assert list(rows) == ["a", "b", "c"]
    for image_id, score in EXPECTED.items():
        assert float(rows[image_id]["score"]) == pytest.approx(score)
    assert (rows["a"]["cell_type"], rows["a"]["n_true"], rows["a"]["n_pred"]) == ("astro", "2", "1")
    assert [rows["a"][f"{k}@0.95"] for k in ("tp", "fp", "fn")] == ["1", "0", "1"]
    assert [rows["b"][f"tp@{t}"] for t in ("0.50", "0.55", "0.60")] == ["1", "1", "0"]
    assert rows["c"]["n_pred"] == "0"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean_ap"] == pytest.approx((0.5 + 0.2 + 0.0) / 3)
    assert summary["per_class"] == pytest.approx({"astro": 0.5, "shsy5y": 0.1})
    assert summary["n_images"] == 3
    assert summary["n_images_per_class"] == {"astro": 1, "shsy5y": 2}
    assert summary["per_threshold"]["0.50"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert summary["per_threshold"]["0.95"] == pytest.approx(0.5 / 3)
    assert summary["missing_predictions"] == ["c"]
    assert sorted(p.name for p in out.iterdir()) == ["per_image.csv", "summary.json"]
    table = captured.out
    assert "astro" in table and "shsy5y" in table and "0.2333" in table


def test_submission_gives_the_same_report(tmp_path, truth_csv):
    _pred_folder(tmp_path / "pred")
    main(["--truth", str(truth_csv), "--pred", str(tmp_path / "pred"), "--out",
          str(tmp_path / "r1"), "--quiet"])
    submission = tmp_path / "submission.csv"
    write_submission(submission, PRED.items())
    main(["--truth", str(truth_csv), "--pred", str(submission), "--out", str(tmp_path / "r2"),
          "--quiet"])
    for name in ("per_image.csv", "summary.json"):
        assert (tmp_path / "r1" / name).read_text() == (tmp_path / "r2" / name).read_text()


def test_quiet_prints_no_table(tmp_path, truth_csv, capsys):
    main(["--truth", str(truth_csv), "--pred", str(_pred_folder(tmp_path / "pred")),
          "--out", str(tmp_path / "r"), "--quiet"])
    assert capsys.readouterr().out == ""


def test_folder_truth_with_cell_types(tmp_path):
    truth_dir = tmp_path / "truth"
    for image_id in ("a", "b"):
        labels = sum((i + 1) * m for i, m in enumerate(TRUTH[image_id][1][:1])).astype(np.int32)
        write_folder_item(truth_dir, image_id, np.zeros(SHAPE, np.uint8), labels, TRUTH[image_id][0])
    write_cell_types(truth_dir, {"a": "astro", "b": "shsy5y"})
    out = tmp_path / "r"
    assert main(["--truth", str(truth_dir), "--pred", str(_pred_folder(tmp_path / "pred")),
                 "--out", str(out), "--quiet"]) == 0
    rows = _read_per_image(out)
    assert float(rows["a"]["score"]) == 1.0 and float(rows["b"]["score"]) == pytest.approx(0.2)
    assert json.loads((out / "summary.json").read_text())["per_class"] == pytest.approx(
        {"astro": 1.0, "shsy5y": 0.2})


def test_masks_only_truth_folder_is_unknown_cell_type(tmp_path):
    truth_dir = _pred_folder(tmp_path / "truth", {"x": np.zeros(SHAPE, np.int32),
                                                  "y": PRED["b"]})
    pred_dir = _pred_folder(tmp_path / "pred", {"x": np.zeros(SHAPE, np.int32),
                                                "y": PRED["b"] // 4 * 9})
    out = tmp_path / "r"
    assert main(["--truth", str(truth_dir), "--pred", str(pred_dir), "--out", str(out),
                 "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_class"] == {"unknown": 1.0}  # x: both empty; y: identical
    assert summary["missing_predictions"] == []


def _run_error(capsys, argv):
    """Run, expect exit code 2 and the error as the one last line of stderr, no traceback."""
    assert run([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("flowseg-evaluate: error: ")
    return last


def test_prediction_for_unknown_id_is_an_error(tmp_path, truth_csv, capsys):
    preds = dict(PRED, zz=PRED["a"])
    err = _run_error(capsys, ["--truth", str(truth_csv), "--pred",
                              str(_pred_folder(tmp_path / "pred", preds)), "--out", str(tmp_path / "r")])
    assert "not in the truth" in err and "zz" in err
    assert not (tmp_path / "r").exists()

    submission = tmp_path / "s.csv"
    write_submission(submission, preds.items())
    err = _run_error(capsys, ["--truth", str(truth_csv), "--pred", str(submission),
                              "--out", str(tmp_path / "r")])
    assert "id zz" in err and "not in the ground truth" in err


def test_overlapping_submission_is_an_error(tmp_path, truth_csv, capsys):
    submission = tmp_path / "s.csv"
    submission.write_text(f"id,predicted\na,{rle_encode(PRED['a'])}\nb,1 5\na,12 2\n")
    err = _run_error(capsys, ["--truth", str(truth_csv), "--pred", str(submission),
                              "--out", str(tmp_path / "r")])
    assert "line 4 (id a)" in err and "overlaps" in err and "line(s) 2" in err


def test_malformed_inputs_are_errors(tmp_path, truth_csv, capsys):
    pred = str(_pred_folder(tmp_path / "pred"))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("id,annotation,width\na,1 2,10\n")
    assert "missing column" in _run_error(capsys, ["--truth", str(bad_csv), "--pred", pred,
                                                   "--out", str(tmp_path / "r")])
    bad_rle = tmp_path / "bad_rle.csv"
    bad_rle.write_text("id,annotation,width,height,cell_type\na,1 x,10,8,astro\n")
    assert "line 2" in _run_error(capsys, ["--truth", str(bad_rle), "--pred", pred,
                                           "--out", str(tmp_path / "r")])
    bad_sub = tmp_path / "sub.csv"
    bad_sub.write_text("id,predicted\na,5\n")
    assert "line 2 (id a)" in _run_error(capsys, ["--truth", str(truth_csv), "--pred", str(bad_sub),
                                                  "--out", str(tmp_path / "r")])


def test_missing_files_are_errors(tmp_path, truth_csv, capsys):
    err = _run_error(capsys, ["--truth", str(tmp_path / "nope.csv"), "--pred", str(tmp_path),
                              "--out", str(tmp_path / "r")])
    assert "nope.csv" in err and "no such file" in err
    err = _run_error(capsys, ["--truth", str(truth_csv), "--pred", str(tmp_path / "missing"),
                              "--out", str(tmp_path / "r")])
    assert "missing" in err and "no such file" in err


def test_prediction_of_wrong_shape_is_an_error(tmp_path, truth_csv, capsys):
    pred = _pred_folder(tmp_path / "pred", {"a": np.zeros((8, 11), np.int32)})
    err = _run_error(capsys, ["--truth", str(truth_csv), "--pred", str(pred),
                              "--out", str(tmp_path / "r")])
    assert "id a" in err and "(8, 11)" in err and "(8, 10)" in err


def test_real_train_csv_against_its_rasterised_labels(tmp_path):
    """The repo's real sample (19 cort instances, two overlapping) through the whole program."""
    from pathlib import Path

    from flowseg.io.sartorius import read_train_csv

    train_csv = Path(__file__).parents[1] / "data" / "sartorius" / "train.csv"
    annotations = read_train_csv(train_csv)
    submission = tmp_path / "submission.csv"
    write_submission(submission, ((i, a.labels()) for i, a in annotations.items()))
    assert main(["--truth", str(train_csv), "--pred", str(submission), "--out",
                 str(tmp_path / "r"), "--quiet"]) == 0
    row = _read_per_image(tmp_path / "r")["1bf60e3be6ce"]
    assert (row["cell_type"], row["n_true"], row["n_pred"]) == ("cort", "19", "19")
    assert float(row["score"]) == 1.0  # the 18 shared pixels cost no match


def test_predicted_cell_types_give_a_confusion_table(tmp_path, truth_csv, capsys):
    pred = _pred_folder(tmp_path / "pred")
    write_cell_types(pred, {"a": "astro", "b": "cort"})
    out = tmp_path / "r"
    assert main(["--truth", str(truth_csv), "--pred", str(pred), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    rows = _read_per_image(out)
    assert [rows[i]["pred_cell_type"] for i in "abc"] == ["astro", "cort", ""]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cell_type_confusion"] == {"astro": {"astro": 1, "cort": 0, "shsy5y": 0},
                                              "shsy5y": {"astro": 0, "cort": 1, "shsy5y": 0}}
    assert summary["cell_type_accuracy"] == 0.5
    assert "accuracy 0.5000" in captured.out and "true/pred" in captured.out


def test_no_sidecar_no_confusion(tmp_path, truth_csv, capsys):
    out = tmp_path / "r"
    main(["--truth", str(truth_csv), "--pred", str(_pred_folder(tmp_path / "pred")), "--out", str(out)])
    assert "true/pred" not in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["cell_type_confusion"] is None
    assert {row["pred_cell_type"] for row in _read_per_image(out).values()} == {""}


def test_sidecar_naming_unknown_images_is_an_error(tmp_path, truth_csv, capsys):
    pred = _pred_folder(tmp_path / "pred")
    write_cell_types(pred, {"a": "astro", "zz": "cort"})
    err = _run_error(capsys, ["--truth", str(truth_csv), "--pred", str(pred), "--out", str(tmp_path / "r")])
    assert "cell_types.csv" in err and "zz" in err


def test_ids_score_a_subset_of_the_truth(tmp_path, truth_csv):
    pred = _pred_folder(tmp_path / "pred", {"b": PRED["b"]})
    ids = tmp_path / "ids.txt"
    ids.write_text("b\n\nc\n")
    assert main(["--truth", str(truth_csv), "--pred", str(pred), "--out", str(tmp_path / "r"),
                 "--ids", str(ids), "--quiet"]) == 0
    rows = _read_per_image(tmp_path / "r")
    assert list(rows) == ["b", "c"]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["mean_ap"] == pytest.approx(0.1)
    split = tmp_path / "split"  # a data_prep split folder names the ids by its images
    write_folder_item(split, "b", np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.int32), "shsy5y")
    assert main(["--truth", str(truth_csv), "--pred", str(pred), "--out", str(tmp_path / "r2"),
                 "--ids", str(split), "--quiet"]) == 0
    assert list(_read_per_image(tmp_path / "r2")) == ["b"]


def test_ids_naming_unknown_images_are_an_error(tmp_path, truth_csv, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("b\nnope\n")
    err = _run_error(capsys, ["--truth", str(truth_csv), "--pred", str(_pred_folder(tmp_path / "pred")),
                              "--out", str(tmp_path / "r"), "--ids", str(ids)])
    assert "--ids" in err and "1 id(s) not in the truth, e.g. nope" in err
    (tmp_path / "empty.txt").write_text("\n")
    err = _run_error(capsys, ["--truth", str(truth_csv), "--pred", str(tmp_path / "pred"),
                              "--out", str(tmp_path / "r"), "--ids", str(tmp_path / "empty.txt")])
    assert "names no image" in err
    assert not (tmp_path / "r").exists()


def test_a_duplicated_truth_row_is_not_a_second_cell(tmp_path, capsys):
    """b annotated twice (same row) still scores 0.2; a's two overlapping instances stay two."""
    doubled = {**TRUTH, "b": ("shsy5y", TRUTH["b"][1] * 2)}
    out = tmp_path / "r"
    assert main(["--truth", str(_train_csv(tmp_path / "t.csv", doubled)), "--pred",
                 str(_pred_folder(tmp_path / "pred")), "--out", str(out), "--quiet"]) == 0
    rows = _read_per_image(out)
    assert (rows["b"]["n_true"], float(rows["b"]["score"])) == ("1", pytest.approx(EXPECTED["b"]))
    assert rows["a"]["n_true"] == "2"
    assert "dropped 1 exact duplicate row(s)" in capsys.readouterr().err
