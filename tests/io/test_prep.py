from pathlib import Path

import numpy as np
import pytest

from flowseg.errors import InputError
from flowseg.io.prep import (LabelledImage, PrepItem, PrepResult, format_summary, prepare_dataset,
                             split_train_val)


def _split(counts, fraction, seed=0):
    names, types = [], []
    for cell_type, n in counts.items():
        names += [f"{cell_type}{i}" for i in range(n)]
        types += [cell_type] * n
    return split_train_val(names, types, val_fraction=fraction, seed=seed), dict(zip(names, types))


@pytest.mark.parametrize(("n", "fraction", "n_val"),
                         [(1, 0.2, 0), (2, 0.2, 1), (2, 0.9, 1), (10, 0.2, 2), (10, 0.0, 0),
                          (7, 0.5, 4), (3, 0.01, 1)])
def test_val_count_per_cell_type(n, fraction, n_val):
    split, _ = _split({"x": n, "y": 4}, fraction)
    assert sum(v == "val" for k, v in split.items() if k.startswith("x")) == n_val


def test_split_is_seeded_and_order_independent():
    names = [f"n{i}" for i in range(20)]
    types = ["a"] * 12 + ["b"] * 8
    s0 = split_train_val(names, types, val_fraction=0.25, seed=0)
    assert s0 == split_train_val(names[::-1], types[::-1], val_fraction=0.25, seed=0)
    assert any(split_train_val(names, types, val_fraction=0.25, seed=s) != s0 for s in range(1, 5))


def test_split_validation():
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        split_train_val(["a"], ["x"], val_fraction=1.0)
    with pytest.raises(ValueError, match="same length"):
        split_train_val(["a", "b"], ["x"], val_fraction=0.2)
    with pytest.raises(InputError, match="unique"):
        split_train_val(["a", "a"], ["x", "x"], val_fraction=0.2)


def test_prepare_dataset_counts_and_relabels(tmp_path):
    def item(name, cell_type, ids):
        labels = np.zeros((4, 4), np.int32)
        for k, i in enumerate(ids):
            labels[k, :2] = i
        return PrepItem(name, cell_type, lambda: LabelledImage(np.ones((4, 4), np.uint8), labels))

    items = [item("a", "x", [5, 9]), item("b", "x", [2]), item("c", "y", [1, 2, 3])]
    result = prepare_dataset(items, tmp_path / "out", val_fraction=0.5, seed=1)
    assert isinstance(result, PrepResult) and result.out == tmp_path / "out"
    assert result.counts["val"]["x"]["images"] == 1 and "y" in result.counts["train"]
    assert sum(c["instances"] for s in result.counts.values() for c in s.values()) == 6
    from flowseg.io.images import read_labels
    split_a = "val" if "a" in result.names["val"] else "train"
    assert np.unique(read_labels(tmp_path / "out" / split_a / "a_masks.tif")).tolist() == [0, 1, 2]
    with pytest.raises(InputError, match="no images"):
        prepare_dataset([], tmp_path / "empty")


def test_output_folder_gets_normal_permissions(tmp_path):
    items = [PrepItem("a", "x", lambda: LabelledImage(np.ones((2, 2), np.uint8), np.ones((2, 2), np.int32)))]
    prepare_dataset(items, tmp_path / "out", val_fraction=0)
    (tmp_path / "ref").mkdir()
    assert (tmp_path / "out").stat().st_mode == (tmp_path / "ref").stat().st_mode


def test_format_summary():
    result = PrepResult(Path("o"), {"train": {"cort": {"images": 2, "instances": 30},
                                              "astro": {"images": 1, "instances": 90}},
                                    "val": {"cort": {"images": 1, "instances": 19}}}, {})
    lines = format_summary(result).splitlines()
    assert lines[0].split() == ["cell_type", "train", "images", "train", "instances", "val", "images",
                                "val", "instances"]
    assert [line.split() for line in lines[1:]] == [["astro", "1", "90", "0", "0"],
                                                    ["cort", "2", "30", "1", "19"],
                                                    ["total", "3", "120", "1", "19"]]


def test_three_way_split_counts_and_train_only():
    names = [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(5)] + ["c0", "extra0", "extra1"]
    types = ["a"] * 20 + ["b"] * 5 + ["c", "b", "b"]
    split = split_train_val(names, types, val_fraction=0.1, test_fraction=0.2, seed=3,
                            train_only=["extra0", "extra1"])
    count = {(t, s): 0 for t in "abc" for s in ("train", "val", "test")}
    for name, cell_type in zip(names, types):
        count[cell_type, split[name]] += 1
    assert (count["a", "test"], count["a", "val"], count["a", "train"]) == (4, 2, 14)
    assert (count["b", "test"], count["b", "val"]) == (1, 1)  # round(0.5) = 0 -> at least 1
    assert split["c0"] == "train"  # a single image of a type stays in train
    assert split["extra0"] == split["extra1"] == "train"


def test_zero_test_fraction_keeps_the_two_way_split():
    names = [f"n{i}" for i in range(30)]
    types = ["a"] * 18 + ["b"] * 12
    two = split_train_val(names, types, val_fraction=0.25, seed=5)
    assert set(two.values()) == {"train", "val"}
    assert split_train_val(names, types, val_fraction=0.25, test_fraction=0.0, seed=5) == two


def test_train_only_images_take_no_part_in_the_draw():
    names = [f"n{i}" for i in range(10)]
    types = ["a"] * 10
    plain = split_train_val(names, types, val_fraction=0.2, test_fraction=0.2, seed=0)
    more = split_train_val(names + ["x"], types + ["a"], val_fraction=0.2, test_fraction=0.2,
                           seed=0, train_only={"x"})
    assert {k: v for k, v in more.items() if k != "x"} == plain


def test_three_way_split_validation():
    with pytest.raises(ValueError, match="test_fraction must be in"):
        split_train_val(["a", "b"], ["x", "x"], val_fraction=0.2, test_fraction=-0.1)
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction must be < 1"):
        split_train_val(["a", "b"], ["x", "x"], val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="train_only: names not among the images"):
        split_train_val(["a", "b"], ["x", "x"], val_fraction=0.2, train_only=["zz"])


def test_prepare_dataset_writes_a_test_folder_only_when_asked(tmp_path):
    def item(name):
        labels = np.zeros((4, 4), np.int32)
        labels[:2, :2] = 1
        return PrepItem(name, "x", lambda: LabelledImage(np.ones((4, 4), np.uint8), labels))

    items = [item(f"i{k}") for k in range(10)]
    result = prepare_dataset(items, tmp_path / "three", val_fraction=0.2, test_fraction=0.3)
    assert sorted(p.name for p in (tmp_path / "three").iterdir() if p.is_dir()) == ["test", "train", "val"]
    assert [len(result.names[s]) for s in ("train", "val", "test")] == [5, 2, 3]
    assert "test images" in format_summary(result)
    prepare_dataset(items, tmp_path / "two", val_fraction=0.2)
    assert not (tmp_path / "two" / "test").exists()
