from pathlib import Path

import numpy as np
import pytest

from flowseg.errors import InputError
from flowseg.io.usiigaci import UsiigaciSet, list_usiigaci

SAMPLE = Path(__file__).parents[1] / "data" / "usiigaci"


def test_list_and_read_sample():
    (s,) = list_usiigaci(SAMPLE)
    assert s == UsiigaciSet("usiigaci_set1", SAMPLE / "set1" / "raw.tif",
                            SAMPLE / "set1" / "instances_ids.png", "usiigaci")
    image, labels = s.image(), s.labels()
    assert image.shape == labels.shape == (256, 256)
    assert image.dtype == np.uint16 and labels.dtype == np.int32
    assert np.unique(labels).tolist() == list(range(16))
    assert list_usiigaci(SAMPLE / "set1")[0].name == "usiigaci_set1"   # a single set folder


def test_natural_order_and_errors(tmp_path):
    for n in (10, 2):
        (tmp_path / f"set{n}").mkdir()
        for f in ("raw.tif", "instances_ids.png"):
            (tmp_path / f"set{n}" / f).write_bytes(b"")
    (tmp_path / "other").mkdir()
    assert [s.name for s in list_usiigaci(tmp_path)] == ["usiigaci_set2", "usiigaci_set10"]
    (tmp_path / "set2" / "raw.tif").unlink()
    with pytest.raises(InputError, match="set2: missing raw.tif"):
        list_usiigaci(tmp_path)
    with pytest.raises(InputError, match="no setN/ folders"):
        list_usiigaci(tmp_path / "other")
    with pytest.raises(InputError, match="no such folder"):
        list_usiigaci(tmp_path / "nope")
