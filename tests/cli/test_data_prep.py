import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowseg.cli.data_prep import main, run
from flowseg.errors import InputError
from flowseg.io.folders import list_folder
from flowseg.io.images import read_image, read_labels
from flowseg.io.rle import rle_encode

DATA = Path(__file__).parents[1] / "data"
SHAPE = (20, 24)
CELL_TYPES = {"astro": 5, "cort": 3, "shsy5y": 1}


def _instances(seed):
    """Two squares and a hollow ring (the ring's hole is 2 x 2)."""
    rng = np.random.default_rng(seed)
    r, c = rng.integers(0, 4, size=2)
    a = np.zeros(SHAPE, bool)
    a[r:r + 4, c:c + 4] = True
    b = np.zeros(SHAPE, bool)
    b[r + 2:r + 8, c + 2:c + 8] = True          # overlaps a
    ring = np.zeros(SHAPE, bool)
    ring[12:18, 14:20] = True
    ring[14:16, 16:18] = False
    return [a, b, ring]


@pytest.fixture
def sartorius(tmp_path):
    """A synthetic train.csv + PNG folder; returns (csv, images dir, {id: image})."""
    images_dir = tmp_path / "train"
    images_dir.mkdir()
    rows, images = [], {}
    seed = 0
    for cell_type, n in CELL_TYPES.items():
        for i in range(n):
            image_id = f"{cell_type}{i:02d}"
            image = np.random.default_rng(seed).integers(0, 256, SHAPE).astype(np.uint8)
            Image.fromarray(image).save(images_dir / f"{image_id}.png")
            images[image_id] = image
            rows += [[image_id, rle_encode(m), SHAPE[1], SHAPE[0], cell_type] for m in _instances(seed)]
            seed += 1
    csv_path = tmp_path / "train.csv"
    _write_rows(csv_path, rows)
    return csv_path, images_dir, images


def _write_rows(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "annotation", "width", "height", "cell_type"])
        writer.writerows(rows)


def _args(csv_path, images_dir, out, *extra):
    return ["sartorius", "--csv", str(csv_path), "--images", str(images_dir), "--out", str(out), *extra]


def test_sartorius_end_to_end(sartorius, tmp_path, capsys):
    csv_path, images_dir, images = sartorius
    out = tmp_path / "prepared"
    assert main(_args(csv_path, images_dir, out, "--seed", "3")) == 0
    train, val = list_folder(out / "train"), list_folder(out / "val")
    assert len(train) + len(val) == 9
    val_types = sorted(i.cell_type for i in val)
    assert val_types == ["astro", "cort"]      # round(0.2 * n), >= 1 for n >= 2, 0 for n == 1
    assert "shsy5y" in {i.cell_type for i in train}
    for item in train + val:
        np.testing.assert_array_equal(read_image(item.image_path), images[item.name])
        labels = read_labels(item.masks_path)
        assert sorted(np.unique(labels).tolist()) == [0, 1, 2, 3]
        assert labels[14, 16] == 0               # hole kept without --fill-holes
    record = json.loads((out / "prep.json").read_text())
    assert record["options"]["seed"] == 3 and record["options"]["fill_holes"] is False
    assert record["counts"]["val"] == {"astro": {"images": 1, "instances": 3},
                                       "cort": {"images": 1, "instances": 3}}
    assert record["counts"]["train"]["astro"] == {"images": 4, "instances": 12}
    assert record["names"]["val"] == sorted(i.name for i in val)
    table = capsys.readouterr().out
    assert "cell_type" in table and "shsy5y" in table
    assert table.splitlines()[-1].split() == ["total", "7", "21", "2", "6"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_split_depends_on_seed_not_on_row_order(sartorius, tmp_path):
    csv_path, images_dir, _ = sartorius
    main(_args(csv_path, images_dir, tmp_path / "a", "--quiet"))
    rows = list(csv.reader(open(csv_path)))
    _write_rows(tmp_path / "reversed.csv", rows[:0:-1])
    main(_args(tmp_path / "reversed.csv", images_dir, tmp_path / "b", "--quiet"))
    names = [json.loads((tmp_path / d / "prep.json").read_text())["names"] for d in "ab"]
    assert names[0] == names[1]
    seeds = {tuple(json.loads((tmp_path / f"s{s}" / "prep.json").read_text())["names"]["val"])
             for s in range(6) if main(_args(csv_path, images_dir, tmp_path / f"s{s}", "--quiet",
                                             "--seed", str(s))) == 0}
    assert len(seeds) > 1


def test_fill_holes(sartorius, tmp_path):
    csv_path, images_dir, _ = sartorius
    out = tmp_path / "out"
    main(_args(csv_path, images_dir, out, "--fill-holes", "--quiet", "--val-fraction", "0"))
    items = list_folder(out / "train")
    assert len(items) == 9 and list_folder(out / "val") == []
    for item in items:
        labels = read_labels(item.masks_path)
        assert labels[14, 16] == labels[12, 14] > 0


def test_quiet_prints_nothing(sartorius, tmp_path, capsys):
    csv_path, images_dir, _ = sartorius
    main(_args(csv_path, images_dir, tmp_path / "out", "--quiet"))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_existing_output_refused_without_overwrite(sartorius, tmp_path, capsys):
    csv_path, images_dir, _ = sartorius
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(InputError, match="exists and is not empty; pass --overwrite"):
        main(_args(csv_path, images_dir, out, "--quiet"))
    assert run(_args(csv_path, images_dir, out, "--quiet")) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "old.txt").exists()
    assert main(_args(csv_path, images_dir, out, "--quiet", "--overwrite")) == 0
    assert not (out / "old.txt").exists() and (out / "prep.json").exists()


def test_malformed_rle_row_named_and_nothing_written(sartorius, tmp_path, capsys):
    csv_path, images_dir, _ = sartorius
    rows = list(csv.reader(open(csv_path)))[1:]
    rows[16][1] = "5 3 4 1"
    _write_rows(csv_path, rows)
    out = tmp_path / "out"
    assert run(_args(csv_path, images_dir, out, "--quiet")) == 2
    err = capsys.readouterr().err
    assert f"train.csv line 18 (id {rows[16][0]})" in err and "strictly increasing" in err
    assert not out.exists()


def test_failure_mid_run_leaves_no_output(sartorius, tmp_path):
    csv_path, images_dir, _ = sartorius
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(images_dir / "cort01.png")   # wrong size
    out = tmp_path / "out"
    with pytest.raises(InputError, match="image of id cort01: expected height x width 20 x 24"):
        main(_args(csv_path, images_dir, out, "--quiet"))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(InputError):
        main(_args(csv_path, images_dir, out, "--quiet", "--overwrite"))
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_missing_image_and_output_holding_input(sartorius, tmp_path):
    csv_path, images_dir, _ = sartorius
    with pytest.raises(InputError, match="contains the input"):
        main(_args(csv_path, images_dir, tmp_path, "--quiet", "--overwrite"))
    (images_dir / "astro00.png").unlink()
    with pytest.raises(InputError, match="no image for 1 id.*astro00.png"):
        main(_args(csv_path, images_dir, tmp_path / "out", "--quiet"))


def test_bad_val_fraction_is_a_usage_error(sartorius, tmp_path):
    csv_path, images_dir, _ = sartorius
    with pytest.raises(SystemExit):
        main(_args(csv_path, images_dir, tmp_path / "out", "--val-fraction", "1.5"))


def test_real_sartorius_sample(tmp_path):
    out = tmp_path / "out"
    assert main(_args(DATA / "sartorius" / "train.csv", DATA / "sartorius" / "train", out,
                      "--quiet", "--fill-holes")) == 0
    (item,) = list_folder(out / "train")
    assert item.name == "1bf60e3be6ce" and item.cell_type == "cort"
    labels = read_labels(item.masks_path)
    assert labels.shape == (520, 704) and labels.max() == 19


def test_usiigaci_sample(tmp_path):
    out = tmp_path / "out"
    assert main(["usiigaci", "--root", str(DATA / "usiigaci"), "--out", str(out), "--quiet"]) == 0
    (item,) = list_folder(out / "train")
    assert (item.name, item.cell_type) == ("usiigaci_set1", "usiigaci")
    image = read_image(item.image_path)
    assert image.shape == (256, 256) and image.dtype == np.uint16
    expected = np.asarray(Image.open(DATA / "usiigaci" / "set1" / "instances_ids.png"))
    np.testing.assert_array_equal(read_labels(item.masks_path), expected)


def test_scale_resizes_images_and_masks(tmp_path):
    out = tmp_path / "out"
    assert main(["usiigaci", "--root", str(DATA / "usiigaci"), "--out", str(out), "--quiet",
                 "--scale", "0.5"]) == 0
    (item,) = list_folder(out / "train")
    image, labels = read_image(item.image_path), read_labels(item.masks_path)
    assert image.shape == labels.shape == (128, 128) and image.dtype == np.uint16
    full = np.asarray(Image.open(DATA / "usiigaci" / "set1" / "instances_ids.png"))
    assert labels.max() == len(np.unique(labels)) - 1  # consecutive after resizing
    assert abs(labels.max() - (len(np.unique(full)) - 1)) <= 2  # tiny edge cells may vanish
    assert json.loads((out / "prep.json").read_text())["options"]["scale"] == 0.5


@pytest.mark.parametrize("bad", ["0", "-2", "nan", "abc"])
def test_bad_scale_is_a_usage_error(bad, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["usiigaci", "--root", str(DATA / "usiigaci"), "--out", str(tmp_path / "o"),
              "--scale", bad])
    assert "--scale" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_coco(tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    data = {"images": [], "annotations": [],
            "categories": [{"id": 1, "name": "a172"}, {"id": 2, "name": "bv2"}]}
    for i in range(4):
        Image.fromarray(np.full((5, 6), i, np.uint8)).save(images_dir / f"im{i}.png")
        data["images"].append({"id": i, "file_name": f"im{i}.png", "height": 5, "width": 6})
        data["annotations"].append({"id": i, "image_id": i, "category_id": 1 + i % 2, "iscrowd": 0,
                                    "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]})
    (tmp_path / "ann.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["coco", "--json", str(tmp_path / "ann.json"), "--images", str(images_dir),
                 "--out", str(out), "--quiet", "--val-fraction", "0.5"]) == 0
    items = list_folder(out / "train") + list_folder(out / "val")
    assert sorted((i.name, i.cell_type) for i in items) == [
        ("im0", "a172"), ("im1", "bv2"), ("im2", "a172"), ("im3", "bv2")]
    assert sorted(i.cell_type for i in list_folder(out / "val")) == ["a172", "bv2"]
    labels = read_labels(items[0].masks_path)
    assert labels.sum() == 9 and (labels[1:4, 1:4] == 1).all()


SHARED = Path("/work/shared/data")


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "sartorius" / "train.csv").exists(), reason="needs /work/shared/data")
def test_shared_sartorius_with_fill_holes(tmp_path):
    out = tmp_path / "out"
    assert main(_args(SHARED / "sartorius" / "train.csv", SHARED / "sartorius" / "train", out,
                      "--quiet", "--fill-holes")) == 0
    counts = json.loads((out / "prep.json").read_text())["counts"]
    assert counts == {"train": {"astro": {"images": 1, "instances": 90},
                                "cort": {"images": 1, "instances": 21}},
                      "val": {"cort": {"images": 1, "instances": 19}}}
    (astro,) = [i for i in list_folder(out / "train") if i.cell_type == "astro"]
    assert (read_labels(astro.masks_path) > 0).sum() == 60522     # 59,780 pixels before filling


def test_test_fold_and_train_only_csv(sartorius, tmp_path):
    csv_path, images_dir, _ = sartorius
    rows = list(csv.reader(open(csv_path)))[1:]
    astro = [r for r in rows if r[0].startswith("astro")]
    main_ids = {"astro00", "astro01", "astro02", "astro03"}
    _write_rows(tmp_path / "main.csv", [r for r in astro if r[0] in main_ids])
    _write_rows(tmp_path / "extra.csv", [r for r in astro if r[0] not in main_ids])
    out = tmp_path / "out"
    assert main(_args(tmp_path / "main.csv", images_dir, out, "--quiet", "--val-fraction", "0.25",
                      "--test-fraction", "0.25", "--train-only-csv", str(tmp_path / "extra.csv"))) == 0
    names = json.loads((out / "prep.json").read_text())["names"]
    assert [len(names[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert "astro04" in names["train"]                      # the train-only image
    assert [i.name for i in list_folder(out / "test")] == names["test"]
    options = json.loads((out / "prep.json").read_text())["options"]
    assert options["train_only_csv"] == [str(tmp_path / "extra.csv")]


def test_train_only_csv_may_not_repeat_an_image(sartorius, tmp_path):
    csv_path, images_dir, _ = sartorius
    with pytest.raises(InputError, match="already annotated in another csv, e.g. astro00"):
        main(_args(csv_path, images_dir, tmp_path / "out", "--quiet", "--train-only-csv", str(csv_path)))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """Two 160 x 192 crops of the shipped Sartorius sample, as PNG files."""
    from flowseg.model.pretrained import sample_paths

    folder = tmp_path_factory.mktemp("unlabelled")
    image = read_image(sample_paths()[0])
    for i, (r, c) in enumerate([(0, 0), (300, 400)]):
        Image.fromarray(image[r:r + 160, c:c + 192]).save(folder / f"crop{i}.png")
    return folder


def test_pseudo_labels_only_confident_teacher_cells(unlabelled, tmp_path, capsys):
    import flowseg
    from flowseg.io.folders import read_ignore_mask

    out = tmp_path / "pseudo"
    assert main(["pseudo", "--images", str(unlabelled), "--out", str(out), "--scale", "1",
                 "--cell-type", "shsy5y", "--max-flow-error", "0.3"]) == 0
    assert "kept" in capsys.readouterr().out
    items = list_folder(out)
    assert [i.name for i in items] == ["crop0", "crop1"]
    record = json.loads((out / "pseudo.json").read_text())
    assert record["config"]["max_flow_error"] == 0.3
    teacher = flowseg.load_model(device="cpu")
    kept_total = 0
    for item, row in zip(items, record["images"]):
        assert item.cell_type == "shsy5y" and item.ignore_path is not None
        image, labels = read_image(item.image_path), read_labels(item.masks_path)
        ignore = read_ignore_mask(item.ignore_path)
        assert np.array_equal(image, np.asarray(Image.open(unlabelled / f"{item.name}.png")))
        (result,) = flowseg.segment([image], teacher, scale=1.0)
        assert row["teacher_instances"] == result.n_instances and row["kept"] == labels.max()
        for k in range(1, labels.max() + 1):   # each pseudo cell is one whole teacher cell
            ids = np.unique(result.labels[labels == k])
            assert len(ids) == 1 and ids[0] > 0
            assert np.array_equal(result.labels == ids[0], labels == k)
        assert not (labels[result.labels == 0]).any()      # background never labelled
        assert not (ignore & (labels > 0)).any()
        assert ignore[(result.labels > 0) & (labels == 0)].all()   # dropped cells ignored
        kept_total += labels.max()
    assert kept_total > 0
    assert run(["pseudo", "--images", str(unlabelled), "--out", str(out), "--quiet"]) == 2


def test_pseudo_types_from_the_teacher_and_ensemble(unlabelled, tmp_path):
    from flowseg.model.pretrained import default_model_path

    out = tmp_path / "pseudo"
    model = str(default_model_path())
    assert main(["pseudo", "--images", str(unlabelled / "crop0.png"), "--out", str(out),
                 "--model", model, "--model", model, "--scale", "1", "--quiet"]) == 0
    (item,) = list_folder(out)
    assert item.cell_type in ("astro", "cort", "shsy5y")
