"""Tests for flowseg.io.submission: writing and reading competition submission files."""

from __future__ import annotations

import numpy as np
import pytest

from flowseg.errors import InputError
from flowseg.io.rle import rle_encode
from flowseg.io.submission import label_rles, read_submission, write_submission

SHAPE = (6, 7)


def _labels(seed: int = 0, shape=SHAPE, n: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n + 1, size=shape).astype(np.int32)


@pytest.mark.parametrize("seed", range(4))
def test_label_rles_matches_rle_encode_per_instance(seed):
    labels = _labels(seed)
    labels[labels == 3] = 0  # a gap in the ids
    rles = label_rles(labels)
    expected = {int(k): rle_encode(labels == k) for k in np.unique(labels) if k > 0}
    assert rles == expected
    assert list(rles) == sorted(rles)


def test_label_rles_of_known_image():
    labels = np.array([[0, 2, 2, 1],
                       [1, 0, 0, 2]])
    assert label_rles(labels) == {1: "4 2", 2: "2 2 8 1"}
    assert label_rles(np.zeros((3, 3), np.uint8)) == {}


def test_write_known_file(tmp_path):
    path = tmp_path / "submission.csv"
    labels = np.array([[0, 2, 2, 1],
                       [1, 0, 0, 2]], np.uint16)
    n_rows = write_submission(path, [("a", labels), ("b", np.zeros((2, 4), np.int32))])
    assert n_rows == 3
    assert path.read_text() == "id,predicted\na,4 2\na,2 2 8 1\nb,\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]  # no temp file left


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_round_trip(tmp_path, dtype):
    path = tmp_path / "submission.csv"
    items = {"img1": _labels(1).astype(dtype), "img2": _labels(2, shape=(4, 9)).astype(dtype),
             "empty": np.zeros((3, 3), dtype)}
    write_submission(path, items.items())
    shapes = {k: v.shape for k, v in items.items()} | {"not_predicted": (2, 2)}
    back = read_submission(path, shapes)
    assert list(back) == ["img1", "img2", "empty"]
    for image_id, labels in items.items():
        assert back[image_id].dtype == np.int32
        # labels are renumbered 1..n in row order = increasing original label
        _, expected = np.unique(labels, return_inverse=True)
        np.testing.assert_array_equal(back[image_id], expected.reshape(labels.shape))


def test_write_failure_leaves_no_file(tmp_path):
    path = tmp_path / "submission.csv"
    with pytest.raises(TypeError, match="labels of id b.*float64"):
        write_submission(path, [("a", np.ones((2, 2), np.int32)), ("b", np.ones((2, 2)))])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("items", "error", "match"), [
    ([("a", np.ones((2, 2, 2), np.int32))], ValueError, r"labels of id a.*\(H, W\).*\(2, 2, 2\)"),
    ([("a", -np.ones((2, 2), np.int32))], ValueError, "labels of id a.*>= 0"),
    ([("a", [[1, 2]])], TypeError, "numpy array"),
    ([("a,b", np.ones((2, 2), np.int32))], ValueError, "image_id.*commas"),
    ([("", np.ones((2, 2), np.int32))], ValueError, "image_id.*non-empty"),
    ([("a", np.ones((2, 2), np.int32))] * 2, ValueError, "image_id.*'a' twice"),
])
def test_write_validation(tmp_path, items, error, match):
    with pytest.raises(error, match=match):
        write_submission(tmp_path / "s.csv", items)


def _write(tmp_path, text: str):
    path = tmp_path / "submission.csv"
    path.write_text(text)
    return path


def test_read_overlap_names_file_id_and_lines(tmp_path):
    path = _write(tmp_path, "id,predicted\na,1 3\nb,1 1\na,5 2\na,3 4\n")
    with pytest.raises(InputError, match=r"submission\.csv line 5 \(id a\).*line\(s\) 2, 4 "
                                         r"\(3 pixels\).*must not overlap"):
        read_submission(path, {"a": (3, 4), "b": (3, 4)})


def test_read_unknown_id(tmp_path):
    path = _write(tmp_path, "id,predicted\na,1 3\nzzz,1 1\n")
    with pytest.raises(InputError, match=r"line 3 \(id zzz\): id not in the ground truth"):
        read_submission(path, {"a": (3, 4)})


@pytest.mark.parametrize(("body", "match"), [
    ("a,1 x\n", r"line 2 \(id a\).*token 2"),
    ("a,1\n", r"line 2 \(id a\).*even number"),
    ("a,10 5\n", r"line 2 \(id a\).*past the last pixel"),
    ("a,1 2,3\n", r"line 2: expected 2 fields"),
])
def test_read_malformed_rows(tmp_path, body, match):
    path = _write(tmp_path, "id,predicted\n" + body)
    with pytest.raises(InputError, match=match):
        read_submission(path, {"a": (3, 4)})


def test_read_header_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="expected the header 'id,predicted', got 'id,rle'"):
        read_submission(_write(tmp_path, "id,rle\na,1 1\n"), {"a": (3, 4)})
    with pytest.raises(InputError, match="no such file"):
        read_submission(tmp_path / "missing.csv", {"a": (3, 4)})
    with pytest.raises(InputError, match="expected the header 'id,predicted', got 'an empty file'"):
        read_submission(_write(tmp_path, ""), {"a": (3, 4)})
    with pytest.raises(InputError, match=r"binary.csv line 2: not UTF-8"):
        (tmp_path / "binary.csv").write_bytes(b"id,predicted\n\xff\xfe,1 1\n")
        read_submission(tmp_path / "binary.csv", {"a": (3, 4)})


def test_read_blank_lines_and_empty_rows(tmp_path):
    path = _write(tmp_path, "id,predicted\r\na,\r\n\r\na,2 2\r\n")
    back = read_submission(path, {"a": (2, 2)})
    np.testing.assert_array_equal(back["a"], [[0, 1], [1, 0]])
