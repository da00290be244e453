import numpy as np
import pytest
import tifffile

from flowseg.errors import InputError
from flowseg.io.folders import (FolderItem, check_out_folder, list_folder, read_cell_types,
                                read_ignore_mask, write_cell_types, write_folder_item)
from flowseg.io.images import read_image, read_labels


def _pair(seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 65535, (6, 8)).astype(np.uint16)
    labels = np.zeros((6, 8), np.int32)
    labels[1:3, 1:4], labels[4:, 5:] = 1, 2
    return image, labels


def test_write_then_list_and_read(tmp_path):
    written = {}
    for name, cell_type in [("b", "cort"), ("a", "astro")]:
        image, labels = _pair(len(name))
        item = write_folder_item(tmp_path, name, image, labels, cell_type)
        written[name] = (image, labels)
        assert item == FolderItem(name, tmp_path / f"{name}.tif", tmp_path / f"{name}_masks.tif", cell_type)
    write_cell_types(tmp_path, {"b": "cort", "a": "astro"})
    assert (tmp_path / "cell_types.csv").read_text().splitlines() == ["name,cell_type", "a,astro", "b,cort"]
    items = list_folder(tmp_path)
    assert [(i.name, i.cell_type) for i in items] == [("a", "astro"), ("b", "cort")]
    for item in items:
        np.testing.assert_array_equal(read_image(item.image_path), written[item.name][0])
        np.testing.assert_array_equal(read_labels(item.masks_path), written[item.name][1])


def test_no_sidecar_means_unknown_and_png_images_and_ignored_files(tmp_path):
    image, labels = _pair(0)
    from PIL import Image
    Image.fromarray(image.astype(np.uint8)).save(tmp_path / "p.png")
    tifffile.imwrite(tmp_path / "p_masks.tif", labels.astype(np.uint16))
    tifffile.imwrite(tmp_path / "p_flows.tif", np.zeros((3, 6, 8), np.float32), photometric="minisblack")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".p.tif.tmp.tif").write_bytes(b"")
    items = list_folder(tmp_path)
    assert items == [FolderItem("p", tmp_path / "p.png", tmp_path / "p_masks.tif", "unknown")]


def test_unpaired_files_refused(tmp_path):
    image, labels = _pair(0)
    write_folder_item(tmp_path, "a", image, labels, "x")
    (tmp_path / "a_masks.tif").unlink()
    with pytest.raises(InputError, match="image a.tif has no masks file"):
        list_folder(tmp_path)
    (tmp_path / "a.tif").rename(tmp_path / "b_masks.tif")
    with pytest.raises(InputError, match="masks file b_masks.tif has no image"):
        list_folder(tmp_path)


def test_duplicate_stems_refused(tmp_path):
    image, labels = _pair(0)
    write_folder_item(tmp_path, "a", image, labels, "x")
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(InputError, match="two files for 'a'"):
        list_folder(tmp_path)


def test_sidecar_must_match_images(tmp_path):
    image, labels = _pair(0)
    write_folder_item(tmp_path, "a", image, labels, "x")
    write_folder_item(tmp_path, "b", image, labels, "x")
    write_cell_types(tmp_path, {"a": "x"})
    with pytest.raises(InputError, match=r"missing \['b'\]"):
        list_folder(tmp_path)
    write_cell_types(tmp_path, {"a": "x", "b": "y", "c": "z"})
    with pytest.raises(InputError, match=r"not in folder \['c'\]"):
        list_folder(tmp_path)
    (tmp_path / "cell_types.csv").write_text("file,type\na,x\n")
    with pytest.raises(InputError, match="expected header 'name,cell_type'"):
        list_folder(tmp_path)
    (tmp_path / "cell_types.csv").write_text("name,cell_type\na,x\na,y\n")
    with pytest.raises(InputError, match="line 3: name 'a' listed twice"):
        read_cell_types(tmp_path / "cell_types.csv")


def test_missing_folder_and_bad_writes(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        list_folder(tmp_path / "nope")
    image, labels = _pair(0)
    with pytest.raises(ValueError, match="plain file stem"):
        write_folder_item(tmp_path, "x_masks", image, labels, "c")
    with pytest.raises(ValueError, match="plain file stem"):
        write_folder_item(tmp_path, "../x", image, labels, "c")
    with pytest.raises(ValueError, match="height and width"):
        write_folder_item(tmp_path, "x", image, labels[:, :3], "c")


def test_masks_only_folders(tmp_path):
    from flowseg.io.folders import folder_cell_types, list_masks

    image, labels = _pair(0)
    write_folder_item(tmp_path, "b", image, labels, "x")
    write_folder_item(tmp_path, "a", image, labels, "x")
    (tmp_path / "a.tif").unlink()
    assert list_masks(tmp_path) == {"a": tmp_path / "a_masks.tif", "b": tmp_path / "b_masks.tif"}
    items = list_folder(tmp_path, require_images=False)
    assert [(i.name, i.image_path, i.cell_type) for i in items] == [
        ("a", None, "unknown"), ("b", tmp_path / "b.tif", "unknown")]
    write_cell_types(tmp_path, {"a": "astro", "b": "cort"})
    assert [i.cell_type for i in list_folder(tmp_path, require_images=False)] == ["astro", "cort"]
    assert folder_cell_types(tmp_path, ["b", "a"]) == {"a": "astro", "b": "cort"}
    with pytest.raises(InputError, match=r"missing \['c'\], not in folder \['a'\]"):
        folder_cell_types(tmp_path, ["b", "c"])
    with pytest.raises(InputError, match="masks file a_masks.tif has no image"):
        list_folder(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        list_masks(tmp_path / "nope")


@pytest.mark.parametrize("data, message", [
    (b"", "expected header 'name,cell_type', got 'an empty file'"),
    ("name,cell_type\na,\u00e9\n".encode("latin-1"), r"cell_types.csv line 2: not UTF-8 text"),
])
def test_sidecar_empty_or_not_utf8_names_the_file(tmp_path, data, message):
    (tmp_path / "cell_types.csv").write_bytes(data)
    with pytest.raises(InputError, match=message):
        read_cell_types(tmp_path / "cell_types.csv")


def test_check_out_folder_refuses_files_and_creates_nothing(tmp_path):
    assert check_out_folder(tmp_path / "new" / "out") == tmp_path / "new" / "out"
    assert check_out_folder(tmp_path) == tmp_path
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"--out .*file: exists and is not a folder"):
        check_out_folder(tmp_path / "file")
    with pytest.raises(InputError, match=r"out_dir .*file/sub: cannot be created: .*file is not a "
                                         "folder"):
        check_out_folder(tmp_path / "file" / "sub", "out_dir")


def test_cellpose_seg_files_are_masks_files(tmp_path):
    from types import SimpleNamespace

    from flowseg.data.dataset import load_folder
    from flowseg.io.cellpose import write_seg_npy
    from flowseg.io.images import write_image

    image, labels = _pair(0)
    write_image(tmp_path / "a.tif", image)
    result = SimpleNamespace(labels=labels, cell_types=("x", "x"), scores=np.ones(2),
                             class_names=("x",), flows=None, cellprob=None)
    write_seg_npy(tmp_path / "a_seg.npy", result, filename=tmp_path / "a.tif")
    (item,) = list_folder(tmp_path)
    assert item.masks_path == tmp_path / "a_seg.npy"
    np.testing.assert_array_equal(load_folder(tmp_path)[0].labels, labels)
    # beside a _masks file (flowseg-segment --save-seg) the _seg.npy file, where cellpose's
    # GUI saves corrections, is the one read
    write_folder_item(tmp_path, "a", image, labels * 0, "x")
    assert list_folder(tmp_path)[0].masks_path == tmp_path / "a_seg.npy"
    # cellpose's (and --save-png / --save-flows) outputs are not masks files
    (tmp_path / "a_cp_masks.png").write_bytes(b"")
    (tmp_path / "a_flows.tif").write_bytes(b"")
    assert [i.name for i in list_folder(tmp_path)] == ["a"]


def test_ignore_masks_belong_to_their_item(tmp_path):
    image, labels = _pair(0)
    ignore = labels == 0
    item = write_folder_item(tmp_path, "a", image, labels, "x", ignore=ignore)
    write_folder_item(tmp_path, "b", image, labels, "x")
    write_cell_types(tmp_path, {"a": "x", "b": "x"})
    assert item.ignore_path == tmp_path / "a_ignore.tif"
    assert tifffile.imread(item.ignore_path).dtype == np.uint8
    a, b = list_folder(tmp_path)
    assert a == item and b.ignore_path is None
    assert np.array_equal(read_ignore_mask(a.ignore_path), ignore)
    (tmp_path / "a.tif").unlink()
    (tmp_path / "a_masks.tif").unlink()
    (tmp_path / "cell_types.csv").unlink()
    with pytest.raises(InputError, match="ignore mask a_ignore.tif has no masks file"):
        list_folder(tmp_path)


def test_ignore_mask_values_other_than_0_and_1_refused(tmp_path):
    tifffile.imwrite(tmp_path / "x_ignore.tif", np.full((4, 4), 2, np.uint8))
    with pytest.raises(InputError, match="x_ignore.tif: expected values 0"):
        read_ignore_mask(tmp_path / "x_ignore.tif")
    with pytest.raises(ValueError, match="ignore shape"):
        write_folder_item(tmp_path, "y", *_pair(0), "x", ignore=np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="_ignore"):
        write_folder_item(tmp_path, "z_ignore", *_pair(0), "x")
