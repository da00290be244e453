import pytest

from flowseg.config import AugmentConfig, ModelConfig, TrainConfig
from flowseg.data.dataset import make_sample
from flowseg.synthetic import make_synthetic

KINDS = ("round", "spindly")


@pytest.fixture(scope="session")
def samples():
    """4 training and 2 validation samples of two cell types (seeded synthetic images)."""
    train = [make_sample(f"{k}{s}", *make_synthetic(k, shape=(48, 56), seed=s), k)
             for k in KINDS for s in range(2)]
    val = [make_sample(f"val_{k}", *make_synthetic(k, shape=(40, 48), seed=10), k) for k in KINDS]
    return train, val


@pytest.fixture
def tiny_configs():
    train = TrainConfig(epochs=2, batch_size=2, crop_size=32, device="cpu", warmup_epochs=0.5,
                        val_every=1, augment=AugmentConfig(rotation=30.0), precision="fp32")
    return train, ModelConfig(n_classes=2, widths=(8, 16))
