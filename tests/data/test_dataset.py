import numpy as np
import pytest
import torch

from flowseg.config import AugmentConfig
from flowseg.data.dataset import (CropDataset, class_names_of, epoch_order, images_without_cells,
                                  load_folder, make_sample, mixed_epoch_order)
from flowseg.errors import InputError
from flowseg.io.folders import write_cell_types, write_folder_item


def _disk_sample(name, cell_type, shape=(40, 50)):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    labels = ((yy - 20) ** 2 + (xx - 25) ** 2 < 100).astype(np.int32)
    return make_sample(name, (labels * 200 + 10).astype(np.uint8), labels, cell_type)


def test_make_sample_normalises_and_checks_shapes():
    sample = _disk_sample("a", "x")
    assert sample.image.shape == (1, 40, 50) and sample.image.dtype == np.float32
    assert sample.labels.dtype == np.int32
    with pytest.raises(ValueError, match="b: labels shape"):
        make_sample("b", np.zeros((4, 5)), np.zeros((4, 6), int), "x")
    with pytest.raises(ValueError, match="c: expected non-negative integer labels"):
        make_sample("c", np.zeros((4, 5)), np.full((4, 5), -1), "x")


def test_crops_are_keyed_by_seed_epoch_and_index():
    samples = [_disk_sample("a", "x"), _disk_sample("b", "y")]
    dataset = CropDataset(samples, ("x", "y"), crop_size=16, augment=AugmentConfig(), seed=1)
    first = dataset[1]
    assert first[0].shape == (1, 16, 16) and first[1].shape == (16, 16) and first[2] == 1
    assert np.array_equal(dataset[1][0], first[0])
    dataset.set_epoch(1)
    assert not np.array_equal(dataset[1][0], first[0])


def test_unknown_cell_type_is_refused():
    with pytest.raises(ValueError, match=r"\['z'\]"):
        CropDataset([_disk_sample("a", "z")], ("x",), crop_size=8, augment=AugmentConfig(), seed=0)


def test_epoch_order_is_a_seeded_permutation():
    a = epoch_order(10, seed=0, epoch=3)
    assert sorted(a) == list(range(10))
    assert np.array_equal(a, epoch_order(10, seed=0, epoch=3))
    assert not np.array_equal(a, epoch_order(10, seed=0, epoch=4))


def test_load_folder_reads_cellpose_style_folder(tmp_path):
    labels = np.zeros((20, 24), np.int32)
    labels[5:10, 5:12] = 3
    for name, cell_type in [("b", "astro"), ("a", "cort")]:
        write_folder_item(tmp_path, name, (labels * 50).astype(np.uint16), labels, cell_type)
    write_cell_types(tmp_path, {"a": "cort", "b": "astro"})
    samples = load_folder(tmp_path)
    assert [s.name for s in samples] == ["a", "b"]
    assert class_names_of(samples) == ("astro", "cort")
    assert np.array_equal(samples[0].labels, labels)
    assert samples[0].image.max() == pytest.approx(1.0)


def test_balanced_epoch_order_draws_groups_equally_and_keys_repeats_apart():
    from flowseg.data.dataset import epoch_order

    groups = ["big"] * 18 + ["small"] * 2
    counts = {"big": 0, "small": 0}
    for epoch in range(50):
        order = epoch_order(20, seed=0, epoch=epoch, groups=groups)
        assert len(order) == 20 and len(set(order.tolist())) == 20  # repeats get distinct keys
        for i in order % 20:
            counts[groups[i]] += 1
    assert abs(counts["small"] / 1000 - 0.5) < 0.06
    np.testing.assert_array_equal(epoch_order(20, seed=0, epoch=3, groups=groups),
                                  epoch_order(20, seed=0, epoch=3, groups=groups))
    assert sorted(epoch_order(20, seed=0, epoch=3).tolist()) == list(range(20))


def test_load_folder_refuses_grayscale_and_colour_images_naming_them(tmp_path):
    gray = _disk_sample("gray", "x")
    labels = gray.labels
    write_folder_item(tmp_path, "gray", (labels * 200).astype(np.uint8), labels, "x")
    colour = np.stack([labels * 200, labels * 100, labels * 50]).astype(np.uint8)
    write_folder_item(tmp_path, "rgb", colour, labels, "x")
    with pytest.raises(InputError) as info:
        load_folder(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path}: expected every image to have the same number of")
    assert "1 channel(s) in gray.tif; 3 channel(s) in rgb.tif" in message


def test_images_without_cells_names_the_empty_samples():
    empty = make_sample("empty", np.ones((8, 8)), np.zeros((8, 8), int), "x")
    assert images_without_cells([_disk_sample("a", "x"), empty]) == ["empty"]


@pytest.mark.parametrize("groups", [None, ["a"] * 16 + ["b"] * 4])
@pytest.mark.parametrize("n_extra", [3, 40])
def test_mixed_epoch_order_is_deterministic_and_draws_the_fraction(groups, n_extra):
    n = 20
    order = mixed_epoch_order(n, n_extra, fraction=0.25, seed=1, epoch=2, groups=groups)
    assert np.array_equal(order, mixed_epoch_order(n, n_extra, fraction=0.25, seed=1, epoch=2,
                                                   groups=groups))
    assert not np.array_equal(order, mixed_epoch_order(n, n_extra, fraction=0.25, seed=1,
                                                       epoch=3, groups=groups))
    total = n + n_extra
    samples = order % total
    assert len(order) == n and len(set(order.tolist())) == n     # repeats get distinct keys
    assert (samples >= n).sum() == 5                               # round(0.25 * 20) extra draws
    extra = samples[samples >= n] - n
    assert len(set(extra.tolist())) == min(5, n_extra)            # cycles through the extras
    if groups is None:
        assert len(set(samples[samples < n].tolist())) == 15


def test_mixed_epoch_order_without_extras_is_epoch_order():
    groups = ["a"] * 7 + ["b"] * 3
    for n_extra, fraction in [(0, 0.5), (5, 0.0)]:
        for g in (None, groups):
            assert np.array_equal(mixed_epoch_order(10, n_extra, fraction=fraction, seed=0,
                                                    epoch=4, groups=g),
                                  epoch_order(10, seed=0, epoch=4, groups=g))
    with pytest.raises(ValueError, match="fraction"):
        mixed_epoch_order(10, 5, fraction=1.0, seed=0, epoch=0)


def test_crops_carry_the_ignore_mask_aligned_with_the_labels():
    yy, xx = np.mgrid[:40, :50]
    labels = ((yy // 10) * 5 + xx // 10).astype(np.int32) + 1      # blocks 1..20
    ignore = labels % 4 == 0
    sample = make_sample("p", labels.astype(np.uint8), labels, "x", ignore=ignore)
    dataset = CropDataset([sample, _disk_sample("q", "x")], ("x",), crop_size=24,
                          augment=AugmentConfig(), seed=3)
    for index in range(4):
        _, crop_labels, class_index, crop_ignore = dataset[2 * index]
        assert crop_ignore.dtype == torch.bool and class_index == 0
        inside = crop_labels > 0
        assert torch.equal(crop_ignore[inside], (crop_labels[inside] % 4 == 0))
        assert not crop_ignore[~inside].any()
    assert not dataset[1][3].any()                                  # no mask: nothing ignored
    with pytest.raises(ValueError, match="ignore mask"):
        make_sample("p", labels, labels, "x", ignore=ignore.astype(np.uint8))


def test_load_folder_reads_ignore_masks(tmp_path):
    labels = np.zeros((20, 24), np.int32)
    labels[5:10, 5:12] = 1
    ignore = np.zeros((20, 24), bool)
    ignore[12:, :] = True
    write_folder_item(tmp_path, "a", (labels * 50).astype(np.uint16), labels, "x", ignore=ignore)
    write_folder_item(tmp_path, "b", (labels * 50).astype(np.uint16), labels, "x")
    a, b = load_folder(tmp_path)
    assert np.array_equal(a.ignore, ignore) and b.ignore is None
