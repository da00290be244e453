from pathlib import Path

import numpy as np
import pytest

from flowseg.errors import InputError
from flowseg.io.rle import rle_decode, rle_decode_indices, rle_encode, rle_runs, runs_to_indices

SHARED_CSV = Path("/work/shared/data/sartorius/train.csv")


def test_decode_hand_case():
    mask = rle_decode("2 3 9 1", (3, 4))
    expected = np.array([[0, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=bool)
    assert mask.dtype == bool and mask.shape == (3, 4)
    np.testing.assert_array_equal(mask, expected)


def test_runs_are_zero_based_and_decode_to_the_indices():
    runs = rle_runs("2 3 9 1", (3, 4))
    assert runs.dtype == np.int64 and runs.tolist() == [[1, 3], [8, 1]]
    np.testing.assert_array_equal(runs_to_indices(runs), [1, 2, 3, 8])
    assert rle_runs("", (3, 4)).shape == (0, 2) and runs_to_indices(rle_runs("", (3, 4))).size == 0
    with pytest.raises(InputError, match="row 7"):
        rle_runs("2 3 4 1", (3, 4), name="row 7")  # overlapping runs


def test_decode_is_row_major_and_runs_wrap_rows():
    # a run of 3 starting at the last pixel of row 0 continues on row 1
    mask = rle_decode("4 3", (3, 4))
    assert np.flatnonzero(mask.ravel()).tolist() == [3, 4, 5]
    assert mask[0, 3] and mask[1, 0] and mask[1, 1]


def test_decode_indices_sorted_int64():
    idx = rle_decode_indices("1 2 5 1 12 1", (3, 4))
    assert idx.dtype == np.int64
    assert idx.tolist() == [0, 1, 4, 11]


def test_touching_runs_allowed_and_encode_merges_them():
    mask = rle_decode("1 2 3 2", (2, 4))
    assert mask.ravel().tolist() == [True] * 4 + [False] * 4
    assert rle_encode(mask) == "1 4"


@pytest.mark.parametrize("rle", ["", "   ", "\n"])
def test_empty_rle_is_empty_mask(rle):
    assert not rle_decode(rle, (5, 6)).any()


def test_encode_hand_cases():
    assert rle_encode(np.zeros((3, 3), bool)) == ""
    assert rle_encode(np.ones((2, 3), bool)) == "1 6"
    assert rle_encode(np.array([[0, 2], [0, 7]])) == "2 1 4 1"


def test_encode_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        rle_encode(np.zeros(5, bool))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("density", [0.01, 0.3, 0.9])
def test_round_trip_random_masks(seed, density):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 40, size=2))
    mask = rng.random(shape) < density
    rle = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(rle, shape), mask)
    assert rle_encode(rle_decode(rle, shape)) == rle


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "even number of integers"),
        ("1 2 x 3", r"token 3 is 'x'"),
        ("1 2.5", "only non-negative integers"),
        ("1 -2", "only non-negative integers"),
        ("nan 2", "only non-negative integers"),
        ("0 2", "start must be >= 1"),
        ("1 0", "length must be >= 1"),
        ("5 2 3 1", r"pair 2 \(3 1\): starts must be strictly increasing"),
        ("5 2 5 1", "starts must be strictly increasing"),
        ("1 3 3 1", r"pair 2 \(3 1\): run overlaps the previous run"),
        ("12 2", r"run ends past the last pixel of the image \(12 pixels\)"),
        ("13 1", "past the last pixel"),
        ("1 " + "9" * 25, "more than 18 digits"),
    ],
)
def test_decode_errors_name_input_and_problem(rle, message):
    with pytest.raises(InputError, match=message) as info:
        rle_decode(rle, (3, 4), name="train.csv line 17 (id abc)")
    assert str(info.value).startswith("train.csv line 17 (id abc): ")


@pytest.mark.parametrize("shape", [(0, 4), (3,), ("a", 2), None])
def test_decode_rejects_bad_shape(shape):
    with pytest.raises(InputError, match="shape"):
        rle_decode("1 1", shape)


def test_decode_rejects_non_string():
    with pytest.raises(InputError, match="must be a string"):
        rle_decode(float("nan"), (2, 2))


def _round_trip_csv(path):
    from flowseg.io.sartorius import read_train_csv

    n = 0
    for ann in read_train_csv(path).values():
        for i, rle in enumerate(ann.rles):
            assert rle_encode(rle_decode(rle, ann.shape)) == rle, (ann.id, i)
            n += 1
    return n


def test_round_trip_shipped_real_rows():
    assert _round_trip_csv(Path(__file__).parents[1] / "data" / "sartorius" / "train.csv") == 19


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CSV.exists(), reason="needs /work/shared/data/sartorius")
def test_round_trip_every_row_of_shared_train_csv():
    assert _round_trip_csv(SHARED_CSV) == 130
