import csv

import numpy as np
import pytest
import torch

from flowseg.cli._common import run_main
from flowseg.cli.train import main
from flowseg.io.folders import write_cell_types, write_folder_item
from flowseg.api import model_size
from flowseg.model.checkpoint import load_model, load_train_state
from flowseg.synthetic import make_synthetic

TINY = ["--epochs", "1", "--batch-size", "2", "--crop", "32", "--widths", "8,16", "--device", "cpu",
        "--val-every", "1", "--quiet"]


def _folder(directory, seeds, kinds=("round", "spindly")):
    types = {}
    for kind in kinds:
        for seed in seeds:
            image, labels = make_synthetic(kind, shape=(40, 48), seed=seed)
            name = f"{kind}_{seed}"
            write_folder_item(directory, name, (image * 1000).astype(np.uint16), labels, kind)
            types[name] = kind
    write_cell_types(directory, types)
    return directory


@pytest.fixture
def prepared(tmp_path):
    """A data_prep-style folder: DIR/train and DIR/val."""
    _folder(tmp_path / "data" / "train", [0, 1])
    _folder(tmp_path / "data" / "val", [5])
    return tmp_path / "data"


def test_trains_end_to_end_on_prepared_folder(prepared, tmp_path):
    out = tmp_path / "run"
    assert main(["--data", str(prepared), "--out", str(out), *TINY]) == 0
    model = load_model(out / "best.pt")
    assert model.class_names == ("round", "spindly")
    assert model.model_config.widths == (8, 16)
    size = model_size(model)  # fitted at the end of the run
    assert size.can_estimate and set(size.class_diameters) == {"round", "spindly"}
    with open(out / "history.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 1
    # Continue the finished run for one more epoch, with the stored settings.
    assert main(["--data", str(prepared), "--out", str(out), "--resume", "--epochs", "2",
                 "--quiet"]) == 0
    with open(out / "history.csv", newline="") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["1", "2"]
    assert load_model(out / "last.pt").train_config.crop_size == 32
    assert load_model(out / "last.pt").train_config.flow_context == 0


def test_flow_context_option_reaches_the_run(prepared, tmp_path):
    out = tmp_path / "run"
    assert main(["--data", str(prepared), "--out", str(out), *TINY, "--flow-context", "8"]) == 0
    assert load_model(out / "last.pt").train_config.flow_context == 8


def test_single_folder_without_val_keeps_last_only(tmp_path, capsys):
    data = _folder(tmp_path / "plain", [0], kinds=("round",))
    out = tmp_path / "run"
    assert main(["--data", str(data), "--out", str(out), *TINY[:-1]]) == 0
    assert (out / "last.pt").exists() and not (out / "best.pt").exists()
    err = capsys.readouterr().err
    assert "no validation folder" in err
    assert "epoch 1: loss" in err and "nan" not in err
    assert load_model(out / "last.pt").class_names == ("round",)
    assert model_size(load_model(out / "last.pt")) is not None
    assert load_train_state(out / "last.pt")["epoch"] == 1  # still resumable


def test_refuses_non_empty_out_without_resume_or_overwrite(prepared, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run_main("flowseg-train", main, ["--data", str(prepared), "--out", str(out), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["--data", str(prepared), "--out", str(out), "--overwrite", *TINY]) == 0
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/missing", "--out", "{tmp}/run"], "no such folder"),
    (["--data", "{data}", "--out", "{tmp}/run", "--resume"], "no last.pt"),
])
def test_user_errors_exit_2(prepared, tmp_path, capsys, args, message):
    argv = [a.format(tmp=tmp_path, data=prepared) for a in args]
    assert run_main("flowseg-train", main, argv) == 2
    assert message in capsys.readouterr().err


def test_bad_widths_is_a_usage_error(prepared, tmp_path):
    with pytest.raises(SystemExit):
        main(["--data", str(prepared), "--out", str(tmp_path / "r"), "--widths", "8"])


def test_loss_and_augment_options_reach_the_stored_config(prepared, tmp_path):
    out = tmp_path / "run"
    assert main(["--data", str(prepared), "--out", str(out), *TINY, "--class-weight", "0.2",
                 "--class-grad", "0.5", "--flow-weight", "1", "--augment", "brightness=0.2",
                 "--augment", "scale=0.5,2", "--augment", "flip=false"]) == 0
    config = load_model(out / "last.pt").train_config
    assert (config.class_weight, config.class_grad, config.flow_weight) == (0.2, 0.5, 1.0)
    assert config.augment.brightness == 0.2 and config.augment.scale == (0.5, 2.0)
    assert config.augment.flip is False and config.augment.rot90 is True


@pytest.mark.parametrize("item, message", [
    ("size=3", "KEY one of"), ("scale=2", "scale=0.75,1.25"), ("flip=yes", "flip=true"),
    ("brightness", "KEY=VALUE"),
])
def test_bad_augment_item_names_the_expected_form(prepared, tmp_path, capsys, item, message):
    with pytest.raises(SystemExit):
        main(["--data", str(prepared), "--out", str(tmp_path / "r"), "--augment", item])
    assert message in capsys.readouterr().err


def test_class_grad_outside_0_1_exits_2(prepared, tmp_path, capsys):
    argv = ["--data", str(prepared), "--out", str(tmp_path / "r"), *TINY, "--class-grad", "2"]
    assert run_main("flowseg-train", main, argv) == 2
    assert "class_grad" in capsys.readouterr().err


def _refused(argv, capsys, *texts):
    """Exit 2 with one stderr line holding every text."""
    assert run_main("flowseg-train", main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for text in texts:
        assert str(text) in err, err


def test_resume_with_other_cell_types_names_the_model_and_the_folder(prepared, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--data", str(prepared), "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    other = _folder(tmp_path / "other", [0], kinds=("round", "irregular"))
    _refused(["--data", str(other), "--out", str(out), "--resume", "--quiet"], capsys,
             out / "last.pt", other, "trained on cell types ('round', 'spindly')",
             "new ['irregular'], missing ['spindly']", "expected the same cell types")


def _colour_folder(directory):
    for seed in (0, 1):
        image, labels = make_synthetic("round", shape=(40, 48), seed=seed)
        colour = (np.stack([image, image / 2, 1 - image]) * 1000).astype(np.uint16)
        write_folder_item(directory, f"c{seed}", colour, labels, "round")
    write_cell_types(directory, {"c0": "round", "c1": "round"})
    return directory


def test_colour_folder_trains_a_colour_model_that_refuses_grayscale(tmp_path, capsys):
    colour, out = _colour_folder(tmp_path / "colour"), tmp_path / "run"
    assert main(["--data", str(colour), "--out", str(out), *TINY]) == 0
    assert load_model(out / "last.pt").model_config.in_channels == 3
    gray = _folder(tmp_path / "gray", [0], kinds=("round",))
    capsys.readouterr()
    _refused(["--data", str(gray), "--out", str(out), "--resume", "--quiet"], capsys,
             out / "last.pt", gray, "the model takes 3 channel(s)", "have 1")


def test_val_folder_with_other_channels_exits_2(prepared, tmp_path, capsys):
    colour = _colour_folder(tmp_path / "colour")
    _refused(["--data", str(prepared), "--val", str(colour), "--out", str(tmp_path / "run"),
              *TINY], capsys, colour, "3 channel(s), expected 1")
    assert not (tmp_path / "run").exists()


def test_val_cell_types_outside_the_training_classes_are_a_warning(prepared, tmp_path, capsys):
    val = _folder(tmp_path / "val", [5], kinds=("round", "irregular"))
    assert main(["--data", str(prepared), "--val", str(val), "--out", str(tmp_path / "run"),
                 *TINY]) == 0
    assert "1 validation images have cell types ['irregular'] that are not training classes" \
        in capsys.readouterr().err


def _killed_in_first_epoch(prepared, out):
    """What a run killed while writing last.pt in its first epoch leaves: best.pt of epoch 1
    and last.pt's temporary file."""
    assert main(["--data", str(prepared), "--out", str(out), *TINY]) == 0
    for name in ("last.pt", "history.csv", "history.png"):
        (out / name).unlink()
    (out / ".last.pt.q1w2e3.tmp.pt").write_bytes(b"\0" * 1000)


def test_rerun_after_a_kill_in_the_first_epoch_starts_again(prepared, tmp_path, capsys):
    out = tmp_path / "run"
    _killed_in_first_epoch(prepared, out)
    capsys.readouterr()
    _refused(["--data", str(prepared), "--out", str(out), "--resume", "--quiet"], capsys,
             out, "no last.pt to resume", "before its first epoch ended",
             "same command without --resume")
    assert main(["--data", str(prepared), "--out", str(out), *TINY]) == 0
    assert "removed 2 file(s) left by an interrupted run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "history.csv", "history.png",
                                                     "last.pt"]


def test_init_fine_tunes_from_a_model_keeping_known_class_rows(prepared, tmp_path):
    first = tmp_path / "first"
    assert main(["--data", str(prepared), "--out", str(first), *TINY]) == 0
    source = load_model(first / "last.pt")
    # a folder with one known type (round) and one new type (star)
    data = _folder(tmp_path / "next", [3], kinds=("round",))
    extra = _folder(tmp_path / "extra", [4], kinds=("round",))
    (extra / "round_4.tif").rename(data / "star_4.tif")
    (extra / "round_4_masks.tif").rename(data / "star_4_masks.tif")
    from flowseg.io.folders import write_cell_types
    write_cell_types(data, {"round_3": "round", "star_4": "star"})
    out = tmp_path / "tuned"
    assert main(["--data", str(data), "--out", str(out), "--init", str(first / "last.pt"),
                 "--epochs", "1", "--batch-size", "2", "--crop", "32", "--device", "cpu",
                 "--lr", "1e-12", "--quiet"]) == 0
    tuned = load_model(out / "last.pt")
    assert tuned.class_names == ("round", "star")
    assert tuned.model_config.widths == (8, 16)  # the source's architecture, not the default
    old, new = source.net.state_dict(), tuned.net.state_dict()
    assert torch.allclose(new["encoder.0.units.0.conv1.2.weight"],
                          old["encoder.0.units.0.conv1.2.weight"], atol=1e-6)
    assert torch.allclose(new["head.2.weight"][3], old["head.2.weight"][3], atol=1e-6)  # round


def test_init_refuses_other_widths_and_resume(prepared, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["--data", str(prepared), "--out", str(first), *TINY]) == 0
    argv = ["--data", str(prepared), "--out", str(tmp_path / "b"), "--init", str(first / "last.pt"),
            *TINY[:4], "--widths", "8,32", "--device", "cpu", "--quiet"]
    assert run_main("flowseg-train", main, argv) == 2
    assert "widths" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", str(prepared), "--out", str(first), "--init", "default", "--resume"])
