"""flowseg-train --pseudo: pseudo-label folders mixed into the training crops."""

import numpy as np
import pytest

from flowseg.cli._common import run_main
from flowseg.cli.train import main
from flowseg.config import TrainConfig
from flowseg.io.folders import write_cell_types, write_folder_item
from flowseg.model.checkpoint import load_model
from flowseg.synthetic import make_synthetic

TINY = ["--epochs", "1", "--batch-size", "2", "--crop", "32", "--widths", "8,16", "--device", "cpu",
        "--val-every", "1", "--quiet"]


def _folder(directory, seeds, kinds, *, pseudo=False):
    types = {}
    for kind in kinds:
        for seed in seeds:
            image, labels = make_synthetic(kind, shape=(40, 48), seed=seed)
            name = f"{kind}_{seed}"
            ignore = (labels == 0) & (np.arange(48) > 30) if pseudo else None
            write_folder_item(directory, name, (image * 1000).astype(np.uint16), labels, kind,
                              ignore=ignore)
            types[name] = kind
    write_cell_types(directory, types)
    return directory


@pytest.fixture
def data(tmp_path):
    _folder(tmp_path / "data" / "train", [0, 1], ("round", "spindly"))
    _folder(tmp_path / "data" / "val", [5], ("round", "spindly"))
    return tmp_path / "data"


def test_pseudo_folder_trains_and_is_recorded(data, tmp_path):
    pseudo = _folder(tmp_path / "pseudo", [7, 8, 9], ("round",), pseudo=True)
    out = tmp_path / "run"
    assert main(["--data", str(data), "--out", str(out), "--pseudo", str(pseudo), *TINY]) == 0
    assert load_model(out / "last.pt").train_config.pseudo_fraction == 0.2
    other = tmp_path / "run2"
    assert main(["--data", str(data), "--out", str(other), "--pseudo", str(pseudo),
                 "--pseudo", str(pseudo), "--pseudo-fraction", "0.5", *TINY]) == 0
    assert load_model(other / "last.pt").train_config.pseudo_fraction == 0.5
    assert main(["--data", str(data), "--out", str(other), "--resume", "--epochs", "2",
                 "--pseudo", str(pseudo), "--quiet"]) == 0


def test_pseudo_options_refused_when_they_cannot_work(data, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_main("flowseg-train", main, ["--data", str(data), "--out", out,
                                            "--pseudo-fraction", "0.3", *TINY]) == 2
    assert "--pseudo DIR" in capsys.readouterr().err
    alien = _folder(tmp_path / "alien", [3], ("irregular",), pseudo=True)
    assert run_main("flowseg-train", main, ["--data", str(data), "--out", out,
                                            "--pseudo", str(alien), *TINY]) == 2
    assert "['irregular'] are not training cell types" in capsys.readouterr().err


def test_configs_without_pseudo_fraction_load():
    old = TrainConfig().to_dict()
    del old["pseudo_fraction"]
    assert TrainConfig.from_dict(old).pseudo_fraction == 0.0
    with pytest.raises(ValueError, match="pseudo_fraction"):
        TrainConfig(pseudo_fraction=1.0)
