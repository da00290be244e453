from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from cellpose import io as cellpose_io

from flowseg.errors import InputError
from flowseg.io.cellpose import (CELLPOSE_FLOW_SCALE, median_diameter, read_seg_labels,
                                 write_flows_tif, write_outlines_text, write_seg_npy)
from flowseg.io.images import read_labels, write_image
from flowseg.synthetic import make_synthetic


def _result(labels, maps=True):
    n = int(labels.max())
    rng = np.random.default_rng(0)
    return SimpleNamespace(
        labels=labels, cell_types=tuple("ab"[i % 2] for i in range(n)),
        scores=np.linspace(0, 1, n, dtype=np.float32), class_names=("a", "b"),
        flows=rng.normal(size=(2, *labels.shape)).astype(np.float32) if maps else None,
        cellprob=rng.normal(size=labels.shape).astype(np.float32) if maps else None)


@pytest.fixture
def labelled():
    image, labels = make_synthetic("round", shape=(64, 80), seed=0)
    return image, labels


def test_seg_npy_loads_with_cellposes_own_loaders(labelled, tmp_path):
    image, labels = labelled
    write_image(tmp_path / "cells.tif", (image * 1000).astype(np.uint16))
    result = _result(labels)
    write_seg_npy(tmp_path / "cells_seg.npy", result, filename=tmp_path / "cells.tif")
    np.testing.assert_array_equal(cellpose_io.imread(str(tmp_path / "cells_seg.npy")), labels)
    # cellpose training on GUI files: --mask_filter _seg.npy
    images, masks, names = cellpose_io.load_images_labels(str(tmp_path), mask_filter="_seg.npy")
    assert names == [str(tmp_path / "cells.tif")]
    np.testing.assert_array_equal(masks[0], labels)
    data = np.load(tmp_path / "cells_seg.npy", allow_pickle=True).item()
    assert {"masks", "outlines", "flows", "filename", "diameter", "chan_choose",
            "ismanual"} <= set(data)
    assert data["masks"].dtype == np.uint16 and data["filename"] == str(tmp_path / "cells.tif")
    assert data["cell_types"] == list(result.cell_types) and len(data["ismanual"]) == labels.max()
    assert data["flows"][0].shape == (1, 64, 80, 3) and data["flows"][1].shape == (1, 64, 80)
    np.testing.assert_allclose(data["flows"][4][:2], result.flows * CELLPOSE_FLOW_SCALE)
    np.testing.assert_array_equal(data["flows"][4][2], result.cellprob)
    assert data["diameter"] == pytest.approx(median_diameter(labels))


def test_reads_seg_files_cellpose_writes(labelled, tmp_path):
    image, labels = labelled
    flows = [np.zeros((64, 80, 3), np.uint8), np.zeros((2, 64, 80), np.float32),
             np.zeros((64, 80), np.float32)]
    cellpose_io.masks_flows_to_seg(image, labels.astype(np.uint16), flows,
                                   str(tmp_path / "cp.tif"))
    np.testing.assert_array_equal(read_seg_labels(tmp_path / "cp_seg.npy"), labels)
    np.testing.assert_array_equal(read_labels(tmp_path / "cp_seg.npy"), labels)


def test_seg_reader_runs_no_pickled_code(tmp_path):
    path = tmp_path / "evil_seg.npy"
    np.save(path, np.array({"masks": SimpleNamespace()}, dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="evil_seg.npy.*refusing to unpickle types.SimpleNamespace"):
        read_seg_labels(path)
    np.save(path, np.zeros((4, 4)))
    with pytest.raises(InputError, match="expected a pickled dict"):
        read_seg_labels(path)
    with pytest.raises(InputError, match="no such file"):
        read_seg_labels(tmp_path / "none_seg.npy")


def test_stack_seg_and_flows(labelled, tmp_path):
    _, labels = labelled
    stack = np.stack([labels, labels])
    result = SimpleNamespace(**{**vars(_result(labels)), "labels": stack,
                                "flows": np.zeros((2, 2, 64, 80), np.float32),
                                "cellprob": np.zeros((2, 64, 80), np.float32)})
    write_seg_npy(tmp_path / "s_seg.npy", result, filename="s.tif")
    data = np.load(tmp_path / "s_seg.npy", allow_pickle=True).item()
    assert data["masks"].shape == data["outlines"].shape == (2, 64, 80)
    assert data["flows"][4].shape == (4, 2, 64, 80)
    write_flows_tif(tmp_path / "s_flows.tif", result)
    assert tifffile.imread(tmp_path / "s_flows.tif").shape == (2, 4, 64, 80)


def test_outlines_text_is_cellposes(labelled, tmp_path):
    _, labels = labelled
    write_outlines_text(tmp_path / "ours_cp_outlines.txt", labels)
    from cellpose import utils

    cellpose_io.outlines_to_text(str(tmp_path / "theirs"), utils.outlines_list(labels, multiprocessing=False))
    ours = (tmp_path / "ours_cp_outlines.txt").read_text().splitlines()
    theirs = (tmp_path / "theirs_cp_outlines.txt").read_text().splitlines()
    assert len(ours) == len(theirs) == labels.max()
    for a, b in zip(ours, theirs):
        pairs = lambda line: set(zip(*[iter(map(int, line.split(",")))] * 2))  # noqa: E731
        assert pairs(a) == pairs(b)


def test_flows_tif_has_cellposes_layout(labelled, tmp_path):
    _, labels = labelled
    result = _result(labels)
    write_flows_tif(tmp_path / "x_flows.tif", result)
    data = tifffile.imread(tmp_path / "x_flows.tif")
    assert data.shape == (4, 64, 80) and data.dtype == np.float32
    np.testing.assert_array_equal(data[0], labels)
    np.testing.assert_allclose(data[1], 1 / (1 + np.exp(-result.cellprob)), rtol=1e-6)
    np.testing.assert_array_equal(data[2:], result.flows)
    with pytest.raises(ValueError, match="return_maps=True"):
        write_flows_tif(tmp_path / "y.tif", _result(labels, maps=False))
