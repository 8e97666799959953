"""``adaptrain report RUN [RUN ...]``: comparison table, learning curves and telemetry plots
(:func:`adaptrain.report.write_report`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..report import write_report


def run(args: argparse.Namespace) -> int:
    runs = [Path(p) for p in args.runs]
    out = Path(args.out) if args.out else runs[0] / "report"
    path = write_report(runs, out)
    print(path.read_text(), end="")
    print(f"written to {path.parent}")
    return 0


def add_parser(sub: Any) -> None:
    r = sub.add_parser("report", help="tables and plots from run directories")
    r.add_argument("runs", nargs="+", help="run directories")
    r.add_argument("--out", default=None, help="output directory (default: first run /report)")
    r.set_defaults(fn=run)
