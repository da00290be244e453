"""Shared fixtures for the flow tests: seeded synthetic labels and the small real samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flowseg.synthetic import KINDS, synthetic_labels

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="session", params=KINDS)
def synthetic(request) -> np.ndarray:
    """One 128x128 synthetic label image per morphology."""
    return synthetic_labels(request.param, shape=(128, 128), seed=7)


def real_samples() -> list[tuple[str, np.ndarray]]:
    """The real label images under tests/data (empty when they are not there)."""
    samples = []
    csv = DATA / "sartorius" / "train.csv"
    if csv.exists():
        from flowseg.io.sartorius import read_train_csv
        samples += [(f"sartorius {k}", a.labels()) for k, a in read_train_csv(csv).items()]
    png = DATA / "usiigaci" / "set1" / "instances_ids.png"
    if png.exists():
        from flowseg.io.images import read_labels
        samples.append(("usiigaci set1 crop", read_labels(png)))
    return samples


def cellprob_for(labels: np.ndarray) -> np.ndarray:
    """A confident cell-probability logit map: +10 inside cells, -10 outside."""
    return np.where(labels > 0, 10.0, -10.0).astype(np.float32)
