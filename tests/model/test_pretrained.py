"""The shipped default model and samples: they load offline and segment real cells."""

from pathlib import Path

import numpy as np

import flowseg
from flowseg.io.images import read_image
from flowseg.io.sartorius import read_train_csv
from flowseg.metrics import image_score
from flowseg.model.pretrained import default_model_path, sample_paths

DATA = Path(__file__).parents[1] / "data" / "sartorius"


def test_default_model_is_small_and_tuned():
    path = default_model_path()
    assert path.is_file() and path.stat().st_size <= 25 * 2**20
    model = flowseg.load_model()
    assert {"astro", "cort"} <= set(model.class_names)
    assert set(model.segment_config.per_class) == set(model.class_names)  # tuned per type


def test_default_model_finds_the_cort_cells_of_a_held_out_sartorius_image():
    """1bf60e3be6ce is a validation image of the shipped model (never trained on). The shipped
    model's val score on it is in its model card; this guards the shipped weights."""
    annotation = read_train_csv(DATA / "train.csv")["1bf60e3be6ce"]
    (result,) = flowseg.segment([read_image(DATA / "train" / "1bf60e3be6ce.png")], flowseg.load_model())
    assert result.image_cell_type == "cort"
    score = image_score(annotation.instance_indices(), result.labels)
    assert score.score > 0.15 and score.tp[0] >= 8  # 8 of the 19 cells at IoU 0.5
    assert result.labels.shape == annotation.shape


def test_samples_ship_with_the_package():
    paths = sample_paths()
    assert len(paths) >= 2 and all(p.is_file() for p in paths)
    assert all(np.asarray(read_image(p)).ndim == 2 for p in paths)
