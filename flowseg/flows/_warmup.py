"""Compiling the numba kernels without making the first run wait.

On a new machine (a fresh install, container, CI job or Dask worker image) numba has nothing
cached, and compiling the kernels of :mod:`flowseg.flows._kernels` takes 15-25 s of CPU
(``benchmarks/cold_start.py``). So, by default, the first call that needs them does not wait:

1. :func:`use_kernels` loads from numba's disk cache every kernel registered with its one
   signature (:data:`flowseg.flows._numba_cache.KERNELS`); when all are there (the steady
   state) the caller runs them;
2. when one is missing, the caller takes the torch route on the CPU instead (the same bits,
   tested) and one background process, at the lowest priority (nice 19), compiles all kernels
   into the cache; it outlives a short first run, so the next run finds them. Later calls of
   the same process switch to the kernels as soon as the cache holds them, or, after
   :data:`FOREGROUND_AFTER` seconds on the torch route (a long run on a busy machine), compile
   the missing ones themselves.

``FLOWSEG_COMPILE=foreground`` restores compiling on first use in the calling process (the
first call waits). The kernels also compile on first use where a background process cannot
help or cannot start: no writable cache folder, ``NUMBA_DISABLE_JIT``, no ``posix_spawn`` /
``fcntl`` (Windows), or a background compilation that failed. :func:`compile_kernels` compiles
them all at once, e.g. while building a container image on the machine type it will run on.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

from flowseg.flows._numba_cache import KERNELS, plan

__all__ = ["ENV_VAR", "compile_kernels", "kernels_ready", "use_kernels"]

log = logging.getLogger(__name__)

#: The environment variable that chooses the mode: "background" (default) or "foreground".
ENV_VAR = "FLOWSEG_COMPILE"
_MODES = ("background", "foreground")
_LOCK_NAME = "flowseg-compile.lock"
_MAX_STARTS = 3       # background processes one process may start (one is the rule)
#: Seconds a process takes the torch route before it compiles the kernels itself: a long run
#: on a machine too busy for the background process (it runs at nice 19) gains more from them.
FOREGROUND_AFTER = 60.0

# What the background process runs, in its own interpreter: the lock first (it leaves at once
# when another process holds it), the lowest priority, then flowseg imported from the very
# files of the parent, then the compilation.
_CHILD = """
import fcntl, os, sys
lock, init = sys.argv[1], sys.argv[2]
fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    sys.exit(0)                                   # another process is compiling them
try:
    os.nice(19)
except OSError:
    pass
import importlib.util
spec = importlib.util.spec_from_file_location("flowseg", init,
                                              submodule_search_locations=[os.path.dirname(init)])
module = importlib.util.module_from_spec(spec)
sys.modules["flowseg"] = module
spec.loader.exec_module(module)
from flowseg.flows._warmup import compile_kernels
compile_kernels()
"""


class _State:
    """This process's view: kernels loaded, and the background process it started."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ready = False
        self.pid: int | None = None
        self.starts = 0
        self.foreground = False             # compile on first use from now on
        self.since: float | None = None     # first time this process took the torch route


_STATE = _State()


def _mode() -> str:
    mode = os.environ.get(ENV_VAR, "").strip().lower() or "background"
    if mode not in _MODES:
        raise ValueError(f"{ENV_VAR}: expected one of {_MODES}, got {mode!r}")
    return mode


def _registered() -> list:
    from flowseg.flows import _kernels  # noqa: F401  (declaring the kernels registers them)

    return KERNELS


def _loaded(dispatcher, signature: tuple) -> bool:
    """Load ``dispatcher``'s compiled code for ``signature`` from numba's disk cache, as its
    own ``compile`` does on a cache hit; False when the cache does not hold it (nothing is
    compiled). True also where this cannot be told (then the kernel compiles on first call)."""
    try:
        if tuple(signature) in dispatcher.overloads:
            return True
        cache, context = dispatcher._cache, dispatcher.targetctx
        if not _indexed(cache):
            return False
        found = cache.load_overload(signature, context)
        if found is None:
            return False
        context.insert_user_function(found.entry_point, found.fndesc, [found.library])
        dispatcher.add_overload(found)
    except Exception:      # noqa: BLE001  (NUMBA_DISABLE_JIT, or numba's internals moved)
        return True
    return True


def _indexed(cache) -> bool:
    """Whether the cache's index file lists anything for the kernel's current source: a check
    without initialising numba's compiler (``load_overload`` does, ~0.5 s of a run that would
    never use it). True where this cannot be told."""
    try:
        return bool(cache._cache_file._load_index())
    except Exception:      # noqa: BLE001  (numba's internals moved)
        return True


def _load_cached() -> bool:
    """True when every registered kernel is compiled in this process (loaded if needed)."""
    return all(_loaded(dispatcher, signature) for dispatcher, signature in _registered())


def _lock_path() -> Path | None:
    """The lock file beside the kernels' cache (None where numba does not say where it is)."""
    try:
        return Path(_registered()[0][0]._cache.cache_path) / _LOCK_NAME
    except (AttributeError, IndexError, TypeError):
        return None


def _someone_compiling(lock: Path) -> bool:
    """True while some process holds the compilation lock."""
    import fcntl

    try:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)          # closing releases a lock taken here
    return False


def _child_running(state: _State) -> bool:
    """True while the background process this process started runs; notes its failure."""
    if state.pid is None:
        return False
    try:
        pid, status = os.waitpid(state.pid, os.WNOHANG)
    except ChildProcessError:          # not our child (a forked copy of this process)
        pid, status = state.pid, 0
    if pid == 0:
        return True
    state.pid = None
    if os.waitstatus_to_exitcode(status) != 0:
        state.foreground = True
        log.warning("background compilation of the numba kernels failed (exit status %d): "
                    "they compile on first use instead", os.waitstatus_to_exitcode(status))
    return False


def _start(state: _State) -> bool:
    """Start the background compilation (nice 19, no output); False where it cannot start
    (then the kernels compile on first use). Its own process group keeps it alive through a
    Ctrl-C of the caller; it stays in the caller's session, because a new session would get a
    scheduler group of its own (Linux autogroups), where nice 19 no longer yields to the caller."""
    import flowseg

    lock = _lock_path()
    if (lock is None or not sys.executable or not hasattr(os, "posix_spawn")
            or state.starts >= _MAX_STARTS):
        return False
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    try:
        state.pid = os.posix_spawn(sys.executable, [sys.executable, "-c", _CHILD, str(lock),
                                                    str(Path(flowseg.__file__).resolve())],
                                   os.environ, file_actions=quiet, setpgroup=0)
    except (OSError, NotImplementedError, ValueError) as err:
        log.warning("cannot start the background compilation of the numba kernels (%s): they "
                    "compile on first use instead", err)
        return False
    state.starts += 1
    log.info("numba kernels not compiled yet: the CPU takes the torch route while process %d "
             "compiles them in the background", state.pid)
    return True


def use_kernels() -> bool:
    """Should a CPU caller run the compiled kernels now?

    Returns
    -------
    bool
        True: the kernels are loaded (or compile on first call: ``FLOWSEG_COMPILE=foreground``,
        or no background compilation possible). False: take the torch route; a background
        process is compiling them.
    """
    state = _STATE
    if state.ready:
        return True
    if _mode() == "foreground" or not plan().cache:
        return True
    with state.lock:
        if state.ready or _load_cached():
            state.ready = True
            return True
        now = time.monotonic()
        state.since = now if state.since is None else state.since
        if not state.foreground and now - state.since > FOREGROUND_AFTER:
            log.info("numba kernels still not compiled after %.0f s on the torch route: "
                     "compiling them here", now - state.since)
            state.foreground = True
        running = _child_running(state)         # (reaps it when done; notes a failure)
        if state.foreground:
            return True
        if running:
            return False
        lock = _lock_path()
        if lock is not None and _someone_compiling(lock):
            return False                  # another process's background compilation
        state.foreground = not _start(state)
        return state.foreground


def kernels_ready(*, wait: float = 0.0) -> bool:
    """Whether the compiled kernels are in numba's cache (they are then loaded), waiting up to
    ``wait`` seconds while a background compilation (of any process) runs. Starts nothing."""
    deadline = time.monotonic() + wait
    lock = _lock_path()
    while True:
        with _STATE.lock:
            if _STATE.ready or _load_cached():
                _STATE.ready = True
                return True
            ours = _child_running(_STATE)       # started, perhaps not holding the lock yet
        compiling = ours or (lock is not None and _someone_compiling(lock))
        if time.monotonic() >= deadline or not compiling:
            with _STATE.lock:                 # (it may have finished since the check above)
                _STATE.ready = _STATE.ready or _load_cached()
            return _STATE.ready
        time.sleep(min(0.25, max(deadline - time.monotonic(), 0.0)))


def compile_kernels() -> None:
    """Compile (or load from the cache) every kernel for its signature, in this process."""
    for dispatcher, signature in _registered():
        dispatcher.compile(signature)
    _STATE.ready = True
