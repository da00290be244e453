import csv
import json
import sys
from pathlib import Path

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
    assert "pip install 'dask[distributed]'" in capsys.readouterr().err


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


# ----------------------------------------------------------------------------- cellpose habits
SAVE = ["--save-seg", "--save-rois", "--save-outlines", "--save-png", "--save-flows", "--save-coco"]


def test_save_options_write_cellposes_files_and_a_rerun_adds_missing_ones(inputs, tmp_path, capsys):
    from cellpose import io as cellpose_io
    from roifile import roiread

    from flowseg.io.outputs import OUTPUT_SUFFIXES

    model, paths = inputs
    out = tmp_path / "out"
    assert main([str(paths[0]), "--model", str(model), "--out", str(out), "--device", "cpu",
                 "--quiet"]) == 0
    assert main([str(paths[0]), "--model", str(model), "--out", str(out), "--device", "cpu",
                 "--quiet", *SAVE]) == 0
    assert "1 segmented, 0 skipped" in capsys.readouterr().out  # the new outputs were missing
    name = paths[0].stem
    labels = read_labels(out / f"{name}_masks.tif")
    assert labels.max() > 0
    assert all((out / f"{name}{suffix}").is_file() for suffix in OUTPUT_SUFFIXES.values())
    np.testing.assert_array_equal(cellpose_io.imread(str(out / f"{name}_seg.npy")), labels)
    assert len(roiread(out / f"{name}_rois.zip")) == labels.max()
    assert len((out / f"{name}_cp_outlines.txt").read_text().splitlines()) == labels.max()
    np.testing.assert_array_equal(read_labels(out / f"{name}_cp_masks.png"), labels)
    assert main([str(paths[0]), "--model", str(model), "--out", str(out), "--device", "cpu",
                 "--quiet", *SAVE]) == 0
    assert "0 segmented, 1 skipped" in capsys.readouterr().out
    (out / f"{name}_rois.zip").unlink()
    assert main([str(paths[0]), "--model", str(model), "--out", str(out), "--device", "cpu",
                 "--quiet", "--save-rois"]) == 0
    assert "1 segmented, 0 skipped" in capsys.readouterr().out
    assert (out / f"{name}_rois.zip").is_file()


def test_an_rgb_file_is_segmented_on_the_chosen_channel(inputs, tmp_path, capsys):
    import tifffile

    from flowseg.io.images import read_image

    model, paths = inputs
    gray = read_image(paths[0])
    noise = np.random.default_rng(1).integers(0, 1000, gray.shape).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([noise, gray, noise[::-1]], -1),
                     photometric="rgb")
    out = tmp_path / "out"
    code = run_main("flowseg-segment", main, [str(tmp_path / "rgb.tif"), "--model", str(model),
                                              "--out", str(out), "--device", "cpu", "--quiet"])
    assert code == 1
    assert (f"failed: rgb: InputError: image {tmp_path / 'rgb.tif'}: the model takes 1 "
            "channel(s), got 3; pick with --channel N") in capsys.readouterr().out
    assert main([str(tmp_path / "rgb.tif"), str(paths[0]), "--model", str(model), "--out",
                 str(out), "--device", "cpu", "--quiet", "--channel", "2", "--save-seg"]) == 0
    np.testing.assert_array_equal(read_labels(out / "rgb_masks.tif"),
                                  read_labels(out / f"{paths[0].stem}_masks.tif"))
    seg = np.load(out / "rgb_seg.npy", allow_pickle=True).item()
    assert seg["chan_choose"] == [2, 0]


def test_a_z_stack_becomes_a_3d_label_tif_with_ids_kept_across_planes(tmp_path, capsys):
    import tifffile

    import flowseg
    from flowseg.io.images import read_image

    crop = read_image(flowseg.sample_paths()[0])[100:228, 100:228]
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([np.roll(crop, z, axis=1) for z in range(3)]),
                     imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "out"
    assert main([str(tmp_path / "stack.tif"), "--out", str(out), "--device", "cpu", "--quiet",
                 "--tile", "0", "--save-seg", "--save-png"]) == 0
    labels = read_labels(out / "stack_masks.tif", allow_3d=True)
    assert labels.shape == (3, 128, 128) and labels.max() > 5
    planes = [set(np.unique(p)[1:]) for p in labels]
    # the planes are the same cells shifted by 1-2 px: nearly every cell keeps its id in all
    # three (a cell at the border may leave); unlinked planes would share no id
    assert len(set.intersection(*planes)) >= 0.8 * labels.max()
    assert np.load(out / "stack_seg.npy", allow_pickle=True).item()["masks"].shape == (3, 128, 128)
    assert not (out / "stack_cp_masks.png").exists()  # a 2-D format: not for stacks
    assert main([str(tmp_path / "stack.tif"), "--out", str(out), "--device", "cpu", "--quiet",
                 "--tile", "0", "--save-seg", "--save-png"]) == 0
    assert "0 segmented, 1 skipped" in capsys.readouterr().out
    assert main([str(tmp_path / "stack.tif"), "--out", str(out), "--device", "cpu", "--quiet",
                 "--tile", "0", "--stitch-threshold", "0"]) == 0
    unlinked = read_labels(out / "stack_masks.tif", allow_3d=True)
    assert unlinked.max() == sum(len(np.unique(p)) - 1 for p in unlinked)


def test_thresholds_per_type_or_for_all(inputs, tmp_path, capsys):
    model, paths = inputs
    args = [str(paths[0]), "--model", str(model), "--device", "cpu", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a"), "--min-size", "100000"]) == 0
    assert read_labels(tmp_path / "a" / f"{paths[0].stem}_masks.tif").max() == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--min-size", "round:100000,spindly:100000",
                 "--cellprob-threshold", "-6", "--flow-threshold", "0", "--exclude-on-edges"]) == 0
    assert read_labels(tmp_path / "b" / f"{paths[0].stem}_masks.tif").max() == 0
    record = json.loads((tmp_path / "b" / ".flowseg" / f"{paths[0].stem}.json").read_text())
    assert record["settings"]["segment"] == {
        "min_size": {"round": 100000, "spindly": 100000}, "cellprob_threshold": -6.0,
        "flow_threshold": 0.0, "exclude_on_edges": True}
    capsys.readouterr()
    assert run_main("flowseg-segment", main, [*args, "--out", str(tmp_path / "c"),
                                              "--min-size", "rund:3"]) == 2
    assert "unknown cell type(s) ['rund']; the model's types are round, spindly" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "c"), "--min-size", "round=3"])
    assert "TYPE:VALUE pairs (e.g. astro:0.5,cort:0.2), got 'round=3'" in capsys.readouterr().err


def test_version_help_and_normalisation_options(inputs, tmp_path, capsys):
    import torch

    with pytest.raises(SystemExit):
        main(["--version"])
    printed = capsys.readouterr().out
    assert f"torch {torch.__version__}" in printed and "CUDA " in printed and "flowseg " in printed
    with pytest.raises(SystemExit):
        main(["--help"])
    printed = capsys.readouterr().out
    assert "(default: 8)" in printed and "--save-seg" in printed and "(default: False)" not in printed
    model, paths = inputs
    assert main([str(paths[0]), "--model", str(model), "--out", str(tmp_path), "--device", "cpu",
                 "--quiet", "--no-norm"]) == 0
    assert main([str(paths[0]), "--model", str(model), "--out", str(tmp_path), "--device", "cpu",
                 "--quiet", "--norm-percentile", "2", "98"]) == 0
    assert "1 segmented, 0 skipped" in capsys.readouterr().out.splitlines()[-1]
    record = json.loads((tmp_path / ".flowseg" / f"{paths[0].stem}.json").read_text())
    assert record["settings"]["normalize"] == [2.0, 98.0]


def test_two_model_flags_segment_with_their_ensemble(inputs, tmp_path, capsys):
    model, paths = inputs
    good = [str(p) for p in paths if p.stem != "bad"]
    options = ["--device", "cpu", "--quiet", "--tile", "32", "--tta"]
    assert main([*good, "--model", str(model), "--out", str(tmp_path / "one"), *options]) == 0
    out = tmp_path / "two"
    twice = ["--model", str(model), "--model", str(model)]
    assert main([*good, *twice, "--out", str(out), *options]) == 0
    assert "2 --model files: segmenting with their ensemble" in capsys.readouterr().err
    for p in map(Path, good):  # an ensemble of a model with itself is that model
        np.testing.assert_array_equal(read_labels(out / f"{p.stem}_masks.tif"),
                                      read_labels(tmp_path / "one" / f"{p.stem}_masks.tif"))
    record = json.loads((out / ".flowseg" / f"{Path(good[0]).stem}.json").read_text())
    assert isinstance(record["settings"]["model"], list) and len(record["settings"]["model"]) == 2
    assert main([*good, *twice, "--out", str(out), *options]) == 0
    assert "0 segmented, 5 skipped" in capsys.readouterr().out
    assert main([*good, "--model", str(model), "--out", str(out), *options]) == 0
    assert "5 segmented, 0 skipped" in capsys.readouterr().out  # another model: redone


def test_the_models_tta_choice_applies_unless_a_flag_says_otherwise(inputs, tmp_path):
    import tifffile

    from flowseg.model.checkpoint import load_model, save_model

    model, paths = inputs
    flips = load_model(model)
    flips.tta = True
    save_model(tmp_path / "flips.pt", flips)
    good = [str(p) for p in paths if p.stem != "bad"][:2]
    runs = {}
    for name, flag in [("model", []), ("on", ["--tta"]), ("off", ["--no-tta"])]:
        assert main([*good, "--model", str(tmp_path / "flips.pt"), "--out", str(tmp_path / name),
                     "--device", "cpu", "--quiet", "--tile", "32", "--save-flows", *flag]) == 0
        runs[name] = [tifffile.imread(tmp_path / name / f"{Path(p).stem}_flows.tif") for p in good]
    for a, b, c in zip(runs["model"], runs["on"], runs["off"]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(runs["model"], runs["off"]))


def test_diameter_sets_the_scale_and_each_record_keeps_the_choice(inputs, tmp_path, capsys):
    from flowseg.model.checkpoint import load_model, save_model
    from flowseg.size import SizeModel
    from flowseg.training.size_fit import attach_size_model

    model, paths = inputs
    sized = tmp_path / "sized.pt"
    save_model(sized, attach_size_model(load_model(model), SizeModel(diameter=12.0)))
    out = tmp_path / "out"
    assert main([str(paths[0]), "--model", str(sized), "--out", str(out), "--device", "cpu",
                 "--diameter", "24"]) == 0
    record = json.loads((out / ".flowseg" / "img0.json").read_text())
    assert record["scale"] == 0.5 and record["diameter"] == 24.0
    assert record["settings"]["diameter"] == 24.0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[-2:] == ["scale", "diameter"]
    assert table[1].split()[-2:] == ["0.5", "24.0"]
    # Without --diameter or --scale, a model that cannot estimate sizes runs at scale 1.
    assert main([str(paths[0]), "--model", str(model), "--out", str(tmp_path / "o2"),
                 "--device", "cpu", "--quiet"]) == 0
    assert json.loads((tmp_path / "o2" / ".flowseg" / "img0.json").read_text())["scale"] == 1.0
    # --diameter needs a model that records its training diameter; not both size options.
    assert run_main("flowseg-segment", main, [str(paths[0]), "--model", str(model), "--out",
                                               str(tmp_path / "o3"), "--diameter", "20"]) == 2
    assert "records no training cell diameter" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(paths[0]), "--out", str(tmp_path / "o4"), "--diameter", "20", "--scale", "1"])
