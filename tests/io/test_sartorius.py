import csv
from pathlib import Path

import numpy as np
import pytest

from flowseg.errors import InputError
from flowseg.io.images import read_image
from flowseg.io.rle import rle_encode
from flowseg.io.sartorius import SartoriusAnnotation, check_image_shape, read_train_csv

SAMPLE = Path(__file__).parents[1] / "data" / "sartorius"
HEADER = ["id", "annotation", "width", "height", "cell_type", "plate_time"]


def _write_csv(path, rows, header=HEADER):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _row(image_id, rle, width=4, height=3, cell_type="astro"):
    return [image_id, rle, width, height, cell_type, ""]


@pytest.fixture
def tiny_csv(tmp_path):
    return _write_csv(tmp_path / "train.csv", [
        _row("b", "1 2"),
        _row("a", "5 3", cell_type="cort"),
        _row("b", "2 2 6 2"),     # overlaps the first instance of b at pixel 2
        _row("a", "12 1", cell_type="cort"),
    ])


def test_read_groups_by_id_in_order_of_first_appearance(tiny_csv):
    anns = read_train_csv(tiny_csv)
    assert list(anns) == ["b", "a"]
    b = anns["b"]
    assert b == SartoriusAnnotation("b", "astro", (3, 4), ("1 2", "2 2 6 2"))
    assert anns["a"].cell_type == "cort" and anns["a"].rles == ("5 3", "12 1")
    # the runs parsed while validating are kept (no second parse) and decode like the RLEs
    np.testing.assert_array_equal(b.runs[1], [[1, 2], [5, 2]])
    unparsed = SartoriusAnnotation("b", "astro", (3, 4), b.rles)
    for kept, parsed in zip(b.instance_indices(), unparsed.instance_indices()):
        np.testing.assert_array_equal(kept, parsed)


def test_overlapping_instances_kept_in_masks_and_indices(tiny_csv):
    b = read_train_csv(tiny_csv)["b"]
    masks = b.masks()
    assert masks.shape == (2, 3, 4) and masks.dtype == bool
    assert masks[0, 0, 1] and masks[1, 0, 1]          # pixel 2 (1-based) in both
    idx = b.instance_indices()
    assert [i.tolist() for i in idx] == [[0, 1], [1, 2, 5, 6]]
    assert all(i.dtype == np.int64 for i in idx)


def test_labels_give_overlap_to_smallest_instance(tiny_csv):
    labels = read_train_csv(tiny_csv)["b"].labels()
    assert labels.dtype == np.int32 and labels.shape == (3, 4)
    # instance 1 (2 px) is smaller than instance 2 (4 px): it keeps the shared pixel
    assert labels.ravel().tolist() == [1, 1, 2, 0, 0, 2, 2, 0, 0, 0, 0, 0]


def test_labels_fill_holes(tmp_path):
    ring = np.zeros((5, 5), bool)
    ring[1:4, 1:4] = True
    ring[2, 2] = False
    path = _write_csv(tmp_path / "t.csv", [_row("r", rle_encode(ring), 5, 5)])
    ann = read_train_csv(path)["r"]
    assert ann.labels()[2, 2] == 0
    filled = ann.labels(fill_holes=True)
    assert filled[2, 2] == 1 and filled.sum() == 9


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([_row("a", "1 2"), _row("a", "1 x")], r"t.csv line 3 \(id a\): RLE must contain only"),
        ([_row("a", "1 2", width="4.5")], r"line 2 \(id a\): width must be an integer, got '4.5'"),
        ([_row("a", "1 2", height="0")], "height must be positive"),
        ([_row("a", "1 2"), _row("a", "5 1", width=5)], r"line 3 \(id a\): height x width 3 x 5 differs"),
        ([_row("a", "1 2"), _row("a", "5 1", cell_type="cort")], "cell_type 'cort' differs"),
        ([_row("a", "")], "empty annotation"),
        ([_row("", "1 2")], "empty id"),
        ([_row("a", "1 2", cell_type="")], "empty cell_type"),
        ([_row("a", "12 2")], r"line 2 \(id a\): RLE pair 1 \(12 2\): run ends past"),
    ],
)
def test_read_errors_name_file_line_and_id(tmp_path, rows, message):
    path = _write_csv(tmp_path / "t.csv", rows)
    with pytest.raises(InputError, match=message):
        read_train_csv(path)


def test_missing_column_and_missing_file(tmp_path):
    path = _write_csv(tmp_path / "t.csv", [["a", "1 2", 4, 3]],
                      header=["id", "annotation", "width", "height"])
    with pytest.raises(InputError, match="missing column.*cell_type"):
        read_train_csv(path)
    with pytest.raises(InputError, match="cannot read train.csv"):
        read_train_csv(tmp_path / "nope.csv")


def test_check_image_shape():
    ann = SartoriusAnnotation("x", "cort", (3, 4), ("1 1",))
    check_image_shape(ann, np.zeros((3, 4)))
    check_image_shape(ann, np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match=r"id x: expected height x width 3 x 4.*\(4, 3\)"):
        check_image_shape(ann, np.zeros((4, 3)))


def test_real_sample_rows():
    anns = read_train_csv(SAMPLE / "train.csv")
    assert list(anns) == ["1bf60e3be6ce"]
    ann = anns["1bf60e3be6ce"]
    assert ann.cell_type == "cort" and ann.shape == (520, 704) and len(ann.rles) == 19
    image = read_image(SAMPLE / "train" / "1bf60e3be6ce.png")
    assert image.shape == (520, 704) and image.dtype == np.uint8
    check_image_shape(ann, image)
    masks = ann.masks()
    assert (masks.sum(0) > 1).sum() == 18        # the sample has overlapping instances
    labels = ann.labels()
    assert np.unique(labels[labels > 0]).size == 19
    np.testing.assert_array_equal(labels > 0, masks.any(0))
    # every overlapped pixel went to the smallest claimant
    areas = masks.sum((1, 2))
    for r, c in zip(*np.nonzero(masks.sum(0) > 1)):
        claimants = np.flatnonzero(masks[:, r, c])
        assert labels[r, c] == claimants[np.argmin(areas[claimants])] + 1



def test_exact_duplicate_rows_are_one_instance(tmp_path, caplog):
    path = _write_csv(tmp_path / "t.csv", [
        _row("a", "1 2"),
        _row("a", "5 3"),
        _row("a", "1  2"),          # row 2 again (spacing aside): the same instance
        _row("b", "1 2"),           # same annotation, other image: its own instance
        _row("a", "1 3"),           # overlaps row 2, but another instance: kept
        _row("a", "5 3"),
    ])
    with caplog.at_level("WARNING", logger="flowseg.io.sartorius"):
        anns = read_train_csv(path)
    assert anns["a"].rles == ("1 2", "5 3", "1 3") and anns["b"].rles == ("1 2",)
    assert len(anns["a"].instance_indices()) == 3
    assert "dropped 2 exact duplicate row(s)" in caplog.text
    assert "t.csv line 4 (id a)" in caplog.text


def test_a_duplicate_must_still_agree_with_its_image(tmp_path):
    path = _write_csv(tmp_path / "t.csv", [_row("a", "1 2"), _row("a", "1 2", cell_type="cort")])
    with pytest.raises(InputError, match="line 3 .*cell_type 'cort' differs"):
        read_train_csv(path)


@pytest.mark.parametrize("data, message", [
    (b"", r"t.csv: empty file; expected a csv with a header of at least id, annotation"),
    ("id,annotation,width,height,cell_type\n\u00e9,1 1,4,3,astro\n".encode("latin-1"),
     r"train.csv .*t.csv line 2: not UTF-8 text"),
])
def test_empty_and_non_utf8_files_name_the_file(tmp_path, data, message):
    (tmp_path / "t.csv").write_bytes(data)
    with pytest.raises(InputError, match=message):
        read_train_csv(tmp_path / "t.csv")
