"""Tests for ``flowseg-evaluate tune`` (flowseg.cli.tune), called through evaluate's ``main``/``run``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowseg.cli.evaluate import main, run
from flowseg.config import ModelConfig, SegmentConfig
from flowseg.io.folders import write_cell_types, write_folder_item
from flowseg.model.checkpoint import Model, load_model, save_model
from flowseg.model.ensemble import EnsembleNet
from flowseg.model.unet import UNet
from flowseg.synthetic import make_synthetic


@pytest.fixture
def model_path(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(n_classes=2, widths=(8, 16))
    path = tmp_path / "m.pt"
    save_model(path, Model(UNet(config).eval(), config, ("a", "b"), SegmentConfig()))
    return path


@pytest.fixture
def val_dir(tmp_path):
    """Two images per type, empty truths (the search itself is tested in tests/test_tuning.py)."""
    directory = tmp_path / "val"
    types = {}
    for i, kind in enumerate(["a", "a", "b", "b"]):
        image, _ = make_synthetic("round", shape=(48, 48), seed=i)
        write_folder_item(directory, f"im{i}", (image * 1000).astype(np.uint16),
                          np.zeros((48, 48), np.int32), kind)
        types[f"im{i}"] = kind
    write_cell_types(directory, types)
    return directory


GRID = ["--cellprob-grid=-30,0", "--flow-grid", "0", "--min-size-grid", "0,100000"]


def test_tune_writes_a_new_model_with_per_class_values(tmp_path, model_path, val_dir, capsys):
    before = model_path.read_bytes()
    out = tmp_path / "tuned.pt"
    assert main(["tune", "--model", str(model_path), "--data", str(val_dir), "--out", str(out),
                 "--tile", "0", "--device", "cpu", *GRID]) == 0
    assert model_path.read_bytes() == before
    tuned = load_model(out)
    per_class = tuned.segment_config.per_class
    assert set(per_class) == {"a", "b"}
    for values in per_class.values():
        assert values.cellprob_threshold in (-30, 0) and values.min_size in (0, 100000)
        assert values.flow_threshold == 0
    assert tuned.metadata["tuning"]["after"] == 1.0  # a value that finds nothing exists
    assert tuned.metadata["tuning"]["n_images"] == 4 and tuned.metadata["tuning"]["n_trials"] == 4
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["cell", "type", "images", "before"]
    assert table[-1].split()[:4] == ["all", "4", table[-1].split()[2], "1.0000"]
    assert table[-1].split()[-2:] == ["min_flow", "0.3"]  # the model's: no --min-flow-grid


def test_tune_with_tta_records_the_choice_and_segment_follows_it(tmp_path, model_path, val_dir):
    from flowseg.api import PredictConfig, segment

    base = ["tune", "--data", str(val_dir), "--tile", "0", "--quiet", *GRID]
    assert main([*base, "--model", str(model_path), "--out", str(tmp_path / "tta.pt"),
                 "--tta"]) == 0
    tuned = load_model(tmp_path / "tta.pt")
    assert tuned.tta is True and tuned.metadata["tuning"]["tta"] is True
    assert load_model(model_path).tta is False
    # retuned without the flag: the model's choice is kept; --no-tta turns it off
    assert main([*base, "--model", str(tmp_path / "tta.pt"), "--out", str(tmp_path / "a.pt")]) == 0
    assert load_model(tmp_path / "a.pt").tta is True
    assert main([*base, "--model", str(tmp_path / "tta.pt"), "--out", str(tmp_path / "b.pt"),
                 "--no-tta"]) == 0
    assert load_model(tmp_path / "b.pt").tta is False
    image, _ = make_synthetic("round", shape=(48, 48), seed=0)
    run = [segment([image], tuned, scale=1.0, return_maps=True,
                   predict=PredictConfig(tile=None, tta=tta))[0] for tta in (None, True, False)]
    np.testing.assert_array_equal(run[0].flows, run[1].flows)
    assert not np.allclose(run[0].flows, run[2].flows, atol=1e-4)


def test_in_place_and_class_source(model_path, val_dir):
    assert main(["tune", "--model", str(model_path), "--data", str(val_dir), "--in-place",
                 "--tile", "0", "--class-source", "instance", "--quiet", *GRID]) == 0
    config = load_model(model_path).segment_config
    assert config.class_source == "instance" and set(config.per_class) == {"a", "b"}


def test_min_flow_grid_and_scale(tmp_path, model_path, val_dir):
    out = tmp_path / "t.pt"
    assert main(["tune", "--model", str(model_path), "--data", str(val_dir), "--out", str(out),
                 "--quiet", "--scale", "0.5", "--min-flow-grid", "0.3,0", *GRID]) == 0
    tuned = load_model(out)
    assert tuned.segment_config.min_flow == 0.0  # empty truth: both score 1, the smallest wins
    assert tuned.metadata["tuning"]["n_trials"] == 8


def test_several_models_are_tuned_as_one_ensemble_file(tmp_path, model_path, val_dir):
    torch.manual_seed(1)
    config = ModelConfig(n_classes=2, widths=(8, 16))
    other = save_model(tmp_path / "other.pt", Model(UNet(config).eval(), config, ("a", "b")))
    out = tmp_path / "ens.pt"
    assert main(["tune", "--model", str(model_path), "--model", str(other), "--data", str(val_dir),
                 "--out", str(out), "--tile", "0", "--quiet", *GRID]) == 0
    tuned = load_model(out)
    assert isinstance(tuned.net, EnsembleNet) and len(tuned.net.members) == 2
    assert set(tuned.segment_config.per_class) == {"a", "b"}
    assert tuned.metadata["ensemble_sources"] == [str(model_path), str(other)]
    # Tuned again in place, it stays an ensemble.
    assert main(["tune", "--model", str(out), "--data", str(val_dir), "--in-place", "--tile", "0",
                 "--quiet", *GRID]) == 0
    assert len(load_model(out).net.members) == 2


def _error(capsys, argv) -> str:
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def test_user_errors(tmp_path, model_path, val_dir, capsys):
    base = ["tune", "--model", str(model_path), "--data", str(val_dir), "--quiet"]
    assert "pass --in-place" in _error(capsys, [*base, "--out", str(model_path)])
    assert "min_sizes: expected values >= 0" in _error(capsys, [*base, "--out", str(tmp_path / "o.pt"),
                                                                "--min-size-grid=-1"])
    assert "scale: expected a resize factor" in _error(capsys, [*base, "--out", str(tmp_path / "o.pt"),
                                                                "--scale", "0"])
    assert "several --model files are tuned as a new ensemble" in _error(
        capsys, [*base, "--model", str(model_path), "--in-place"])
    (val_dir / "cell_types.csv").unlink()
    assert "needs cell_types.csv" in _error(capsys, [*base, "--out", str(tmp_path / "o.pt")])
    assert not (tmp_path / "o.pt").exists()
    with pytest.raises(SystemExit):
        main(["tune", "--model", str(model_path), "--data", str(val_dir)])  # no --out / --in-place
