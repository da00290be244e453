"""benchmarks/type_errors.py: its per-cell counts on hand-made labels."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("type_errors", ROOT / "benchmarks" / "type_errors.py")
type_errors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(type_errors)


def test_cell_table_counts_matched_and_uncovered_cells():
    truth = np.zeros((20, 30), np.int32)
    truth[2:8, 2:8] = 1        # found exactly
    truth[10:18, 2:10] = 2     # half found: covered, not matched at IoU 0.5
    truth[2:10, 20:28] = 3     # not found at all
    pred = np.zeros_like(truth)
    pred[2:8, 2:8] = 1
    pred[10:14, 2:10] = 2
    cellprob = np.full(truth.shape, -5.0, np.float32)
    cellprob[truth == 3] = 1.5
    res = SimpleNamespace(labels=pred, cellprob=cellprob)
    t = type_errors.cell_table([truth], [res])
    assert (t["cells"], t["matched"], t["uncovered"]) == (3, 1, 1)
    assert t["logit"] == 1.5
