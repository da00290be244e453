import csv
import dataclasses
import sys

import numpy as np
import pytest
from PIL import Image

from flowseg.batch import (FAILED_FILE, RECORD_DIR, BatchConfig, ImageOutcome, local_client,
                           masks_path, merge_reports, segment_files)
from flowseg.errors import InputError
from flowseg.io.images import read_labels, write_image
from tests.batch_fixtures import write_images, write_tiny_model
from tests.damaged_files import DAMAGE, damage

CONFIG = BatchConfig(device="cpu", chunk=2, overlay=True, worker_threads=1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    return write_tiny_model(root / "model.pt"), write_images(root / "images")


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def _masks(out, paths):
    return {p.stem: read_labels(masks_path(out, p.stem)) for p in paths if p.stem != "bad"}


def test_in_process_writes_outputs_reports_failure_and_skips_on_rerun(inputs, tmp_path):
    model, paths = inputs
    result = segment_files(paths, tmp_path, model_path=model, config=CONFIG)
    assert [o.status for o in result.outcomes] == ["done"] * 2 + ["failed"] + ["done"] * 3
    assert result.failed[0].name == "bad" and "bad.tif" in result.failed[0].reason
    assert "\n" not in result.failed[0].reason
    masks = _masks(tmp_path, paths)
    assert all(m.shape == (64, 80) for m in masks.values())
    assert sum(int(m.max()) for m in masks.values()) > 0  # the tiny model finds instances
    assert all((tmp_path / f"{name}_overlay.png").is_file() for name in masks)
    rows = _rows(tmp_path / "cell_types.csv")
    assert rows[0] == ["name", "cell_type"]
    assert {r[0]: r[1] for r in rows[1:]} == {o.name: o.cell_type for o in result.outcomes
                                               if o.status == "done"}
    assert _rows(tmp_path / FAILED_FILE)[1][:2] == ["bad", str(paths[2])]

    # Re-run: complete images are skipped (with their recorded type and counts).
    mtimes = {n: masks_path(tmp_path, n).stat().st_mtime_ns for n in masks}
    again = segment_files(paths, tmp_path, model_path=model, config=CONFIG)
    assert [o.status for o in again.outcomes if o.name != "bad"] == ["skipped"] * 5
    assert [(o.cell_type, o.counts) for o in again.outcomes] == \
        [(o.cell_type, o.counts) for o in result.outcomes]
    assert mtimes == {n: masks_path(tmp_path, n).stat().st_mtime_ns for n in masks}

    # An incomplete image (mask gone, or overlay missing when asked) is redone.
    masks_path(tmp_path, "img0").unlink()
    (tmp_path / "img1_overlay.png").unlink()
    third = segment_files(paths[:2], tmp_path, model_path=model, config=CONFIG)
    assert [o.status for o in third.outcomes] == ["done", "done"]
    np.testing.assert_array_equal(read_labels(masks_path(tmp_path, "img0")), masks["img0"])
    # The reports cover the folder, not the run: the other images keep their cell types, and
    # bad.tif (not in this run, still not complete) stays in failed.csv.
    assert [r[0] for r in _rows(tmp_path / "cell_types.csv")[1:]] == sorted(masks)
    assert [r[0] for r in _rows(tmp_path / FAILED_FILE)[1:]] == ["bad"]


def test_local_dask_cluster_equals_in_process_and_skips_on_rerun(inputs, tmp_path):
    model, paths = inputs
    local = segment_files(paths, tmp_path / "local", model_path=model, config=CONFIG)
    with local_client(2) as client:
        dask = segment_files(paths, tmp_path / "dask", model_path=model, client=client,
                             config=CONFIG)
        rerun = segment_files(paths, tmp_path / "dask", model_path=model, client=client,
                              config=CONFIG)
    assert dask.outcomes == local.outcomes  # same statuses, types, counts and failure reason
    for name, labels in _masks(tmp_path / "local", paths).items():
        np.testing.assert_array_equal(read_labels(masks_path(tmp_path / "dask", name)), labels)
    assert _rows(tmp_path / "dask" / "cell_types.csv") == _rows(tmp_path / "local" / "cell_types.csv")
    assert [o.status for o in rerun.outcomes] == ["skipped"] * 2 + ["failed"] + ["skipped"] * 3


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """The tiny model with its weights moved a little: another network of the same types."""
    import torch

    from flowseg.model.checkpoint import load_model, save_model

    path = write_tiny_model(tmp_path_factory.mktemp("other") / "other.pt")
    model = load_model(path)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return save_model(path, model)


def test_a_list_of_models_segments_with_their_ensemble(inputs, tmp_path):
    model, paths = inputs
    single = segment_files(paths, tmp_path / "one", model_path=model, config=CONFIG)
    double = segment_files(paths, tmp_path / "two", model_path=[model, model], config=CONFIG)
    assert double.outcomes == single.outcomes
    for name, labels in _masks(tmp_path / "one", paths).items():
        np.testing.assert_array_equal(read_labels(masks_path(tmp_path / "two", name)), labels)


@pytest.mark.slow  # a Dask cluster (~15 s); the list itself is covered in-process above
def test_a_list_of_models_on_a_dask_cluster_equals_in_process(inputs, other_model, tmp_path):
    model, paths = inputs
    local = segment_files(paths, tmp_path / "local", model_path=[model, other_model],
                          config=CONFIG)
    with local_client(2) as client:
        dask = segment_files(paths, tmp_path / "dask", model_path=[model, other_model],
                             client=client, config=CONFIG)
    assert dask.outcomes == local.outcomes
    for name, labels in _masks(tmp_path / "local", paths).items():
        np.testing.assert_array_equal(read_labels(masks_path(tmp_path / "dask", name)), labels)


def test_dask_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'dask\[distributed\]'"):
        with local_client(1):
            pass


def test_config_and_paths_are_checked(inputs, tmp_path):
    model, paths = inputs
    with pytest.raises(ValueError, match="chunk: expected an int >= 1, got 0"):
        BatchConfig(chunk=0)
    with pytest.raises(ValueError, match="precision: expected one of"):
        BatchConfig(precision="fp16")
    with pytest.raises(ValueError, match="share the name"):
        segment_files([paths[0], tmp_path / "x" / paths[0].name], tmp_path, model_path=model)


def test_changed_settings_redo_complete_images(inputs, tmp_path):
    model, paths = inputs
    first = segment_files(paths[:1], tmp_path, model_path=model, config=CONFIG)
    same = segment_files(paths[:1], tmp_path, model_path=model, config=CONFIG)
    tta = segment_files(paths[:1], tmp_path, model_path=model,
                        config=BatchConfig(device="cpu", overlay=True, tta=True))
    forced = segment_files(paths[:1], tmp_path, model_path=model, config=CONFIG, overwrite=True)
    fp32 = segment_files(paths[:1], tmp_path, model_path=model,
                         config=dataclasses.replace(CONFIG, precision="fp32"))
    assert [r.outcomes[0].status for r in (first, same, tta, forced, fp32)] == \
        ["done", "skipped", "done", "done", "done"]


# ----------------------------------------------------------------------------- reports
def _outcome(name, status, cell_type="round", reason=""):
    return ImageOutcome(name, f"/in/{name}.tif", status, cell_type if status != "failed" else "",
                        reason=reason)


def test_merge_reports_cover_the_folder_not_the_run():
    outcomes = [_outcome("a", "done", "spindly"), _outcome("b", "failed", reason="R: b"),
                _outcome("c", "skipped")]
    types, failed = merge_reports(
        outcomes,
        recorded={"a": "round", "b": "round", "c": "round", "d": "round", "e": "spindly"},
        old_types={"a": "round", "d": "spindly", "f": "round", "gone": "round"},
        old_failed=[("b", "/in/b.tif", "old"), ("e", "/in/e.tif", "old"),
                    ("g", "/in/g.tif", "R: g")],
        masks={"a", "b", "c", "d", "e", "f"})
    # a: this run's type; b failed now; d, e: records win; f: an old row whose mask is there;
    # gone: an old row without a mask.
    assert types == {"a": "spindly", "c": "round", "d": "round", "e": "spindly", "f": "round"}
    # e is complete now (dropped); g is still not complete (kept); b: this run's reason.
    assert failed == [("g", "/in/g.tif", "R: g"), ("b", "/in/b.tif", "R: b")]


def test_second_run_with_other_images_keeps_the_first_runs_reports(inputs, tmp_path):
    model, paths = inputs
    first = segment_files(paths[:3], tmp_path, model_path=model, config=CONFIG)  # img0 img1 bad
    second = segment_files(paths[3:], tmp_path, model_path=model, config=CONFIG)  # img2 img3 img4
    assert [o.status for o in second.outcomes] == ["done"] * 3
    types = {o.name: o.cell_type for o in (*first.outcomes, *second.outcomes) if o.name != "bad"}
    assert dict(_rows(tmp_path / "cell_types.csv")[1:]) == dict(sorted(types.items()))
    assert [r[0] for r in _rows(tmp_path / FAILED_FILE)[1:]] == ["bad"]

    # bad.tif repaired (a good image under that name): done now, gone from failed.csv.
    fixed = tmp_path / "fixed" / "bad.tif"
    fixed.parent.mkdir()
    fixed.write_bytes(paths[0].read_bytes())
    assert segment_files([fixed], tmp_path, model_path=model, config=CONFIG).failed == []
    assert not (tmp_path / FAILED_FILE).exists()
    assert [r[0] for r in _rows(tmp_path / "cell_types.csv")[1:]] == \
        ["bad", "img0", "img1", "img2", "img3", "img4"]


def test_unreadable_old_reports_are_rebuilt_from_the_records(inputs, tmp_path, caplog):
    model, paths = inputs
    segment_files(paths[:2], tmp_path, model_path=model, config=CONFIG)
    (tmp_path / "cell_types.csv").write_bytes(b"name,cell_type\n\xff\xfe\n")
    (tmp_path / FAILED_FILE).write_bytes(b"")
    segment_files(paths[3:4], tmp_path, model_path=model, config=CONFIG)
    assert [r[0] for r in _rows(tmp_path / "cell_types.csv")[1:]] == ["img0", "img1", "img2"]
    assert "cell_types.csv line 2: not UTF-8" in caplog.text
    assert not (tmp_path / FAILED_FILE).exists()


# ----------------------------------------------------------------------------- damaged outputs
@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_output_mask_or_record_is_redone(inputs, tmp_path, how):
    model, paths = inputs
    segment_files(paths[:2], tmp_path, model_path=model, config=CONFIG)
    good = read_labels(masks_path(tmp_path, "img0"))
    damage(masks_path(tmp_path, "img0"), how)
    damage(tmp_path / RECORD_DIR / "img1.json", how)
    again = segment_files(paths[:2], tmp_path, model_path=model, config=CONFIG)
    assert [o.status for o in again.outcomes] == ["done", "done"]
    np.testing.assert_array_equal(read_labels(masks_path(tmp_path, "img0")), good)


# ----------------------------------------------------------------------------- bad inputs
def _bad_channel_images(directory):
    """Images a 1-channel model cannot take: colour (RGB, RGBA), 2 channels, a z-stack."""
    rng = np.random.default_rng(0)
    directory.mkdir()
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(directory / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (64, 80, 4), dtype=np.uint8)).save(directory / "rgba.png")
    write_image(directory / "two.tif", rng.integers(0, 999, (2, 64, 80)).astype(np.uint16))
    write_image(directory / "zstack.tif", rng.integers(0, 999, (5, 64, 80)).astype(np.uint16))
    return sorted(directory.iterdir())


@pytest.mark.parametrize("chunk", [1, 8])
def test_wrong_channels_fail_their_image_only(inputs, tmp_path, chunk):
    model, paths = inputs
    bad = _bad_channel_images(tmp_path / "bad")
    config = dataclasses.replace(CONFIG, chunk=chunk)
    result = segment_files([paths[0], *bad, paths[1]], tmp_path / "out", model_path=model,
                           config=config)
    assert [o.status for o in result.outcomes] == ["done"] + ["failed"] * 4 + ["done"]
    for outcome, path in zip(result.failed, bad):
        assert f"image {path}: the model takes 1 channel(s)" in outcome.reason
        assert "images[0]" not in outcome.reason
    rows = _rows(tmp_path / "out" / FAILED_FILE)[1:]
    assert [r[:2] for r in rows] == [[p.stem, str(p)] for p in bad]


def test_batch_config_checks_ints_and_tiles(inputs, tmp_path):
    with pytest.raises(TypeError, match="batch_size: expected an int, got float 2.5"):
        BatchConfig(batch_size=2.5)
    with pytest.raises(TypeError, match="chunk: expected an int, got bool True"):
        BatchConfig(chunk=True)
    with pytest.raises(TypeError, match="worker_threads: expected an int"):
        BatchConfig(worker_threads=1.0)
    with pytest.raises(TypeError, match=r"tta: expected a bool or None \(the model's choice\), "
                                        r"got 1"):
        BatchConfig(tta=1)
    assert BatchConfig(tile=0).tile is None and BatchConfig(tile=None).tile is None
    with pytest.raises(ValueError, match=r"tile: expected 0 \(whole images, untiled\) or a "
                                         r"positive tile side in pixels, e.g. 256; got -1"):
        BatchConfig(tile=-1)
    model, paths = inputs
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="positive multiple of 2 .*got 33"):  # widths (8, 16)
        segment_files(paths[:1], out, model_path=model, config=BatchConfig(tile=33))
    assert not out.exists()  # refused before anything was written
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="out_dir .*file: exists and is not a folder"):
        segment_files(paths[:1], tmp_path / "file", model_path=model, config=CONFIG)


@pytest.mark.parametrize("chunk", [1, 3])
def test_an_image_that_cannot_be_segmented_fails_alone(inputs, tmp_path, monkeypatch, chunk):
    import flowseg.api

    model, paths = inputs
    segment = flowseg.api.segment

    def fails_on_64x64(images, *args, **kwargs):
        if any(image.shape == (64, 64) for image in images):
            raise RuntimeError("no room for this image")
        return segment(images, *args, **kwargs)

    monkeypatch.setattr(flowseg.api, "segment", fails_on_64x64)
    odd = tmp_path / "odd.tif"
    write_image(odd, np.zeros((64, 64), np.uint16))
    result = segment_files([paths[0], odd, paths[1]], tmp_path / "out", model_path=model,
                           config=dataclasses.replace(CONFIG, chunk=chunk))
    assert [o.status for o in result.outcomes] == ["done", "failed", "done"]
    assert result.failed[0].reason == "RuntimeError: no room for this image"


def test_batch_config_checks_the_new_options_and_keeps_old_records_valid():
    assert set(BatchConfig(scale=1.0).settings()) == {"tile", "tta", "scale", "precision"}
    assert BatchConfig(save=("seg", "rois", "seg")).save == ("rois", "seg")
    with pytest.raises(ValueError, match=r"save: unknown output kind\(s\) \['sef'\]"):
        BatchConfig(save=("sef",))
    with pytest.raises(TypeError, match="override: unknown value 'min_sise'"):
        BatchConfig(segment={"min_sise": 3})
    with pytest.raises(ValueError, match="stitch_threshold: expected an IoU"):
        BatchConfig(stitch_threshold=2)
    assert BatchConfig(channel=2, normalize=None).settings()["channel"] == [2]


def test_the_default_model_is_recorded_by_its_content():
    """The shipped model file is replaced by new flowseg versions: records name it by content,
    so outputs of an earlier default model ("default" or another digest) are redone."""
    import hashlib

    from flowseg.batch import _settings
    from flowseg.model.pretrained import default_model_path

    digest = hashlib.sha256(default_model_path().read_bytes()).hexdigest()[:16]
    assert _settings(None, CONFIG)["model"] == f"default@{digest}" != "default"


def test_records_of_resized_images_say_how_min_sizes_were_counted():
    """Outputs made at a scale other than 1 before min sizes counted the network's pixels are
    redone; those at scale 1 (where nothing changed) stay valid."""
    assert BatchConfig(scale=1.0).settings().get("min_size_units") is None
    assert BatchConfig().settings()["min_size_units"] == "network"            # estimated
    assert BatchConfig(scale=0.5).settings()["min_size_units"] == "network"
