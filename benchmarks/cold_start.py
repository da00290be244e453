"""Cold start: the first run after installation against the next one, and where the gap goes.

    python benchmarks/cold_start.py                  # one fresh cache: first run, second run
    python benchmarks/cold_start.py --pairs 2 --image path/to/image.png --no-cli

Every run is a fresh Python process with ``NUMBA_CACHE_DIR`` and ``HOME`` pointed at folders of
a new temporary directory (empty before the pair's first run, shared by its second run), and
``PYTHONPATH`` at this checkout. Each process times, in order:

- ``import flowseg``;
- ``flowseg.load_model()`` (the shipped default model);
- ``flowseg.segment([image], model)`` of one 704x520 image (default: the first shipped
  Sartorius sample, read before the clock starts).

Then, on another fresh cache, the program as a user runs it: ``flowseg-segment IMAGE --out
DIR`` (its ``run`` entry point, process wall time), first and second run (``--no-cli``: skip).

numba's ``numba:compile`` events (fired only when a function is compiled, never when it is
loaded from the cache) give the breakdown of the first run: every kernel of
``flowseg.flows._kernels`` that compiled, its argument types, its wall time (inclusive of the
numba and numpy implementations compiled for it, which are counted as "nested") and numba's
own timers for it (``compiler_lock``: typing, lowering and LLVM; ``llvm_lock``: LLVM alone).

"process CPU s" is the CPU time of the process itself (a background compilation it starts is
not waited for, so not counted there; the wait below shows its time): less sensitive to other
load on the machine than wall time. Between the two runs of a pair the script waits for any
background kernel compilation that the first run left behind (``flowseg.flows.kernels_ready``),
so that the second run is the steady state; the wait is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT / "flowseg" / "samples" / "sartorius_7ae19de7bc2a.png"

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from numba.core import event

compiles, stack = [], []

class Listener(event.Listener):
    def on_start(self, ev):
        stack.append(time.perf_counter())

    def on_end(self, ev):
        seconds = time.perf_counter() - stack.pop()
        d = ev.data["dispatcher"]
        compiles.append({"module": getattr(d.py_func, "__module__", ""), "name": d.py_func.__name__,
                         "args": str(ev.data["args"]), "seconds": seconds, "depth": len(stack),
                         "dispatcher": d})

event.register("numba:compile", Listener())
import flowseg
t1 = time.perf_counter()
model = flowseg.load_model()
t2 = time.perf_counter()
from flowseg.io.images import read_image
image = read_image(sys.argv[1])
t3 = time.perf_counter()
result = flowseg.segment([image], model)
t4 = time.perf_counter()
for c in compiles:
    d = c.pop("dispatcher")
    timers = {}
    for sig, overload in d.overloads.items():
        if str(sig) == c["args"]:
            timers = dict(overload.metadata.get("timers", {})) if overload.metadata else {}
    c["timers"] = timers
print("RESULT " + json.dumps({
    "import": t1 - t0, "load": t2 - t1, "segment": t4 - t3, "cells": int(result[0].n_instances),
    "compiles": compiles}))
"""

_WAIT = r"""
import sys, time
from flowseg.flows import kernels_ready
t = time.perf_counter()
ok = kernels_ready(wait=float(sys.argv[1]))
print("WAIT", ok, time.perf_counter() - t)
"""


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(NUMBA_CACHE_DIR=str(root / "numba_cache"), HOME=str(root / "home"),
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(root: Path, image: Path) -> dict:
    """One fresh process: import, load, segment; its timings and numba compile events."""
    start, cpu = time.perf_counter(), _cpu_of_children()
    done = subprocess.run([sys.executable, "-c", _CHILD, str(image)], env=_env(root), cwd=root,
                          capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    cpu = _cpu_of_children() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    out["process"], out["cpu"] = wall, cpu
    return out


def _wait_for_background(root: Path, limit: float) -> float | None:
    """Seconds spent waiting for background kernel compilation (None: flowseg has none, or
    none ran: ``FLOWSEG_COMPILE=foreground``)."""
    done = subprocess.run([sys.executable, "-c", _WAIT, str(limit)], env=_env(root), cwd=root,
                          capture_output=True, text=True, timeout=limit + 120)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WAIT ")), None)
    if line is None:
        return None
    _, ok, seconds = line.split()
    if ok != "True" and float(seconds) >= limit:
        raise RuntimeError(f"background compilation did not finish within {limit} s")
    return float(seconds) if ok == "True" else None


def _run_cli(root: Path, image: Path) -> tuple[float, float]:
    """One ``flowseg-segment IMAGE --out DIR`` process: its wall and CPU seconds."""
    code = "import sys; from flowseg.cli.segment import run; sys.exit(run(sys.argv[1:]))"
    out = tempfile.mkdtemp(prefix="out-", dir=root)       # empty: a re-run skips finished images
    start, cpu = time.perf_counter(), _cpu_of_children()
    done = subprocess.run([sys.executable, "-c", code, str(image), "--out", out, "--quiet"],
                          env=_env(root), cwd=root, capture_output=True, text=True, timeout=900)
    wall, cpu = time.perf_counter() - start, _cpu_of_children() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"flowseg-segment failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, cpu


def _fresh(tmp: str) -> Path:
    root = Path(tmp)
    (root / "home").mkdir()
    (root / "numba_cache").mkdir()
    return root


def _in_process(run: dict) -> float:
    return run["import"] + run["load"] + run["segment"]


def _compile_total(run: dict) -> float:
    return sum(c["seconds"] for c in run["compiles"] if c["depth"] == 0)


def _timing_table(first: list[dict], second: list[dict]) -> None:
    keys = ("import", "load", "segment", "process", "cpu")
    print("| run | import flowseg s | load model s | segment one image s | in-process total s "
          "| process wall s | process CPU s | kernels compiled | compile s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, runs in (("first (empty cache)", first), ("second (same cache)", second)):
        med = {k: statistics.median(r[k] for r in runs) for k in keys}
        total = statistics.median(_in_process(r) for r in runs)
        kernels = statistics.median(sum(c["depth"] == 0 for c in r["compiles"]) for r in runs)
        comp = statistics.median(_compile_total(r) for r in runs)
        print(f"| {name} | {med['import']:.2f} | {med['load']:.2f} | {med['segment']:.2f} | "
              f"{total:.2f} | {med['process']:.2f} | {med['cpu']:.2f} | {kernels:g} | {comp:.2f} |")
    diff = {k: statistics.median(a[k] - b[k] for a, b in zip(first, second)) for k in keys}
    total = statistics.median(_in_process(a) - _in_process(b) for a, b in zip(first, second))
    print(f"| **first - second** | {diff['import']:.2f} | {diff['load']:.2f} | {diff['segment']:.2f} | "
          f"**{total:.2f}** | **{diff['process']:.2f}** | {diff['cpu']:.2f} | | |")


def _breakdown_table(run: dict) -> None:
    tops, nested = [], []
    for c in run["compiles"]:          # events end inner-first: nested ones precede their parent
        if c["depth"] == 0:
            tops.append((c, nested))
            nested = []
        else:
            nested.append(c)
    print("\n| kernel (first run) | argument types | compile s | numba compiler_lock s | "
          "numba llvm_lock s | nested compiles (s) |")
    print("|---|---|---|---|---|---|")
    for c, inner in sorted(tops, key=lambda t: -t[0]["seconds"]):
        direct = sum(n["seconds"] for n in inner if n["depth"] == 1)
        args = c["args"].replace("Array(", "(").replace(", aligned=True", "").replace("'C', False", "C")
        t = c["timers"]
        print(f"| {c['module'].rsplit('.', 1)[-1]}.{c['name']} | `{args}` | {c['seconds']:.2f} | "
              f"{t.get('compiler_lock', float('nan')):.2f} | {t.get('llvm_lock', float('nan')):.2f} | "
              f"{len(inner)} ({direct:.2f}) |")
    print(f"| **all** | | **{_compile_total(run):.2f}** | | | |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=1, help="fresh caches, each with a first and a second run")
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    p.add_argument("--wait-limit", type=float, default=600.0,
                   help="longest wait for background compilation between the runs of a pair")
    p.add_argument("--no-cli", dest="cli", action="store_false",
                   help="skip the flowseg-segment program runs")
    args = p.parse_args(argv)
    first, second, waits, cli = [], [], [], []
    for _ in range(args.pairs):
        with tempfile.TemporaryDirectory(prefix="flowseg-cold-") as tmp:
            root = _fresh(tmp)
            first.append(_run(root, args.image))
            waits.append(_wait_for_background(root, args.wait_limit))
            second.append(_run(root, args.image))
        if args.cli:
            with tempfile.TemporaryDirectory(prefix="flowseg-cold-") as tmp:
                root = _fresh(tmp)
                one = _run_cli(root, args.image)
                waits.append(_wait_for_background(root, args.wait_limit))
                cli.append((one, _run_cli(root, args.image)))
    print(f"python {sys.version.split()[0]}, image {args.image.name}, {args.pairs} fresh cache(s), "
          f"medians; cells found: first {first[0]['cells']}, second {second[0]['cells']}")
    if any(w is not None for w in waits):
        print("waited for background compilation between the runs: "
              + ", ".join(f"{w:.1f} s" for w in waits if w is not None))
    print()
    _timing_table(first, second)
    if cli:
        print("\n| `flowseg-segment IMAGE --out DIR` | first | second | first - second |")
        print("|---|---|---|---|")
        for k, what in ((0, "process wall s"), (1, "process CPU s")):
            one, two = (statistics.median(c[i][k] for c in cli) for i in (0, 1))
            diff = statistics.median(c[0][k] - c[1][k] for c in cli)
            print(f"| {what} | {one:.2f} | {two:.2f} | **{diff:.2f}** |")
    _breakdown_table(first[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
