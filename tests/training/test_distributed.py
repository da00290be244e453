import csv
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from flowseg.config import AugmentConfig, ModelConfig, TrainConfig
from flowseg.data.dataset import make_sample
from flowseg.model.checkpoint import load_model
from flowseg.synthetic import make_synthetic
from flowseg.training.distributed import (GlobalBatchNorm2d, launch_env, process_group,
                                          rank_device, shard_batches, world_size)
from flowseg.training.engine import fit

# 6 crops, global batch 3: each step is split 2 + 1 over two ranks (unequal shards). The
# augmentation is spelled out (photometric on, as the defaults were when the tolerances below
# were set): with other crops, another weight may get a near-zero gradient, where Adam turns
# the ranks' float rounding differences into steps of ~lr.
CONFIG = TrainConfig(epochs=2, batch_size=3, crop_size=32, device="cpu", warmup_epochs=0.5,
                     val_every=1, augment=AugmentConfig(rotation=30.0, brightness=0.1,
                                                        contrast=(0.8, 1.2), gamma=(0.8, 1.25)),
                     precision="fp32")
MODEL = ModelConfig(n_classes=2, widths=(8, 16))


def _train_items():
    return [make_sample(f"{k}{s}", *make_synthetic(k, shape=(48, 56), seed=s), k)
            for k in ("round", "spindly") for s in range(3)]


class Stop(Exception):
    pass


def _stop_after_first(record):
    if record.epoch == 1:
        raise Stop


def _worker(rank, world, port, out_dir):
    """One torchrun-like rank: interrupted after epoch 1, then resumed (all ranks)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    with process_group("cpu"):
        assert world_size() == world
        items = _train_items()
        try:
            fit(items, [], CONFIG, MODEL, out_dir, progress=False, on_epoch_end=_stop_after_first)
        except Stop:
            pass
        fit(items, [], CONFIG, MODEL, out_dir, resume=True, progress=False)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(path):
    with open(path, newline="") as handle:
        return [float(r["loss"]) for r in csv.DictReader(handle)]


def test_two_gloo_ranks_match_single_process_with_same_global_batch(tmp_path):
    torch.set_num_threads(1)
    single = fit(_train_items(), [], CONFIG, MODEL, tmp_path / "single", progress=False)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["history.csv", "history.png",
                                                                     "last.pt"]
    np.testing.assert_allclose(_losses(tmp_path / "ddp" / "history.csv"),
                               _losses(tmp_path / "single" / "history.csv"), rtol=1e-4)
    # Weight tensors agree; biases are not compared: a conv bias feeding a BatchNorm has zero
    # true gradient, and Adam turns the float rounding noise there into steps of size ~lr.
    ddp = load_model(tmp_path / "ddp" / "last.pt").net.state_dict()
    weights = [n for n, v in single.net.state_dict().items() if v.ndim > 1]
    assert len(weights) > 10
    for name in weights:
        torch.testing.assert_close(ddp[name], single.net.state_dict()[name], rtol=1e-3,
                                   atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_shard_batches_split_each_global_batch_disjointly():
    order = [5, 3, 0, 4, 1, 2, 6]
    shards = [shard_batches(order, 3, rank=r, world_size=2) for r in range(2)]
    assert shards[0] == [[5, 0], [4, 2], [6]]
    assert shards[1] == [[3], [1], [5]]  # last batch (1 crop < 2 ranks) padded from the start
    assert shard_batches(order, 3) == [[5, 3, 0], [4, 1, 2], [6]]
    with pytest.raises(ValueError, match="batch_size"):
        shard_batches(order, 1, rank=0, world_size=2)


def test_launch_env_reads_torchrun_variables():
    assert launch_env({}).world_size == 1
    env = launch_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (env.rank, env.local_rank, env.world_size) == (3, 1, 4)
    with pytest.raises(ValueError, match="RANK"):
        launch_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        launch_env({"WORLD_SIZE": "two"})
    assert rank_device("cpu", env) == torch.device("cpu")


def test_global_batchnorm_is_plain_batchnorm_outside_a_group():
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm2d(3, momentum=0.05)
    glob = GlobalBatchNorm2d(3, momentum=0.05)
    x = torch.randn(4, 3, 5, 6)
    torch.testing.assert_close(glob(x), plain(x))
    torch.testing.assert_close(glob.running_var, plain.running_var)


@pytest.mark.slow  # ~20-30 s on 2 cores: two torchrun launches of the train program
def test_train_program_under_torchrun_trains_and_resumes(tmp_path):
    import subprocess
    import sys

    from tests.cli.test_train import _folder

    _folder(tmp_path / "data" / "train", [0, 1, 2])
    _folder(tmp_path / "data" / "val", [5])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-port", str(_free_port()), "-m", "flowseg.cli.train"]
    common = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([*torchrun, *common, "--epochs", "1", "--batch-size", "4", "--crop",
                            "32", "--widths", "8,16", "--device", "cpu"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run([*torchrun, *common, "--resume", "--epochs", "2"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    with open(tmp_path / "run" / "history.csv", newline="") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["1", "2"]
    assert load_model(tmp_path / "run" / "best.pt").model_config.widths == (8, 16)
