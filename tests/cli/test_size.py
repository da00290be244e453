"""Tests for ``flowseg-evaluate size`` (flowseg.cli.size), called through evaluate's ``main``."""

from __future__ import annotations

import numpy as np
import pytest

from flowseg.api import model_size
from flowseg.cli.evaluate import main
from flowseg.io.folders import write_cell_types, write_folder_item
from flowseg.model.checkpoint import load_model
from flowseg.synthetic import make_synthetic
from tests.batch_fixtures import write_tiny_model


@pytest.fixture
def model_path(tmp_path):
    return write_tiny_model(tmp_path / "m.pt")  # classes round, spindly


@pytest.fixture
def data_dir(tmp_path):
    """A data_prep-like folder: train/ (4 images) and val/ (2)."""
    for split, seeds in (("train", (0, 1)), ("val", (5,))):
        types = {}
        for kind in ("round", "spindly"):
            for s in seeds:
                image, labels = make_synthetic(kind, shape=(64, 64), seed=s)
                write_folder_item(tmp_path / "data" / split, f"{kind}{s}",
                                  (image * 1000).astype(np.uint16), labels, kind)
                types[f"{kind}{s}"] = kind
        write_cell_types(tmp_path / "data" / split, types)
    return tmp_path / "data"


def test_size_writes_the_training_diameter_and_a_zoom_regression(tmp_path, model_path,
                                                                 data_dir, capsys):
    before = model_path.read_bytes()
    out = tmp_path / "sized.pt"
    assert main(["size", "--model", str(model_path), "--data", str(data_dir), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert model_path.read_bytes() == before
    size = model_size(load_model(out))
    assert size.can_estimate and set(size.class_diameters) == {"round", "spindly"}
    assert 5 < size.diameter < 20  # the synthetic cells' diameters
    assert size.fit_error >= 0
    printed = capsys.readouterr().out
    assert "training diameter" in printed and "validation images" in printed
    assert model_size(load_model(model_path)) is None


def test_size_in_place_and_user_errors(tmp_path, model_path, data_dir, capsys):
    assert main(["size", "--model", str(model_path), "--data", str(data_dir / "train"),
                 "--in-place", "--quiet"]) == 0
    assert model_size(load_model(model_path)) is not None
    assert capsys.readouterr().out == ""
    cases = [(["--out", str(model_path)], "--in-place"),
             (["--out", str(tmp_path / "x.pt"), "--val", str(tmp_path / "nope")], "no such folder")]
    for extra, message in cases:
        with pytest.raises((SystemExit, Exception)) as info:
            main(["size", "--model", str(model_path), "--data", str(data_dir), *extra])
        assert message in str(info.value)
