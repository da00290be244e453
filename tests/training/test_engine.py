import csv
import dataclasses
import math

import numpy as np
import pytest
import torch

from flowseg.config import ModelConfig
from flowseg.data.dataset import CropDataset
from flowseg.model.checkpoint import Model, load_model, load_train_state
from flowseg.model.unet import UNet
from flowseg.training.engine import (HISTORY_FIELDS, evaluate_val, fit, lr_factor, make_optimizer,
                                     make_scheduler, train_one_epoch)


class Stop(Exception):
    pass


def _history(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_two_steps_give_finite_changing_loss(samples, tiny_configs):
    train, _ = samples
    config, model_config = tiny_configs
    torch.manual_seed(0)
    net = UNet(model_config)
    before = [p.detach().clone() for p in net.parameters()]
    dataset = CropDataset(train, ("round", "spindly"), crop_size=32, augment=config.augment, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=[0, 1, 2, 3])
    optimizer = make_optimizer(net, config)
    scheduler = make_scheduler(optimizer, config, len(loader))
    losses = [train_one_epoch(net, loader, optimizer, scheduler, config=config,
                              device=torch.device("cpu"), progress=False) for _ in range(2)]
    assert all(math.isfinite(v) for terms in losses for v in terms.values())
    assert losses[0]["loss"] != losses[1]["loss"]
    assert set(losses[0]) == {"loss", "flow", "cellprob", "classes"}
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_fit_writes_run_files_and_returns_best(samples, tiny_configs, tmp_path):
    train, val = samples
    config, model_config = tiny_configs
    model = fit(train, val, config, model_config, tmp_path, progress=False)
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt", "best.pt", "history.csv", "history.png"}
    rows = _history(tmp_path / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert tuple(rows[0]) == HISTORY_FIELDS
    assert all(0 <= float(r["val_score"]) <= 1 for r in rows)
    best = load_model(tmp_path / "best.pt")
    assert best.class_names == model.class_names == ("round", "spindly")
    assert best.train_config == config
    assert best.metadata["val_score"] == max(float(r["val_score"]) for r in rows)
    assert load_train_state(tmp_path / "last.pt")["epoch"] == 2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_after_interrupt_equals_uninterrupted_run(samples, tiny_configs, tmp_path, precision):
    train, val = samples
    config, model_config = tiny_configs
    config = dataclasses.replace(config, precision=precision)
    full = fit(train, [], config, model_config, tmp_path / "full", progress=False)

    def stop_after_first(record):
        if record.epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        fit(train, [], config, model_config, tmp_path / "run", progress=False,
            on_epoch_end=stop_after_first)
    assert len(_history(tmp_path / "run" / "history.csv")) == 1
    resumed = fit(train, [], config, model_config, tmp_path / "run", resume=True, progress=False)
    rows = _history(tmp_path / "run" / "history.csv")
    full_rows = _history(tmp_path / "full" / "history.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [r["loss"] for r in rows] == [r["loss"] for r in full_rows]
    for a, b in zip(full.net.state_dict().values(), resumed.net.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert not (tmp_path / "run" / "best.pt").exists()


def test_refuses_existing_run_and_changed_settings(samples, tiny_configs, tmp_path):
    train, _ = samples
    config, model_config = tiny_configs
    fit(train, [], config.__class__(**{**config.__dict__, "epochs": 1}), model_config, tmp_path,
        progress=False)
    with pytest.raises(FileExistsError, match="last.pt"):
        fit(train, [], config, model_config, tmp_path, progress=False)
    changed = config.__class__(**{**config.__dict__, "lr": 0.1})
    with pytest.raises(ValueError, match=r"\['epochs', 'lr'\]|\['lr'\]"):
        fit(train, [], changed, model_config, tmp_path, resume=True, progress=False)


def test_n_classes_must_match_training_cell_types(samples, tiny_configs, tmp_path):
    train, _ = samples
    config, _ = tiny_configs
    with pytest.raises(ValueError, match=r"n_classes: expected 2"):
        fit(train, [], config, ModelConfig(n_classes=3, widths=(8, 16)), tmp_path, progress=False)


def test_evaluate_val_scores_in_unit_range(samples):
    train, val = samples
    torch.manual_seed(0)
    model = Model(UNet(ModelConfig(n_classes=2, widths=(8, 16))), ModelConfig(n_classes=2, widths=(8, 16)),
                  ("round", "spindly"))
    result = evaluate_val(model, val + train[:1])
    assert len(result.image_scores) == 3
    assert 0 <= result.score <= 1 and 0 <= result.class_accuracy <= 1
    np.testing.assert_allclose(result.score, np.mean(result.image_scores))


def test_lr_warmup_then_cosine_to_zero():
    factors = [lr_factor(s, total_steps=10, warmup_steps=2) for s in range(11)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))
    assert factors[10] == pytest.approx(0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_cuda_with_bf16_autocast(samples, tiny_configs, tmp_path):
    train, val = samples
    config, model_config = tiny_configs
    config = config.__class__(**{**config.__dict__, "device": "cuda"})
    model = fit(train, val, config, model_config, tmp_path, progress=False)
    assert model.device.type == "cuda"
    rows = _history(tmp_path / "history.csv")
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert load_model(tmp_path / "best.pt", device="cpu").device.type == "cpu"


def test_fp32_and_bf16_start_from_the_same_weights_and_stay_close(samples, tiny_configs, tmp_path):
    """bf16 autocast changes the arithmetic, not the recipe: after one epoch both runs' losses agree
    to bf16 precision."""
    train, val = samples
    config, model_config = tiny_configs
    losses = {}
    for precision in ("fp32", "bf16"):
        run = tmp_path / precision
        fit(train, [], dataclasses.replace(config, precision=precision, epochs=1), model_config, run,
            progress=False)
        losses[precision] = float(_history(run / "history.csv")[0]["loss"])
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


@pytest.mark.slow
def test_learns_synthetic_cells(tmp_path):
    """~1-3 min on 2 CPU cores: 60 epochs of 3 steps; measured val score 0.32-0.42 at epoch 60."""
    from flowseg.config import TrainConfig
    from flowseg.data.dataset import make_sample
    from flowseg.synthetic import KINDS, make_synthetic

    train = [make_sample(f"{k}{s}", *make_synthetic(k, shape=(96, 96), seed=s), k)
             for k in KINDS for s in range(8)]
    val = [make_sample(f"v{k}{s}", *make_synthetic(k, shape=(96, 96), seed=100 + s), k)
           for k in KINDS for s in range(3)]
    config = TrainConfig(epochs=60, batch_size=8, crop_size=64, device="cpu", warmup_epochs=2,
                         val_every=20)
    model = fit(train, val, config, ModelConfig(n_classes=3, widths=(16, 32, 64)), tmp_path,
                progress=False)
    rows = _history(tmp_path / "history.csv")
    assert float(rows[-1]["loss"]) < 0.6 * float(rows[0]["loss"])
    assert model.metadata["val_score"] > 0.15
    assert float(rows[-1]["val_class_accuracy"]) > 0.8
