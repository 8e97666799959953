"""Quickstart wall time under shared cores: which thread setting survives busy neighbours.

Runs ``adaptrain train quickstart`` (fresh interpreter each time, imports included) with each
thread setting, first on an idle machine and then next to ``--competitors`` busy processes
(``yes > /dev/null``) that this script starts and ends itself, by PID. Settings are
interleaved within a repeat so drift in the machine's state hits them alike.

    python benchmarks/contention.py --repeats 2 --out docs/contention.json

A setting is ``THREADS`` or ``THREADS:ENV=VALUE`` (e.g. ``2:OMP_WAIT_POLICY=PASSIVE``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(setting: str, epochs: int, work: Path) -> float:
    threads, _, assign = setting.partition(":")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if assign:
        key, _, value = assign.partition("=")
        env[key] = value
    out = Path(tempfile.mkdtemp(dir=work))
    cmd = [sys.executable, "-m", "adaptrain", "train", "quickstart", "--out", str(out / "run"),
           "--threads", threads, f"epochs={epochs}"]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["1", "2", "2:OMP_WAIT_POLICY=PASSIVE"])
    parser.add_argument("--competitors", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="contention-"))
    rows: dict[str, dict[str, list[float]]] = {"idle": {}, "busy": {}}
    for load in ("idle", "busy"):
        hogs = []
        if load == "busy":
            hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
                    for _ in range(args.competitors)]
        try:
            for _ in range(args.repeats):
                for setting in args.settings:
                    seconds = run_once(setting, args.epochs, work)
                    rows[load].setdefault(setting, []).append(seconds)
                    print(f"{load:5s} threads={setting:28s} {seconds:7.1f} s", flush=True)
        finally:
            for hog in hogs:  # only the processes started here
                hog.terminate()
                hog.wait()
    table = {load: {s: {"median_s": statistics.median(v), "runs_s": v} for s, v in per.items()}
             for load, per in rows.items()}
    args.out.write_text(json.dumps({"epochs": args.epochs, "competitors": args.competitors,
                                    "cpus": os.cpu_count(), "results": table}, indent=2) + "\n")
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
