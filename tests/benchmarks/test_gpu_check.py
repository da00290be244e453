"""benchmarks/gpu_check.sh --dry-run: the GPU check's plumbing, on the CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("pytest -m gpu", "flows -> labels, CPU == CUDA", "flows -> labels, batch 32 x 520x704",
        "segment end to end, batch 32 x 520x704", "training, 100 steps, bf16 AMP, batch 8 x 256^2")


@pytest.mark.slow  # ~30 s on a shared 2-core machine: five processes, each importing torch
def test_dry_run_prints_the_table_with_every_row():
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "NOT a measurement" in done.stdout
    table = done.stdout[done.stdout.index("| check | figure | goal | result |"):].splitlines()
    assert len(table) == 2 + len(ROWS)
    for line, title in zip(table[2:], ROWS):
        assert line.startswith(f"| {title} |")
        assert "FAIL" not in line


def test_a_check_that_left_no_row_fails_the_table(tmp_path):
    """A check killed by its timeout writes nothing: its row must still show, as FAIL."""
    results = tmp_path / "rows.jsonl"
    results.write_text('{"check": "equality", "figure": "6/6 images identical", "ok": true}\n')
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "table",
                           "--results", str(results)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    lines = {line.split(" | ")[0][2:]: line
             for line in done.stdout.splitlines() if line.startswith("| ")}
    assert lines["flows -> labels, CPU == CUDA"].endswith("| PASS |")
    for title in set(ROWS) - {"flows -> labels, CPU == CUDA"}:
        assert "did not finish" in lines[title] and lines[title].endswith("| FAIL |")
