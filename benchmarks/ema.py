"""PGD-AT's raw weights against their moving average, per epoch, in the same runs (docs/ema.md).

The moving average does not change the training (tests/test_ema.py checks that the raw weights
of an EMA run are bit-identical to those of the run without it), so one run of ``pgd-at-ema``
per seed holds PGD-AT and PGD-AT + EMA: metrics.csv validates both after every epoch on the
same held-out images with the same attack and attack seed (``robust_acc`` / ``ema_robust_acc``).
Tabulated per weight set, mean over seeds: the best and last validation robust accuracy, the
best - last gap, and the mean absolute change from one epoch to the next (smoothness); then
the plan's test-set evaluation of the last checkpoint's raw and averaged weights and of the
best (EMA-selected) average.

    python benchmarks/ema.py benchmarks/plans/ema.yaml --out bench-out/ema --workers 2

Plans, ``{data_root}``, resuming and threads as in benchmarks/compare.py. Results: OUT/ema.md.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from compare import adaptrain_cmd, data_root, load_plan, plan_parser, run_dir, train_cmds

EVALS = (("last", "raw"), ("last", "ema"))


def job(out: Path, entry: dict, seed: int, plan: dict, threads: int) -> str:
    d = run_dir(out, entry["label"], seed)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = out / "logs" / f"{entry['label']}-seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmds = train_cmds(d, entry, seed, plan)
    for which, weights in EVALS:
        dest = d / "eval" / f"{which}-{weights}.json"
        if not dest.is_file():
            cmds.append([*adaptrain_cmd(), "eval", str(d), "--checkpoint", which, "--weights",
                         weights, "--out", str(dest), "--quiet", *plan.get("eval", [])])
    for cmd in cmds:
        with open(log, "a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            if subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode:
                return f"FAILED {entry['label']} seed {seed}: see {log}"
    return f"ok {entry['label']} seed {seed}"


def curve_stats(values: list[float]) -> dict[str, float]:
    steps = [abs(b - a) for a, b in zip(values[:-1], values[1:], strict=True)]
    return {"best": max(values), "last": values[-1], "gap": max(values) - values[-1],
            "mean_abs_change": statistics.fmean(steps) if steps else 0.0}


def pct(values: list[float]) -> str:
    m = 100 * statistics.fmean(values)
    return f"{m:.2f}" if len(values) < 2 else f"{m:.2f} ± {100 * statistics.stdev(values):.2f}"


def collect(out: Path, plan: dict) -> str:
    lines = []
    for entry in plan["runs"]:
        label, seeds = entry["label"], plan["seeds"]
        rows = {s: list(csv.DictReader((run_dir(out, label, s) / "metrics.csv").open()))
                for s in seeds}
        lines += [f"## {label}: validation robust accuracy per epoch (%)", "",
                  "| epoch | " + " | ".join(f"raw s{s} | ema s{s}" for s in seeds) + " |",
                  "|---|" + "---|---|" * len(seeds)]
        for i in range(max(len(r) for r in rows.values())):
            cells = []
            for s in seeds:
                r = rows[s][i] if i < len(rows[s]) else {}
                cells += [f"{100 * float(r['robust_acc']):.1f}" if r else "-",
                          f"{100 * float(r['ema_robust_acc']):.1f}" if r else "-"]
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
        lines += ["", "| weights | best | last | best - last | mean abs change / epoch |",
                  "|---|---|---|---|---|"]
        for name, key in (("raw", "robust_acc"), ("ema", "ema_robust_acc")):
            stats = [curve_stats([float(r[key]) for r in rows[s]]) for s in seeds]
            lines.append(f"| {name} | " + " | ".join(
                pct([st[k] for st in stats]) for k in ("best", "last", "gap", "mean_abs_change")) + " |")
        lines += ["", "Test set (" + " ".join(plan.get("eval", [])) + "):", "",
                  "| checkpoint | weights | clean | pgd-20 |", "|---|---|---|---|"]
        for which, weights in EVALS:
            accs = [json.loads((run_dir(out, label, s) / "eval" / f"{which}-{weights}.json")
                               .read_text())["accuracy"] for s in seeds
                    if (run_dir(out, label, s) / "eval" / f"{which}-{weights}.json").is_file()]
            if accs:
                lines.append(f"| {which} | {weights} | {pct([a['clean'] for a in accs])} | "
                             f"{pct([a['pgd-20'] for a in accs])} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    args = plan_parser(__doc__.splitlines()[0]).parse_args()
    plan = load_plan(args.plan, data_root(args.data_root))
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.collect:
        tasks = [(e, s) for s in plan["seeds"] for e in plan["runs"]]
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            for msg in pool.map(lambda t: job(args.out, t[0], t[1], plan, args.threads), tasks):
                print(msg, flush=True)
    md = collect(args.out, plan)
    (args.out / "ema.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    sys.exit(main())
