"""Where numba caches the compiled kernels of :mod:`flowseg.flows._kernels`.

numba caches ``cache=True`` functions in the ``__pycache__`` folder beside the source file, else
in a per-user folder (``~/.cache/numba``); when neither is writable (a read-only
``site-packages`` in a container, a user without a home folder) it refuses to define the
function, and ``import flowseg`` would fail. :func:`kernel` decorates the kernels so that, in
that case only and only when the user did not choose a folder with ``NUMBA_CACHE_DIR``, they are
cached in a folder of the temporary directory, or, when that is not writable either, compiled
on every first call of a process without a cache.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KERNELS", "CachePlan", "cache_plan", "kernel", "plan"]

#: The environment variable through which a user chooses numba's cache folder.
ENV_VAR = "NUMBA_CACHE_DIR"


@dataclass(frozen=True)
class CachePlan:
    """How the kernels are compiled.

    Attributes
    ----------
    cache : bool
        Cache compiled code on disk.
    cache_dir : str or None
        Folder to cache in instead of numba's own choice (None: numba's choice).
    """

    cache: bool
    cache_dir: str | None = None


def cache_plan(*, user_choice: str | None, defaults: Sequence[Path], fallback: Path,
               writable: Callable[[Path], bool]) -> CachePlan:
    """Choose where to cache (pure but for ``writable``).

    Parameters
    ----------
    user_choice : str or None
        ``NUMBA_CACHE_DIR`` as set by the user (empty or None: not set); when set, numba's own
        rules apply unchanged.
    defaults : sequence of Path
        The folders numba tries by itself, in its order.
    fallback : Path
        The folder to use when none of ``defaults`` is writable.
    writable : callable
        ``writable(folder)``: can it be created (if missing) and written.

    Returns
    -------
    CachePlan
    """
    if user_choice or any(writable(folder) for folder in defaults):
        return CachePlan(cache=True)
    if writable(fallback):
        return CachePlan(cache=True, cache_dir=str(fallback))
    return CachePlan(cache=False)


def _writable(folder: Path) -> bool:
    """numba's own test: the folder can be made and a file written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def _numba_user_dir() -> Path:
    """numba's per-user cache folder (``~/.cache/numba`` on Linux)."""
    try:
        from numba.misc.appdirs import AppDirs

        return Path(AppDirs(appname="numba", appauthor=False).user_cache_dir)
    except (ImportError, AttributeError):  # numba moved it: the documented Linux default
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "numba"


def _fallback_dir() -> Path:
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"flowseg-numba-cache-{user}"


_PLAN = cache_plan(user_choice=os.environ.get(ENV_VAR),
                   defaults=(Path(__file__).parent / "__pycache__", _numba_user_dir()),
                   fallback=_fallback_dir(), writable=_writable)


def plan() -> CachePlan:
    """How this process compiles the kernels (chosen once, at import)."""
    return _PLAN


@contextlib.contextmanager
def _cache_dir(folder: str | None) -> Iterator[None]:
    """numba's ``config.CACHE_DIR`` set to ``folder`` while functions are decorated (numba
    fixes a function's cache folder when it is decorated; other libraries keep their own)."""
    if folder is None:
        yield
        return
    from numba.core import config

    saved = config.CACHE_DIR
    config.CACHE_DIR = folder
    try:
        yield
    finally:
        config.CACHE_DIR = saved


#: ``(dispatcher, signature)`` of every kernel declared with a signature, in declaration order.
KERNELS: list[tuple[Callable, tuple]] = []


def kernel(func: Callable | None = None, *, signature: tuple | None = None, **options):
    """``numba.njit(cache=...)`` with the cache folder of this module's plan.

    Use as ``@kernel``, ``@kernel(inline="always")`` or ``@kernel(signature=(types...))``. A
    ``signature`` (a tuple of numba argument types) does not make compilation eager: it
    registers the kernel in :data:`KERNELS`, the list :mod:`flowseg.flows._warmup` compiles
    ahead of use, and callers must pass exactly these types.
    """
    from numba import njit

    def decorate(f: Callable):
        with _cache_dir(_PLAN.cache_dir):
            dispatcher = njit(cache=_PLAN.cache, **options)(f)
        if signature is not None:
            KERNELS.append((dispatcher, signature))
        return dispatcher

    return decorate if func is None else decorate(func)
