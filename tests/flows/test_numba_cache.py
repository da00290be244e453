import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import flowseg
from flowseg.flows._numba_cache import CachePlan, cache_plan

IN_TREE, USER, TEMP = Path("/pkg/__pycache__"), Path("/home/u/.cache/numba"), Path("/tmp/f")


@pytest.mark.parametrize("user_choice, writable, expected", [
    (None, {IN_TREE, USER, TEMP}, CachePlan(cache=True)),                  # numba's own choice
    (None, {USER}, CachePlan(cache=True)),                                 # read-only package
    (None, {TEMP}, CachePlan(cache=True, cache_dir=str(TEMP))),            # and no home either
    (None, set(), CachePlan(cache=False)),                                 # nothing writable
    ("/mine", set(), CachePlan(cache=True)),                               # the user decides
    ("", {TEMP}, CachePlan(cache=True, cache_dir=str(TEMP))),              # empty = not set
])
def test_cache_plan(user_choice, writable, expected):
    assert cache_plan(user_choice=user_choice, defaults=(IN_TREE, USER), fallback=TEMP,
                      writable=writable.__contains__) == expected


@pytest.mark.parametrize("how", [
    "blocked",  # a *file* where the folders would be: no folder can be made there, even by root
    pytest.param("chmod", marks=pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() == 0, reason="chmod does not stop root")),
])
def test_import_works_with_read_only_package_and_home(tmp_path, how):
    """As in a container: no writable __pycache__ beside the package, no writable home."""
    package = Path(flowseg.__file__).parent
    site = tmp_path / "site"
    shutil.copytree(package, site / "flowseg",
                    ignore=shutil.ignore_patterns("__pycache__", "weights", "samples"))
    pycache, home = site / "flowseg" / "flows" / "__pycache__", tmp_path / "home"
    if how == "blocked":
        pycache.write_text("not a folder")
        (tmp_path / "not_a_folder").write_text("")
        home = tmp_path / "not_a_folder" / "home"
    else:
        for folder in (pycache, home):
            folder.mkdir()
            folder.chmod(0o555)
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), TMPDIR=str(tmp_path / "tmp"), PYTHONPATH=str(site),
               PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    code = ("import numpy as np, flowseg\n"
            "from flowseg.flows import _kernels\n"
            "assert flowseg.__file__.startswith(%r)\n"
            "print(_kernels.same_label_neighbours(np.ones((1, 2, 2), np.int32)).tolist())\n"
            % str(site))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["[7,", "28,", "193,", "112]"]
    cached = list((tmp_path / "tmp").glob("flowseg-numba-cache-*/*/_kernels.same_label_*"))
    assert cached, "the kernel was not cached in the temporary folder"
