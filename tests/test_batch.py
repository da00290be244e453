import csv
import dataclasses
import sys

import numpy as np
import pytest

from flowseg.batch import BatchConfig, FAILED_FILE, local_client, masks_path, segment_files
from flowseg.io.images import read_labels
from tests.batch_fixtures import write_images, write_tiny_model

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
    assert not (tmp_path / FAILED_FILE).exists()  # no failure in this run


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


def test_dask_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'flowseg\[cluster\]'"):
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
