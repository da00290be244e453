"""A corpus of bad inputs, run through every program's ``main``.

Each case builds its bad file in ``tmp_path`` and runs a program as its console script does
(``run_main``). A bad input of the whole run gives exit code 2, one line on stderr naming the
file (and line), and no output at all; a bad image of a ``flowseg-segment`` batch is listed in
``failed.csv`` with a reason naming its file, the other images are written and the exit code
is 1. A training run killed in its first epoch leaves nothing ``--resume`` can continue: it
says so in one line, and the plain command starts again, removing what the killed run left.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowseg.cli import data_prep, evaluate, segment, train, tune
from flowseg.cli._common import run_main
from flowseg.io.folders import write_cell_types, write_folder_item
from flowseg.io.images import write_image, write_labels
from flowseg.io.rle import rle_encode
from flowseg.synthetic import make_synthetic
from tests.batch_fixtures import write_images, write_tiny_model
from tests.damaged_files import DAMAGE, damage

SHAPE = (40, 48)
LATIN1_ROW = "\u00e9t\u00e9".encode("latin-1")  # not UTF-8


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "model.pt")


def _labels(seed: int) -> np.ndarray:
    return make_synthetic(("round", "spindly")[seed % 2], shape=SHAPE, seed=seed)[1]


def _image(seed: int) -> np.ndarray:
    return (make_synthetic(("round", "spindly")[seed % 2], shape=SHAPE, seed=seed)[0]
            * 1000).astype(np.uint16)


def _train_csv(path: Path, ids=("a", "b")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "annotation", "width", "height", "cell_type"])
        for seed, image_id in enumerate(ids):
            labels = _labels(seed)
            for k in range(1, int(labels.max()) + 1):
                writer.writerow([image_id, rle_encode(labels == k), SHAPE[1], SHAPE[0], "astro"])
    return path


def _masks_folder(directory: Path, ids=("a", "b")) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for seed, image_id in enumerate(ids):
        write_labels(directory / f"{image_id}_masks.tif", _labels(seed))
    return directory


def _cellpose_folder(directory: Path, n: int = 2) -> Path:
    for seed in range(n):
        write_folder_item(directory, f"im{seed}", _image(seed), _labels(seed),
                          ("round", "spindly")[seed % 2])
    write_cell_types(directory, {f"im{s}": ("round", "spindly")[s % 2] for s in range(n)})
    return directory


def _bad_csv(path: Path, kind: str) -> Path:
    """An empty file, or a train.csv / submission whose line 2 is not UTF-8."""
    header = b"id,predicted\n" if "submission" in path.name else \
        b"id,annotation,width,height,cell_type\n"
    path.write_bytes(b"" if kind == "empty" else header + LATIN1_ROW + b",1 2,48,40,astro\n")
    return path


def _run(program, argv: list[str], capsys) -> tuple[int, str]:
    code = run_main(program.__name__, program.main, argv)
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_refused(code: int, err: str, named: Path, *also: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1, err        # one line, no traceback (and --quiet: no bar)
    assert str(named) in err, err
    for text in also:
        assert text in err, err


# ----------------------------------------------------------------------------- evaluate
def _evaluate_case(case: str, tmp: Path) -> tuple[list[str], Path, tuple[str, ...]]:
    """argv, the file the message must name, more text it must hold."""
    truth, pred = _train_csv(tmp / "train.csv"), _masks_folder(tmp / "pred")
    if case in ("truth empty", "truth latin-1"):
        truth = _bad_csv(tmp / "bad.csv", case.split()[1])
        named, also = truth, (("empty file",) if case.endswith("empty") else ("line 2", "UTF-8"))
    elif case in ("submission empty", "submission latin-1"):
        pred = _bad_csv(tmp / "submission.csv", case.split()[1])
        named, also = pred, (("empty file",) if case.endswith("empty") else ("line 2", "UTF-8"))
    elif case.startswith("pred mask"):
        named, also = damage(pred / "b_masks.tif", case.split()[-1]), ("damaged or truncated",)
    elif case.startswith("truth mask"):
        truth = _masks_folder(tmp / "truth")
        named, also = damage(truth / "a_masks.tif", case.split()[-1]), ("damaged or truncated",)
    elif case == "pred cell_types latin-1":
        named = pred / "cell_types.csv"
        named.write_bytes(b"name,cell_type\n" + LATIN1_ROW + b",astro\n")
        also = ("line 2", "UTF-8")
    else:
        raise AssertionError(case)
    return ["--truth", str(truth), "--pred", str(pred), "--out", str(tmp / "report"), "--quiet"], \
        named, also


EVALUATE_CASES = ["truth empty", "truth latin-1", "submission empty", "submission latin-1",
                  *(f"pred mask {how}" for how in DAMAGE), *(f"truth mask {how}" for how in DAMAGE),
                  "pred cell_types latin-1"]


@pytest.mark.parametrize("case", EVALUATE_CASES)
def test_evaluate_refuses(case, tmp_path, capsys):
    argv, named, also = _evaluate_case(case, tmp_path)
    _assert_refused(*_run(evaluate, argv, capsys), named, *also)
    assert not (tmp_path / "report").exists()


# ----------------------------------------------------------------------------- data_prep
def _prep_case(case: str, tmp: Path) -> tuple[list[str], Path, tuple[str, ...]]:
    images = tmp / "images"
    images.mkdir()
    for seed, image_id in enumerate(("a", "b")):
        Image.fromarray((_image(seed) // 8).astype(np.uint8)).save(images / f"{image_id}.png")
    sartorius = ["sartorius", "--csv", str(_train_csv(tmp / "train.csv")), "--images", str(images)]
    if case in ("csv empty", "csv latin-1"):
        named = _bad_csv(tmp / "bad.csv", case.split()[1])
        argv = ["sartorius", "--csv", str(named), "--images", str(images)]
    elif case.startswith("png"):
        named, argv = damage(images / "b.png", case.split()[-1]), sartorius
    elif case.startswith("usiigaci"):
        (tmp / "u" / "set1").mkdir(parents=True)
        write_image(tmp / "u" / "set1" / "raw.tif", _image(0))
        Image.fromarray(_labels(0).astype(np.uint8)).save(tmp / "u" / "set1" / "instances_ids.png")
        named, argv = damage(tmp / "u" / "set1" / "raw.tif", case.split()[-1]), \
            ["usiigaci", "--root", str(tmp / "u")]
    elif case == "coco latin-1":
        named = tmp / "coco.json"
        named.write_bytes(b'{"images": "' + LATIN1_ROW + b'"}')
        argv = ["coco", "--json", str(named), "--images", str(images)]
    else:
        raise AssertionError(case)
    also = () if case.startswith("csv") else ("UTF-8",) if "latin" in case else ("damaged",)
    return argv, named, also


PREP_CASES = ["csv empty", "csv latin-1", *(f"png {how}" for how in DAMAGE),
              *(f"usiigaci {how}" for how in DAMAGE), "coco latin-1"]


@pytest.mark.parametrize("case", PREP_CASES)
def test_data_prep_refuses(case, tmp_path, capsys):
    argv, named, also = _prep_case(case, tmp_path)
    out = tmp_path / "prepared"
    _assert_refused(*_run(data_prep, [*argv, "--out", str(out), "--quiet"], capsys), named, *also)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder


# ----------------------------------------------------------------------------- --out is a file
def _out_argv(program, tmp: Path, model: Path, out: Path) -> list[str]:
    if program is segment:
        images = write_images(tmp / "images", n=1, corrupt=False)
        return [str(images[0]), "--model", str(model), "--out", str(out), "--device", "cpu",
                "--quiet"]
    if program is evaluate:
        return ["--truth", str(_train_csv(tmp / "train.csv")), "--pred",
                str(_masks_folder(tmp / "pred")), "--out", str(out), "--quiet"]
    images = tmp / "images"
    images.mkdir()
    for image_id in ("a", "b"):
        Image.fromarray(np.zeros(SHAPE, np.uint8)).save(images / f"{image_id}.png")
    return ["sartorius", "--csv", str(_train_csv(tmp / "train.csv")), "--images", str(images),
            "--out", str(out), "--quiet"]


@pytest.mark.parametrize("under", [False, True])
@pytest.mark.parametrize("program", [segment, evaluate, data_prep], ids=lambda p: p.__name__)
def test_out_that_is_a_file_is_refused(program, under, model, tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    out = tmp_path / "file" / "sub" if under else tmp_path / "file"
    code, err = _run(program, _out_argv(program, tmp_path, model, out), capsys)
    _assert_refused(code, err, out, "not a folder")
    assert "Errno" not in err
    assert (tmp_path / "file").read_text() == "keep me"


# ----------------------------------------------------------------------------- segment
def _cut_model(model: Path, tmp: Path, how: str) -> Path:
    path = tmp / f"{how}.pt"
    if how == "garbage":
        path.write_bytes(b"not a model")
        return path
    payload = torch.load(model, weights_only=True)
    del payload["state_dict"]
    torch.save(payload, path)
    return path


SEGMENT_REFUSALS = [
    (["--model", "no-state-dict"], "model", ("missing state_dict",)),
    (["--model", "garbage"], "model", ("not a flowseg model file",)),
    (["--tile", "21"], None, ("tile:", "positive multiple of 2", "e.g. 20 or 22; got 21")),
    (["--tile", "-1"], None, ("tile:", "0 (whole images, untiled)", "got -1")),
    (["--batch-size", "0"], None, ("batch_size: expected an int >= 1, got 0",)),
]


@pytest.mark.parametrize("extra, named, also", SEGMENT_REFUSALS, ids=lambda v: str(v))
def test_segment_refuses_before_writing(extra, named, also, model, tmp_path, capsys):
    images = write_images(tmp_path / "images", n=1, corrupt=False)
    if named == "model":
        model = _cut_model(model, tmp_path, extra[1])
        extra = []
    out = tmp_path / "out"
    argv = [str(images[0]), "--model", str(model), "--out", str(out), "--device", "cpu",
            "--quiet", *extra]
    code, err = _run(segment, argv, capsys)
    _assert_refused(code, err, model if named else "", *also)
    assert not out.exists()


def _bad_image(directory: Path, kind: str) -> Path:
    """One image file a 1-channel model cannot segment."""
    rng = np.random.default_rng(0)
    if kind in ("rgb", "rgba"):
        path = directory / f"{kind}.png"
        Image.fromarray(rng.integers(0, 255, (*SHAPE, len(kind)), dtype=np.uint8)).save(path)
    elif kind in ("two-channel", "z-stack"):
        path = directory / f"{kind}.tif"
        write_image(path, rng.integers(0, 999, (2 if kind == "two-channel" else 7, *SHAPE))
                    .astype(np.uint16))
    elif kind.startswith(("tif", "png")):
        suffix, how = kind.split()
        path = directory / f"damaged_{how}.{suffix}"
        if suffix == "tif":
            write_image(path, _image(0))
        else:
            Image.fromarray((_image(0) // 8).astype(np.uint8)).save(path)
        damage(path, how)
    elif kind == "empty file":
        path = directory / "empty.tif"
        path.write_bytes(b"")
    else:
        raise AssertionError(kind)
    return path


BAD_IMAGES = ["rgb", "rgba", "two-channel", "z-stack", *(f"tif {how}" for how in DAMAGE),
              *(f"png {how}" for how in DAMAGE), "empty file"]


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_segment_lists_a_bad_image_and_goes_on(kind, model, tmp_path, capsys):
    good = write_images(tmp_path / "images", n=2, corrupt=False)
    bad = _bad_image(tmp_path / "images", kind)
    out = tmp_path / "out"
    argv = [str(good[0]), str(bad), str(good[1]), "--model", str(model), "--out", str(out),
            "--device", "cpu", "--chunk", "1", "--quiet"]  # the bad image alone in its chunk
    code, err = _run(segment, argv, capsys)
    assert code == 1, err
    with open(out / "failed.csv", newline="", encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["name"], row["path"]) == (bad.stem, str(bad))
    assert str(bad) in row["reason"] and "images[0]" not in row["reason"]
    assert "\n" not in row["reason"]
    assert not (out / f"{bad.stem}_masks.tif").exists()
    assert not (out / ".flowseg" / f"{bad.stem}.json").exists()
    assert all((out / f"{p.stem}_masks.tif").is_file() for p in good)
    with open(out / "cell_types.csv", newline="", encoding="utf-8") as handle:
        assert [r["name"] for r in csv.DictReader(handle)] == [p.stem for p in good]


# ----------------------------------------------------------------------------- train, tune
def _train_case(case: str, tmp: Path) -> Path:
    folder = _cellpose_folder(tmp / "data" / "train")
    if case == "cell_types latin-1":
        named = folder / "cell_types.csv"
        named.write_bytes(b"name,cell_type\n" + LATIN1_ROW + b",round\n")
        return named
    what, how = case.split()
    return damage(folder / ("im1.tif" if what == "image" else "im1_masks.tif"), how)


TRAIN_CASES = [*(f"{what} {how}" for what in ("image", "masks") for how in DAMAGE),
               "cell_types latin-1"]


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_refuses(case, tmp_path, capsys):
    named = _train_case(case, tmp_path)
    out = tmp_path / "run"
    code, err = _run(train, ["--data", str(tmp_path / "data" / "train"), "--out", str(out),
                             "--epochs", "1", "--widths", "8,16", "--device", "cpu", "--quiet"],
                     capsys)
    _assert_refused(code, err, named)
    assert not out.exists()


def _rgb_image(folder: Path) -> Path:
    path = folder / "im1.tif"
    write_image(path, np.stack([_image(1), _image(0), _image(1) // 2]))
    return path


TRAIN_TINY = ["--epochs", "1", "--crop", "32", "--widths", "8,16", "--device", "cpu", "--quiet"]


def _no_cells(folder: Path) -> tuple[Path, str]:
    for name in ("im0", "im1"):
        write_labels(folder / f"{name}_masks.tif", np.zeros(SHAPE, np.int32))
    return folder, "no image has any cell"


def _grayscale_and_rgb(folder: Path) -> tuple[Path, str]:
    return folder, f"1 channel(s) in im0.tif; 3 channel(s) in {_rgb_image(folder).name}"


def _rgb_val(folder: Path) -> tuple[Path, str]:
    val = _cellpose_folder(folder.parent / "val")
    for name in ("im0", "im1"):
        write_image(val / f"{name}.tif", np.stack([_image(1), _image(0), _image(1) // 2]))
    return val, "3 channel(s), expected 1"


TRAIN_DATA_CASES: dict[str, Callable[[Path], tuple[Path, str]]] = {
    "no cells": _no_cells, "grayscale and rgb": _grayscale_and_rgb, "rgb val": _rgb_val,
}


@pytest.mark.parametrize("case", TRAIN_DATA_CASES)
def test_train_refuses_data(case, tmp_path, capsys):
    named, also = TRAIN_DATA_CASES[case](_cellpose_folder(tmp_path / "data" / "train"))
    out = tmp_path / "run"
    code, err = _run(train, ["--data", str(tmp_path / "data"), "--out", str(out), *TRAIN_TINY],
                     capsys)
    _assert_refused(code, err, named, also)
    assert not out.exists()


def _killed_in_first_epoch(data: Path, out: Path) -> tuple[Path, str]:
    """A first run killed while writing last.pt: best.pt of epoch 1 and a temporary file."""
    assert train.main(["--data", str(data), "--out", str(out), *TRAIN_TINY]) == 0
    for name in ("last.pt", "history.csv", "history.png"):
        (out / name).unlink()
    (out / ".last.pt.a1b2c3.tmp.pt").write_bytes(b"\0" * 1000)
    return out, "the run stopped before its first epoch ended"


def _other_cell_types(data: Path, out: Path) -> tuple[Path, str]:
    assert train.main(["--data", str(data), "--out", str(out), *TRAIN_TINY]) == 0
    write_cell_types(data / "train", {"im0": "round", "im1": "oval"})
    return out / "last.pt", "expected the same cell types"


RESUME_CASES: dict[str, Callable[[Path, Path], tuple[Path, str]]] = {
    "killed in the first epoch": _killed_in_first_epoch, "other cell types": _other_cell_types,
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_train_resume_refuses(case, tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "run"
    _cellpose_folder(data / "train"), _cellpose_folder(data / "val")
    named, also = RESUME_CASES[case](data, out)
    capsys.readouterr()
    before = sorted(p.name for p in out.iterdir())
    code, err = _run(train, ["--data", str(data), "--out", str(out), "--resume", "--quiet"],
                     capsys)
    _assert_refused(code, err, named, also)
    assert sorted(p.name for p in out.iterdir()) == before


def test_train_starts_again_after_a_kill_in_the_first_epoch(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "run"
    _cellpose_folder(data / "train"), _cellpose_folder(data / "val")
    _killed_in_first_epoch(data, out)
    capsys.readouterr()
    code, err = _run(train, ["--data", str(data), "--out", str(out), *TRAIN_TINY], capsys)
    assert code == 0, err
    assert "removed 2 file(s) left by an interrupted run" in err
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "history.csv", "history.png",
                                                     "last.pt"]


TUNE_CASES: dict[str, Callable[[Path], Path]] = {
    "image truncated": lambda f: damage(f / "im1.tif", "truncated"),
    "masks garbled": lambda f: damage(f / "im0_masks.tif", "garbled"),
    "rgb image": _rgb_image,
}


@pytest.mark.parametrize("case", TUNE_CASES)
def test_tune_refuses(case, model, tmp_path, capsys):
    folder = _cellpose_folder(tmp_path / "val")
    named = TUNE_CASES[case](folder)
    out = tmp_path / "tuned.pt"
    code, err = _run(tune, ["--model", str(model), "--data", str(folder), "--out", str(out),
                            "--device", "cpu", "--quiet"], capsys)
    _assert_refused(code, err, named)
    assert not out.exists()
