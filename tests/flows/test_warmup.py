"""Kernels compiled in the background: the torch route meanwhile, one signature per kernel,
the cache check, the background process and its lock."""

import contextlib
import importlib
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from numba.core import event

import flowseg
from flowseg.api import segment_maps
from flowseg.config import ClassThresholds, SegmentConfig
from flowseg.flows import _warmup, compile_kernels, fill_holes, flow_error, flows_to_labels, labels_to_flows
from flowseg.flows.masks import _renumber
from flowseg.synthetic import synthetic_labels

from .conftest import cellprob_for


class _Compiles(event.Listener):
    """Records the functions numba compiles (cache loads fire no event)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def on_start(self, ev) -> None:
        func = ev.data["dispatcher"].py_func
        self.names.append(f"{func.__module__}.{func.__name__}")

    def on_end(self, ev) -> None:
        pass


@contextlib.contextmanager
def _recorded_compiles():
    listener = _Compiles()
    with event.install_listener("numba:compile", listener):
        yield listener.names


def _labels() -> np.ndarray:
    labels = np.stack([synthetic_labels(k, shape=(64, 72), seed=4)
                       for k in ("round", "irregular", "spindly")])
    labels[1, 5:9, 5:9] = labels[1].max() + 1           # a cell in two pieces
    labels[1, 50:53, 60:63] = labels[1].max()
    return labels


def _maps(labels: np.ndarray) -> torch.Tensor:
    """Segment maps of one image: noisy flows, cell probability with holes, two cell types."""
    rng = np.random.default_rng(1)
    flows = labels_to_flows(labels) + rng.normal(0, 0.3, (2, *labels.shape)).astype(np.float32)
    cellprob = np.where(rng.random(labels.shape) < 0.05, -3.0, cellprob_for(labels))
    classes = np.stack([np.where(labels % 2 == 1, 4.0, -4.0), np.where(labels % 2 == 0, 4.0, -4.0)])
    return torch.from_numpy(np.concatenate([flows, cellprob[None], classes]).astype(np.float32))


def _everything(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Every public entry point of the segment path and the targets, on CPU input."""
    flows = labels_to_flows(labels)
    noisy = flows + np.random.default_rng(0).normal(0, 0.4, flows.shape).astype(np.float32)
    cellprob = cellprob_for(labels)
    config = SegmentConfig(min_size=5, flow_threshold=0.4,
                           per_class={"b": ClassThresholds(cellprob_threshold=1.0, min_size=20)})
    out = {"flows": flows, "flows uint16": labels_to_flows(labels.astype(np.uint16)),
           "labels": flows_to_labels(noisy, cellprob, config=SegmentConfig(min_size=5)),
           "labels with QC": flows_to_labels(noisy, cellprob, config=config),
           "flow error": np.concatenate(flow_error(noisy, labels)),
           "holes": fill_holes(np.where(labels % 3 == 0, 0, labels).astype(np.int32)),
           "renumbered": _renumber(labels * 5)}
    for source in ("image", "instance"):
        per_source = SegmentConfig(min_size=5, class_source=source, per_class=config.per_class)
        (result,) = segment_maps([_maps(labels[1])], ("a", "b"), config=per_source)
        out[f"segment_maps {source}"] = result.labels
    return out


def test_torch_route_while_compiling_gives_the_same_bits_and_compiles_nothing(monkeypatch):
    labels = _labels()
    compile_kernels()
    expected = _everything(labels)
    monkeypatch.setattr(_warmup, "use_kernels", lambda: False)
    with _recorded_compiles() as compiled:
        got = _everything(labels)
    assert compiled == []
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_the_segment_path_calls_each_kernel_with_its_declared_signature():
    """What the background process compiles is all the segment path and the targets need:
    once it is done, no call compiles anything (int32, int64 and uint16 labels alike)."""
    compile_kernels()
    labels = _labels()
    with _recorded_compiles() as compiled:
        _everything(labels)
        _everything(labels.astype(np.int64))
    assert [name for name in compiled if name.startswith("flowseg.")] == []


def test_every_public_kernel_declares_a_signature():
    from flowseg.flows import _kernels
    from flowseg.flows._numba_cache import KERNELS

    assert sorted(d.py_func.__name__ for d, _ in KERNELS) == sorted(_kernels.__all__)


# ----------------------------------------------------------------------------- the cache check
_TINY = '''
from numba import njit

@njit(cache=True)
def double(a):
    return 2 * a
'''


def test_loaded_reads_numba_s_cache_and_never_compiles(tmp_path):
    from numba import types

    (tmp_path / "tiny_kernel.py").write_text(_TINY)
    sys.path.insert(0, str(tmp_path))
    try:
        import tiny_kernel
        signature = (types.int64,)
        with _recorded_compiles() as compiled:
            assert not _warmup._loaded(tiny_kernel.double, signature)
        assert compiled == [] and not tiny_kernel.double.overloads
        tiny_kernel.double.compile(signature)               # compiled and written to the cache
        fresh = importlib.reload(tiny_kernel).double        # a new dispatcher, nothing loaded
        assert not fresh.overloads
        with _recorded_compiles() as compiled:
            assert _warmup._loaded(fresh, signature)
            assert fresh(21) == 42
        assert compiled == []
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tiny_kernel", None)


# ----------------------------------------------------------------------------- the decision
@pytest.fixture
def state(monkeypatch):
    """A fresh state in background mode with a cache; the cache check and the process start
    replaced by records."""
    fresh = _warmup._State()
    monkeypatch.setattr(_warmup, "_STATE", fresh)
    monkeypatch.setenv(_warmup.ENV_VAR, "background")
    monkeypatch.setattr(_warmup, "_load_cached", lambda: fresh.cached)
    monkeypatch.setattr(_warmup, "_someone_compiling", lambda lock: fresh.other)
    monkeypatch.setattr(_warmup, "_lock_path", lambda: Path("/nowhere/flowseg-compile.lock"))
    fresh.cached, fresh.other, fresh.running, fresh.started = False, False, False, 0

    def start(s):
        s.started += 1
        s.pid = 12345
        return True

    def child_running(s):
        if s.pid is None:
            return False
        if not s.running:
            s.pid = None
        return s.running

    monkeypatch.setattr(_warmup, "_start", start)
    monkeypatch.setattr(_warmup, "_child_running", child_running)
    return fresh


def test_cached_kernels_run_at_once(state):
    state.cached = True
    assert _warmup.use_kernels() and state.started == 0 and state.ready


def test_missing_kernels_start_one_background_process(state):
    state.running = True
    assert not _warmup.use_kernels()
    assert not _warmup.use_kernels()          # still compiling: no second process
    assert state.started == 1
    state.cached = True                        # it is done: the kernels load and run
    assert _warmup.use_kernels() and state.ready


def test_another_process_compiling_is_waited_for(state):
    state.other = True
    assert not _warmup.use_kernels() and state.started == 0


def test_a_failed_background_process_means_compiling_on_first_use(state):
    state.foreground = True
    assert _warmup.use_kernels() and state.started == 0


def test_no_background_process_possible_means_compiling_on_first_use(state, monkeypatch):
    monkeypatch.setattr(_warmup, "_start", lambda s: False)
    assert _warmup.use_kernels() and _warmup.use_kernels()


def test_a_long_run_stops_waiting_and_compiles_itself(state, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(_warmup.time, "monotonic", lambda: clock[0])
    state.running = True
    assert not _warmup.use_kernels()
    clock[0] += _warmup.FOREGROUND_AFTER / 2
    assert not _warmup.use_kernels()
    clock[0] += _warmup.FOREGROUND_AFTER
    assert _warmup.use_kernels() and state.started == 1


def test_foreground_mode_never_starts_a_process(state, monkeypatch):
    monkeypatch.setenv(_warmup.ENV_VAR, "foreground")
    assert _warmup.use_kernels() and state.started == 0


def test_kernels_ready_waits_only_while_someone_compiles(state, monkeypatch):
    def no_sleep(seconds):
        raise AssertionError("waited although nobody compiles")

    monkeypatch.setattr(_warmup.time, "sleep", no_sleep)
    assert not _warmup.kernels_ready(wait=600)

    def compiled_meanwhile(seconds):
        state.cached = True

    state.other = True
    monkeypatch.setattr(_warmup.time, "sleep", compiled_meanwhile)
    assert _warmup.kernels_ready(wait=600) and state.started == 0


def test_mode_is_checked(state, monkeypatch):
    monkeypatch.setenv(_warmup.ENV_VAR, "later")
    with pytest.raises(ValueError, match="FLOWSEG_COMPILE: expected one of"):
        _warmup.use_kernels()


def test_a_child_that_failed_is_reported(monkeypatch, caplog):
    fresh = _warmup._State()
    fresh.pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", "exit 3"], os.environ)
    os.waitid(os.P_PID, fresh.pid, os.WEXITED | os.WNOWAIT)     # it has exited (not reaped)
    with caplog.at_level(logging.WARNING, logger=_warmup.__name__):
        assert not _warmup._child_running(fresh)
    assert fresh.foreground and fresh.pid is None
    assert "failed (exit status 3)" in caplog.text


# ----------------------------------------------------------------------------- the process
def test_the_background_process_leaves_when_another_holds_the_lock(tmp_path):
    import fcntl

    lock = tmp_path / "flowseg-compile.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = subprocess.run([sys.executable, "-c", _warmup._CHILD, str(lock), "/nonexistent/__init__.py"],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr          # left before importing anything


def test_someone_compiling_sees_another_process_s_lock(tmp_path):
    lock = tmp_path / "flowseg-compile.lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, sys, time
        f = open({str(lock)!r}, "w"); fcntl.flock(f, fcntl.LOCK_EX)
        print("held", flush=True); sys.stdin.read()""")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _warmup._someone_compiling(lock)
    finally:
        holder.communicate("", timeout=60)
    assert not _warmup._someone_compiling(lock)


@pytest.mark.slow  # ~30-60 s: a background process compiles every kernel into an empty cache
def test_first_run_compiles_nothing_and_the_second_finds_every_kernel(tmp_path):
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from numba.core import event
        compiled = []
        class Listener(event.Listener):
            def on_start(self, ev): compiled.append(ev.data["dispatcher"].py_func.__name__)
            def on_end(self, ev): pass
        event.register("numba:compile", Listener())
        from flowseg.flows import _warmup, flows_to_labels, kernels_ready, labels_to_flows
        from flowseg.synthetic import synthetic_labels
        labels = synthetic_labels("round", shape=(64, 64), seed=0)
        out = flows_to_labels(labels_to_flows(labels), np.where(labels > 0, 9.0, -9.0).astype(np.float32))
        print(int(out.max()), _warmup._STATE.ready, len(compiled))
        if sys.argv[1] == "wait":
            print(kernels_ready(wait=600))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("FLOWSEG_COMPILE", "XDG_CACHE_HOME")}
    env.update(NUMBA_CACHE_DIR=str(tmp_path / "cache"), HOME=str(tmp_path),
               PYTHONPATH=str(Path(flowseg.__file__).parents[1]), OMP_NUM_THREADS="1")
    first = subprocess.run([sys.executable, "-c", code, "wait"], env=env, capture_output=True,
                           text=True, timeout=900, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    cells, ready, compiled, waited = first.stdout.split()
    assert int(cells) > 0 and ready == "False" and compiled == "0" and waited == "True"
    second = subprocess.run([sys.executable, "-c", code, "no"], env=env, capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.split() == [cells, "True", "0"]
