import csv
import json
import sys

import numpy as np
import pytest

from flowseg.cli._common import run_main
from flowseg.cli.segment import main
from flowseg.io.images import read_labels
from flowseg.io.submission import read_submission
from tests.batch_fixtures import write_images, write_tiny_model


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("segment")
    return write_tiny_model(root / "model.pt"), write_images(root / "images")


def _args(model, images, out, *extra):
    return [str(images), "--model", str(model), "--out", str(out), "--device", "cpu",
            "--chunk", "2", "--quiet", *extra]


def test_writes_masks_overlays_cell_types_submission_and_reports_failure(inputs, tmp_path, capsys):
    model, paths = inputs
    out, sub = tmp_path / "out", tmp_path / "submission.csv"
    code = main(_args(model, paths[0].parent, out, "--overlay", "--submission", str(sub)))
    assert code == 1  # bad.tif failed, the rest were written
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:3] == ["image", "type", "cells"]
    assert "5 segmented, 0 skipped (complete), 1 failed" in printed
    assert "failed: bad: " in printed
    names = [p.stem for p in paths if p.stem != "bad"]
    assert all((out / f"{n}_masks.tif").is_file() and (out / f"{n}_overlay.png").is_file()
               for n in names)
    with open(out / "cell_types.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == names and {r["cell_type"] for r in rows} <= {"round", "spindly"}
    with open(out / "failed.csv", newline="") as handle:
        assert [r["name"] for r in csv.DictReader(handle)] == ["bad"]
    masks = {n: read_labels(out / f"{n}_masks.tif") for n in names}
    decoded = read_submission(sub, {n: m.shape for n, m in masks.items()})
    for name, labels in masks.items():
        np.testing.assert_array_equal(decoded[name] > 0, labels > 0)

    # Re-run without the bad file: everything is skipped, the submission is still written.
    sub.unlink()
    good = [str(p) for p in paths if p.stem != "bad"]
    assert main([*good, "--model", str(model), "--out", str(out), "--device", "cpu", "--quiet",
                 "--overlay", "--submission", str(sub)]) == 0
    assert "0 segmented, 5 skipped (complete), 0 failed" in capsys.readouterr().out
    assert sub.is_file()
    with open(out / "failed.csv", newline="") as handle:  # bad.tif: still listed, not complete
        assert [r["name"] for r in csv.DictReader(handle)] == ["bad"]

    # Another --scale changes the outputs: nothing is skipped; masks keep the image size.
    assert main([*good, "--model", str(model), "--out", str(out), "--device", "cpu", "--quiet",
                 "--scale", "0.5"]) == 0
    assert "5 segmented, 0 skipped (complete), 0 failed" in capsys.readouterr().out
    assert all(read_labels(out / f"{n}_masks.tif").shape == masks[n].shape for n in names)

    # So does another --precision.
    assert main([*good, "--model", str(model), "--out", str(out), "--device", "cpu", "--quiet",
                 "--scale", "0.5", "--precision", "fp32"]) == 0
    assert "5 segmented, 0 skipped (complete), 0 failed" in capsys.readouterr().out


@pytest.mark.slow  # ~20 s on 2 cores; tests/test_batch.py covers the same path in the default run
def test_dask_local_cluster_matches_in_process(inputs, tmp_path, capsys):
    model, paths = inputs
    good = [p for p in paths if p.stem != "bad"]
    assert main(_args(model, good[0].parent, tmp_path / "a", "--submission",
                      str(tmp_path / "a.csv"))) == 1
    assert main(_args(model, good[0].parent, tmp_path / "b", "--dask", "local", "--workers", "2",
                      "--submission", str(tmp_path / "b.csv"))) == 1
    for p in good:
        np.testing.assert_array_equal(read_labels(tmp_path / "b" / f"{p.stem}_masks.tif"),
                                      read_labels(tmp_path / "a" / f"{p.stem}_masks.tif"))
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    assert (tmp_path / "a" / "cell_types.csv").read_text() == \
        (tmp_path / "b" / "cell_types.csv").read_text()


def test_user_errors_exit_2(inputs, tmp_path, capsys, monkeypatch):
    model, paths = inputs
    assert run_main("flowseg-segment", main, [str(tmp_path / "nope.tif"), "--out",
                                               str(tmp_path / "o")]) == 2
    assert "no such image file or folder" in capsys.readouterr().err
    assert run_main("flowseg-segment", main, _args(model, paths[0], tmp_path / "o", "--dask",
                                                   "local", "--workers", "0")) == 2
    assert "--workers: expected an int >= 1, got 0" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask were not installed
    assert run_main("flowseg-segment", main, _args(model, paths[0], tmp_path / "o", "--dask",
                                                   "local")) == 2
    assert "pip install 'flowseg[cluster]'" in capsys.readouterr().err


def test_demo_segments_the_shipped_samples_with_overlays(inputs, tmp_path, capsys):
    from flowseg.model.pretrained import sample_paths

    model, _ = inputs
    out = tmp_path / "demo"
    assert main(["--demo", "--model", str(model), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    names = [p.stem for p in sample_paths()]
    assert len(names) >= 2
    assert all((out / f"{n}_masks.tif").is_file() and (out / f"{n}_overlay.png").is_file() for n in names)
    assert f"{len(names)} segmented" in capsys.readouterr().out


def test_no_inputs_without_demo_is_an_error(tmp_path, capsys):
    assert run_main("flowseg-segment", main, ["--out", str(tmp_path / "o")]) == 2
    assert "--demo" in capsys.readouterr().err


def test_tile_zero_means_whole_images(inputs, tmp_path, capsys):
    model, paths = inputs
    out = tmp_path / "out"
    assert main([str(paths[0]), "--model", str(model), "--out", str(out), "--device", "cpu",
                 "--quiet", "--tile", "0"]) == 0
    record = json.loads((out / ".flowseg" / f"{paths[0].stem}.json").read_text())
    assert record["settings"]["tile"] is None
    assert run_main("flowseg-segment", main, [str(paths[0]), "--model", str(model), "--out",
                                               str(out), "--device", "cpu", "--tile", "31"]) == 2
    assert "tile: expected 0 (whole images, untiled) or a tile side in pixels that is a positive " \
           "multiple of 2" in capsys.readouterr().err


def test_a_second_run_into_the_same_folder_keeps_the_first_runs_results(inputs, tmp_path, capsys):
    model, paths = inputs
    out = tmp_path / "out"
    good = [p for p in paths if p.stem != "bad"]
    assert main([str(good[0]), str(paths[2]), "--model", str(model), "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 1
    assert main([*map(str, good[1:]), "--model", str(model), "--out", str(out), "--device", "cpu",
                 "--quiet"]) == 0
    with open(out / "cell_types.csv", newline="") as handle:
        assert [r["name"] for r in csv.DictReader(handle)] == [p.stem for p in good]
    with open(out / "failed.csv", newline="") as handle:
        assert [r["name"] for r in csv.DictReader(handle)] == ["bad"]
