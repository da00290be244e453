import csv
import dataclasses
import math

import numpy as np
import pytest
import torch

from flowseg.config import ModelConfig
from flowseg.data.dataset import CropDataset, make_sample
from flowseg.io.atomic import atomic_path
from flowseg.model.checkpoint import Model, load_model, load_train_state, save_model
from flowseg.model.unet import UNet
from flowseg.flows import labels_to_flows
from flowseg.training.engine import (HISTORY_FIELDS, crop_targets, evaluate_val,
                                     first_epoch_leftovers, fit,
                                     lr_factor, make_optimizer, make_scheduler, temporary_files,
                                     train_one_epoch)


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


def test_crop_targets_keep_the_centres_of_cells_cut_by_the_crop():
    """A cell cut by the crop's edge points to the centre of its whole (inside the context),
    not to one inside the crop; context 0 gives the crop's own targets."""
    labels = torch.zeros((1, 40, 40), dtype=torch.int32)
    labels[0, 4:36, 0:14] = 1          # centre near column 7: left of the crop (8-31)
    labels[0, 20:26, 24:30] = 2        # wholly inside the crop
    crop, targets = crop_targets(labels, 8, device=torch.device("cpu"))
    assert crop.shape == (1, 24, 24) and targets.shape == (1, 2, 24, 24)
    assert torch.equal(crop, labels[:, 8:-8, 8:-8])
    assert torch.equal(targets, labels_to_flows(labels)[:, :, 8:-8, 8:-8])
    # Cell 1's part in the crop: its whole-cell flows all point left, out of the crop; flows
    # of the crop alone point to a centre inside it (about half of them right).
    inside = crop[0] == 1
    assert bool((targets[0, 1][inside] < 0).all())
    alone = labels_to_flows(crop)
    assert (alone[0, 1][inside] > 0).float().mean() > 0.3
    crop0, targets0 = crop_targets(crop, 0, device=torch.device("cpu"))
    assert crop0 is crop and torch.equal(targets0, alone)
    with pytest.raises(ValueError, match="context"):
        crop_targets(labels, 20, device=torch.device("cpu"))


def test_fit_with_flow_context_trains_and_stores_it(samples, tiny_configs, tmp_path):
    train, val = samples
    config, model_config = tiny_configs
    config = dataclasses.replace(config, epochs=1, flow_context=8)
    model = fit(train, val, config, model_config, tmp_path, progress=False)
    assert load_model(tmp_path / "last.pt").train_config.flow_context == 8
    assert model.train_config == config


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


def _without_cells(sample):
    return dataclasses.replace(sample, labels=np.zeros_like(sample.labels))


def test_refuses_training_samples_without_any_cell(samples, tiny_configs, tmp_path):
    train, _ = samples
    config, model_config = tiny_configs
    with pytest.raises(ValueError, match="none of the 4 training images has any"):
        fit([_without_cells(s) for s in train], [], config, model_config, tmp_path / "run",
            progress=False)
    assert not (tmp_path / "run").exists()


def test_warns_about_empty_and_small_images_and_untyped_val(samples, tiny_configs, tmp_path,
                                                            caplog):
    train, val = samples
    config, model_config = tiny_configs
    config = dataclasses.replace(config, epochs=1, crop_size=64)  # images are 48x56
    train = [_without_cells(train[0]), *train[1:]]
    val = [val[0], dataclasses.replace(val[1], cell_type="oval")]
    with caplog.at_level("INFO", logger="flowseg.training.engine"):
        fit(train, val, config, model_config, tmp_path, progress=False)
    text = caplog.text
    assert ("1 of 4 training images have no cells (they teach background only): "
            f"{train[0].name}") in text
    assert "4 of 4 training images are smaller than the 64-pixel crop" in text
    assert f"{train[1].name} (48x56)" in text
    assert "1 validation images have cell types ['oval'] that are not training classes" in text
    assert "val_spindly" in text
    assert "val 0." in text or "val 1." in text


def test_epoch_log_has_no_val_part_without_validation(samples, tiny_configs, tmp_path, caplog):
    train, _ = samples
    config, model_config = tiny_configs
    with caplog.at_level("INFO", logger="flowseg.training.engine"):
        fit(train, [], dataclasses.replace(config, epochs=1), model_config, tmp_path,
            progress=False)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1:")]
    assert "val" not in line and "nan" not in line


def test_temporary_files_are_those_atomic_path_writes(tmp_path):
    (tmp_path / ".notes.txt.x.tmp.txt").write_text("not a run file")
    (tmp_path / "last.pt").write_text("a finished file")
    with atomic_path(tmp_path / "last.pt") as tmp:
        tmp.write_text("being written")
        assert temporary_files(tmp_path) == [tmp]
    assert temporary_files(tmp_path) == []


def _plant(path, size=1000):
    path.write_bytes(b"\0" * size)
    return path


def _best_of_epoch(path, epoch):
    config = ModelConfig(n_classes=2, widths=(8, 16))
    save_model(path, Model(UNet(config), config, ("round", "spindly"), metadata={"epoch": epoch}))
    return path


def test_first_epoch_leftovers_are_temporary_files_and_a_best_of_epoch_1(tmp_path):
    assert first_epoch_leftovers(tmp_path / "missing") == []
    assert first_epoch_leftovers(tmp_path) == []
    temp = _plant(tmp_path / ".last.pt.k2j4h1.tmp.pt")
    best = _best_of_epoch(tmp_path / "best.pt", 1)
    assert first_epoch_leftovers(tmp_path) == [temp, best]
    _best_of_epoch(best, 2)
    assert first_epoch_leftovers(tmp_path) is None  # a later epoch finished: not a first epoch
    _best_of_epoch(best, 1)
    (tmp_path / "notes.txt").write_text("mine")
    assert first_epoch_leftovers(tmp_path) is None


def test_fit_removes_temporary_files_of_a_killed_run_when_resuming(samples, tiny_configs,
                                                                   tmp_path, caplog):
    train, _ = samples
    config, model_config = tiny_configs
    fit(train, [], dataclasses.replace(config, epochs=1), model_config, tmp_path, progress=False)
    temps = [_plant(tmp_path / ".last.pt.abc123.tmp.pt", 2_000_000),
             _plant(tmp_path / ".history.csv.x9y8z7.tmp.csv")]
    with caplog.at_level("WARNING", logger="flowseg.training.engine"):
        fit(train, [], config, model_config, tmp_path, resume=True, progress=False)
    assert not any(p.exists() for p in temps)
    assert "removed 2 file(s) left by an interrupted run" in caplog.text
    assert f"{temps[0]} (2.0 MB)" in caplog.text
    assert [r["epoch"] for r in _history(tmp_path / "history.csv")] == ["1", "2"]


def test_fit_mixes_pseudo_items_and_refuses_a_fraction_without_them(samples, tiny_configs, tmp_path):
    train, val = samples
    config, model_config = tiny_configs
    config = dataclasses.replace(config, epochs=1, pseudo_fraction=0.5)
    with pytest.raises(ValueError, match="pseudo_items is empty"):
        fit(train, val, config, model_config, tmp_path / "a", progress=False)
    pseudo = [make_sample(f"p{i}", s.image[0], s.labels, s.cell_type,
                          ignore=np.ones(s.labels.shape, bool)) for i, s in enumerate(train)]
    fit(train, [], config, model_config, tmp_path / "b", progress=False, pseudo_items=pseudo)
    alien = [make_sample("z", train[0].image[0], train[0].labels, "other")]
    with pytest.raises(ValueError, match=r"\['other'\] are not among the training classes"):
        fit(train, [], config, model_config, tmp_path / "c", progress=False, pseudo_items=alien)
