"""Score models on the val and test folds of a Sartorius split, against the competition's train.csv.

The protocol of the default model (``flowseg/model/weights/MODEL_CARD.md``): ``data_prep
sartorius ... --val-fraction 0.1 --test-fraction 0.2 --seed 0`` makes ``train/``, ``val/`` and
``test/``; checkpoints and thresholds are chosen on ``val/`` only, and ``test/`` is scored once at
the end. Every model here is run the way a user runs it (``flowseg-segment FOLDER --model M
--out DIR``, no other flag) and scored with ``flowseg-evaluate --truth train.csv --ids FOLDER``
(the competition's instances, overlaps and holes as annotated, not the hole-filled training
masks). Cellpose baselines come as prediction folders written by ``cellpose_baseline.py
--predict val,test`` (``RUN/pred_val``, ``RUN/pred_test``).

    python benchmarks/sartorius_split.py --csv ../shared/data/sartorius_dev/train.csv \\
        --data .devdata/sartorius --out runs/split_report \\
        --model "flowseg tuned=runs/sartorius_w16/tuned.pt" --cellpose "cellpose=runs/cellpose_20ep"

Prints one table: model, fold, mean AP per cell type and over all images, and for flowseg models
the wall and CPU seconds per image of the ``flowseg-segment`` run (model loading, reading and
writing included; ``--overwrite``, so a re-run is timed whole; on a shared machine the CPU
seconds of a 1-thread run, ``OMP_NUM_THREADS=1``, move less with the load than wall seconds);
each report is written under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from flowseg.cli import evaluate as evaluate_cli
from flowseg.cli import segment as segment_cli

FOLDS = ("val", "test")
TYPES = ("astro", "cort", "shsy5y")


def _named(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def _score(csv: Path, fold_dir: Path, pred: Path, report: Path) -> dict:
    code = evaluate_cli.main(["--truth", str(csv), "--ids", str(fold_dir), "--pred", str(pred),
                              "--out", str(report), "--quiet"])
    if code != 0:
        raise SystemExit(f"evaluate failed on {pred} (exit {code})")
    return json.loads((report / "summary.json").read_text())


def _segment(model: Path, fold_dir: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """Wall and CPU (this process, all threads) seconds of ``flowseg-segment`` over the fold,
    model loading, reading and writing included."""
    wall, cpu = time.perf_counter(), time.process_time()
    code = segment_cli.main([str(fold_dir), "--model", str(model), "--out", str(out), "--quiet",
                             "--overwrite", *extra])
    if code != 0:
        raise SystemExit(f"flowseg-segment failed on {fold_dir} (exit {code})")
    return time.perf_counter() - wall, time.process_time() - cpu


def _row(name: str, fold: str, summary: dict, seconds: tuple[float, float] | None = None) -> str:
    per = summary["per_class"]
    counts = summary["n_images_per_class"]
    cells = [f"{per[t]:.3f} ({counts[t]})" if t in per else "-" for t in TYPES]
    n = summary["n_images"]
    per_image = "- | -" if seconds is None else f"{seconds[0] / n:.2f} | {seconds[1] / n:.2f}"
    return (f"| {name} | {fold} | " + " | ".join(cells)
            + f" | {summary['mean_ap']:.3f} ({n}) | {per_image} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", type=Path, required=True, help="the competition train.csv (the truth)")
    p.add_argument("--data", type=Path, required=True, help="data_prep output with val/ and test/")
    p.add_argument("--out", type=Path, required=True, help="predictions and reports go here")
    p.add_argument("--model", type=_named, action="append", default=[], metavar="NAME=MODEL.pt",
                   help="a flowseg model to run with flowseg-segment's defaults; repeatable")
    p.add_argument("--cellpose", type=_named, action="append", default=[], metavar="NAME=RUN",
                   help="a cellpose_baseline.py run folder holding pred_val/ and pred_test/; repeatable")
    p.add_argument("--folds", default=",".join(FOLDS), help="comma list of folds (default val,test)")
    p.add_argument("--segment-args", default="", help="extra flowseg-segment options, e.g. '--tta'")
    args = p.parse_args()
    folds = args.folds.split(",")
    rows = []
    for name, model in args.model:
        for fold in folds:
            pred = args.out / name.replace(" ", "_") / f"pred_{fold}"
            seconds = _segment(model, args.data / fold, pred, args.segment_args.split())
            summary = _score(args.csv, args.data / fold, pred, pred.with_name(f"report_{fold}"))
            rows.append(_row(name, fold, summary, seconds))
    for name, run in args.cellpose:
        for fold in folds:
            report = args.out / name.replace(" ", "_") / f"report_{fold}"
            rows.append(_row(name, fold, _score(args.csv, args.data / fold, run / f"pred_{fold}", report)))
    print("| model | fold | " + " | ".join(f"{t} (images)" for t in TYPES)
          + " | all (images) | wall s/image | CPU s/image |")
    print("|---|---|" + "---|" * (len(TYPES) + 3))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
