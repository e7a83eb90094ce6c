"""Time of a study's report, step by step, without and with the feature analysis, in one run.

Runs on a copy of the SQLite storage (the report writes its figures and note into the study), so
the original is left as it was. Prints each step's seconds for both reports side by side, the
ratio of their totals, and the size of what was written.

    python experiments/bench_report.py [--storage runs/studies.db] [--study shapes-heuristic] [--device cpu]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

import optuna

from difffeat_tune.report import Report, write_report


def _size(report: Report) -> str:
    html = report.html.stat().st_size
    static = sum(p.stat().st_size for p in report.files if p.suffix in (".png", ".pdf"))
    return f"HTML {html / 1e6:.1f} MB, PNG+PDF {static / 1e6:.1f} MB, {len(report.figures)} figures"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", type=Path, default=Path("runs") / "studies.db", help="a SQLite study file")
    parser.add_argument("--study", default="shapes-heuristic")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "studies.db"
        shutil.copy(args.storage, copy)
        url = f"sqlite:///{copy}"
        reports = {"figures only": write_report(url, args.study, Path(tmp) / "figures", features=False,
                                                device=args.device),
                   "with features": write_report(url, args.study, Path(tmp) / "features", device=args.device)}
        steps = list(dict.fromkeys(step for r in reports.values() for step in r.timings))
        print(f"report of {args.study} ({args.storage})")
        print(f"{'step (s)':<36}" + "".join(f"{name:>16}" for name in reports))
        for step in steps:
            print(f"{step:<36}" + "".join(f"{r.timings.get(step, 0.0):>16.2f}" for r in reports.values()))
        print(f"{'total':<36}" + "".join(f"{r.seconds:>16.2f}" for r in reports.values()))
        first, second = reports.values()
        print(f"with features / figures only: {second.seconds / first.seconds:.2f}x")
        for name, report in reports.items():
            print(f"{name}: {_size(report)}; not shown: {report.skipped or 'nothing'}")


if __name__ == "__main__":
    main()
