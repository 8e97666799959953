"""saat-grid: the SAAT paper's Table 1 grid (rho x eps_max) at a chosen scale, one training run
per cell and seed, collected into one JSON and one markdown table.

Usage (from the repository root):

    PYTHONPATH=src python benchmarks/saat_grid.py --out runs/saat-grid \\
        --data /path/cifar10-jpeg.tar.gz --epochs 30 --width 32 --seeds 0 1 --baselines
    PYTHONPATH=src python benchmarks/saat_grid.py --out runs/saat-grid --dry-run   # list cells

Grids (eps_max in 1/255 units):
  table1      SAAT_up rows: eps_max 9..20 at rho 1.5, and rho 1.3..2.0 at eps_max 14 (preset saat-up)
  table1-awp  AWP-SAAT_up rows: eps_max 9..12 at rho 1.5, rho 1.5..1.9 at eps_max 9 (saat-awp)
  full        every (rho, eps_max) pair of --rhos x --eps-max on --preset
``--rhos`` / ``--eps-max`` replace the lists of any grid; ``--baselines`` adds the table's
reference rows (PGD-AT and SAAT_down, with AWP for table1-awp). Every cell is
``adaptrain.config.build_config(preset, overrides)`` + ``adaptrain.train.train`` into
``OUT/<cell>/seed<k>``; a finished cell is skipped and an interrupted one resumed, so the
command can be re-run. Per-epoch model selection uses the preset's ``eval`` section
(PGD-10 on held-out data); evaluate the best and last checkpoints of each cell with
``adaptrain eval --eps-curve`` for PGD-20 / AutoAttack and the robustness disparity.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from adaptrain.config import build_config
from adaptrain.train import train

GRIDS = {
    "table1": {"preset": "saat-up", "rho": 1.5, "eps_max": 14,
               "eps_sweep": list(range(9, 21)), "rho_sweep": [1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0]},
    "table1-awp": {"preset": "saat-awp", "rho": 1.5, "eps_max": 9,
                   "eps_sweep": [9, 10, 11, 12], "rho_sweep": [1.5, 1.6, 1.7, 1.8, 1.9]},
}
AWP_ON = ["awp.gamma=0.01", "awp.warmup=0", "awp.proxy_lr=0.01"]


def cells(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Ordered, de-duplicated list of {name, preset, overrides, rho, eps_max}."""
    out: list[dict[str, Any]] = []

    def add(preset: str, rho: float | None, eps_max: int | None, name: str, extra: list[str]) -> None:
        over = list(extra)
        if rho is not None:
            over += [f"strategy.rho={rho}", f"strategy.eps_max={eps_max}/255"]
        if all(c["name"] != name for c in out):
            out.append({"name": name, "preset": preset, "overrides": over, "rho": rho, "eps_max": eps_max})

    awp = args.grid == "table1-awp"
    if args.baselines:
        add("pgd-at", None, None, "awp-at" if awp else "at", AWP_ON if awp else [])
        add("saat-down", 1.5, 8, "awp-saat-down" if awp else "saat-down", AWP_ON if awp else [])
    if args.grid == "full":
        for rho in args.rhos or [1.5]:
            for e in args.eps_max or [14]:
                add(args.preset, rho, e, f"rho{rho}-eps{e}", [])
        return out
    g = GRIDS[args.grid]
    preset = args.preset or g["preset"]
    tag = "awp-" if awp else ""
    for e in args.eps_max or g["eps_sweep"]:
        add(preset, g["rho"], e, f"{tag}rho{g['rho']}-eps{e}", [])
    for rho in args.rhos or g["rho_sweep"]:
        add(preset, rho, g["eps_max"], f"{tag}rho{rho}-eps{g['eps_max']}", [])
    return out


def scale_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    over = [f"seed={seed}"]
    if args.epochs is not None:
        over.append(f"epochs={args.epochs}")
    if args.subset is not None:
        over.append(f"data.subset={args.subset}")
    if args.width is not None:
        over.append(f"model.width={args.width}")
    if args.data:
        over += ["data.name=imagefolder", f"data.root={args.data}"]
    return over + list(args.set)


def last_telemetry(run_dir: Path) -> dict[str, float]:
    path = run_dir / "strategy.csv"
    if not path.is_file():
        return {}
    rows = list(csv.DictReader(path.open()))
    keep = ("mean_eps", "frac_below_rho", "loss_mean", "mean_steps")
    return {k: float(rows[-1][k]) for k in keep if rows and rows[-1].get(k)}


def run_cell(cell: dict[str, Any], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(args.out) / cell["name"] / f"seed{seed}"
    summary_path = run_dir / "summary.json"
    if summary_path.is_file() and json.loads(summary_path.read_text()).get("finished"):
        summary = json.loads(summary_path.read_text())
    else:
        cfg = build_config(cell["preset"], cell["overrides"] + scale_overrides(args, seed))
        resume = (run_dir / "checkpoints" / "last").is_dir()
        name = f"{cell['name']}/seed{seed}"
        summary = train(cfg, run_dir, resume=resume, preset=cell["preset"], progress=False,
                        log=lambda line: print(f"[{name}] {line}", file=sys.stderr, flush=True))
    best, last = summary.get("best") or {}, summary.get("last") or {}
    return {"cell": cell["name"], "preset": cell["preset"], "rho": cell["rho"], "eps_max": cell["eps_max"],
            "seed": seed, "run_dir": str(run_dir), "best_epoch": summary.get("best_epoch"),
            "best_clean": best.get("clean_acc"), "best_robust": best.get("robust_acc"),
            "last_clean": last.get("clean_acc"), "last_robust": last.get("robust_acc"),
            "wall_time_s": summary.get("wall_time_s"), **last_telemetry(run_dir)}


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and (with >1 seed) standard deviation over seeds, per cell."""
    out = []
    for name in dict.fromkeys(r["cell"] for r in rows):
        group = [r for r in rows if r["cell"] == name]
        agg: dict[str, Any] = {k: group[0][k] for k in ("cell", "preset", "rho", "eps_max")}
        agg["seeds"] = len(group)
        for key in ("best_clean", "best_robust", "last_clean", "last_robust", "mean_eps",
                    "frac_below_rho", "wall_time_s"):
            vals = [r[key] for r in group if r.get(key) is not None]
            if vals:
                agg[key] = statistics.fmean(vals)
                if len(vals) > 1:
                    agg[f"{key}_std"] = statistics.stdev(vals)
        if "best_robust" in agg and "last_robust" in agg:
            agg["best_last_gap"] = agg["best_robust"] - agg["last_robust"]
        out.append(agg)
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    def pct(row: dict[str, Any], key: str) -> str:
        if key not in row:
            return ""
        std = row.get(f"{key}_std")
        return f"{100 * row[key]:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")

    head = ("| cell | rho | eps_max | seeds | best clean | best robust | last clean | last robust "
            "| best-last gap | mean eps (1/255) | frac below rho |")
    lines = [head, "|" + "---|" * 11]
    for r in table:
        lines.append(
            f"| {r['cell']} | {'' if r['rho'] is None else r['rho']} | "
            f"{'' if r['eps_max'] is None else r['eps_max']} | {r['seeds']} | {pct(r, 'best_clean')} | "
            f"{pct(r, 'best_robust')} | {pct(r, 'last_clean')} | {pct(r, 'last_robust')} | "
            f"{pct(r, 'best_last_gap')} | {r.get('mean_eps', float('nan')):.2f} | "
            f"{r.get('frac_below_rho', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for the cells' runs and grid.json / grid.md")
    p.add_argument("--grid", choices=["table1", "table1-awp", "full"], default="table1")
    p.add_argument("--preset", default=None, help="preset of the grid cells (default: the grid's)")
    p.add_argument("--rhos", type=float, nargs="*", default=None)
    p.add_argument("--eps-max", type=int, nargs="*", default=None, help="in 1/255 units")
    p.add_argument("--baselines", action="store_true", help="add PGD-AT and SAAT_down rows")
    p.add_argument("--data", default=None, help="CIFAR-10 ImageFolder directory or .tar.gz")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--subset", type=int, default=None, help="data.subset (training images)")
    p.add_argument("--width", type=int, default=None, help="model.width")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--cells", type=int, default=None, help="run only the first N cells")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for every cell")
    p.add_argument("--dry-run", action="store_true", help="print the cells and exit")
    args = p.parse_args()
    if args.grid == "full" and args.preset is None:
        args.preset = "saat-up"

    todo = cells(args)[: args.cells]
    if args.dry_run:
        print(json.dumps(todo, indent=2))
        return
    rows = [run_cell(cell, seed, args) for cell in todo for seed in args.seeds]
    table = aggregate(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"grid": args.grid, "settings": vars(args), "cells": table, "runs": rows}
    (out / "grid.json").write_text(json.dumps(result, indent=2))
    (out / "grid.md").write_text(markdown(table))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
