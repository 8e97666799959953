"""``adaptrain calibrate-dra TARGET``: the DRA budget and the PGD budget that leave equal robust
accuracy (DRA paper, Table V); the search itself is :mod:`adaptrain.calibrate`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .. import fileio
from ..calibrate import calibrate_dra, spread_subset
from ..errors import ConfigError
from ..runs import load_model, split_arrays
from .args import budget


def run(args: argparse.Namespace) -> int:
    """``adaptrain calibrate-dra TARGET``: load the model, calibrate, write JSON."""
    from ..rundir import versions

    if args.n < 1:
        raise ConfigError("--n", f"must be >= 1, got {args.n}")
    dra_eps = None if args.target_acc is not None else budget(args.dra_eps, "--dra-eps", "linf")
    target_acc = None if args.target_acc is None else float(args.target_acc)
    if target_acc is not None and not 0.0 <= target_acc <= 1.0:
        raise ConfigError("--target-acc", f"must be in [0, 1], got {target_acc}")
    if dra_eps is not None and dra_eps <= 0:
        raise ConfigError("--dra-eps", f"must be > 0, got {dra_eps}")
    p = budget(args.p, "--p", None)
    if not 0.0 < p <= 1.0:
        raise ConfigError("--p", f"must be in (0, 1], got {p}")
    if args.steps < 1:
        raise ConfigError("--steps", f"must be >= 1, got {args.steps}")
    model, cfg, arrays, run_dir = load_model(args.target, args.checkpoint, args.config, args.device)
    x, y = spread_subset(*split_arrays(cfg, arrays, args.split), args.n)
    t0 = time.perf_counter()
    res = calibrate_dra(model, x, y, dra_eps=dra_eps, target_acc=target_acc, p=p,
                        steps=args.steps, budget=args.budget, pgd_steps=args.pgd_steps,
                        max_pgd_eps=budget(args.max_pgd_eps, "--max-pgd-eps", "linf"),
                        max_dra_eps=budget(args.max_dra_eps, "--max-dra-eps", "linf"), tol=args.tol,
                        seed=args.seed, batch_size=args.batch_size)
    res["provenance"] = {**versions(), "target": str(args.target), "checkpoint": args.checkpoint,
                         "data": cfg.data.name, "split": args.split, "seed": args.seed,
                         "wall_time_s": round(time.perf_counter() - t0, 3)}
    dest = Path(args.out) if args.out else (
        (run_dir / "eval" / "calibrate-dra.json") if run_dir else
        Path(str(args.target).rstrip("/") + ".calibrate-dra.json"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_file(dest, json.dumps(res, indent=2))
    d, g = res["dra"], res["pgd"]
    print(f"DRA eps {d['eps_255']:.3f}/255 -> acc {d['acc']:.4f}; PGD eps {g['eps_255']:.3f}/255 "
          f"-> acc {g['acc']:.4f} (clean {res['clean_acc']:.4f}, n {res['n_examples']}, "
          f"{'matched' if res['matched'] else 'NOT matched'} within {res['tol']})")
    print(f"written to {dest}")
    return 0


def add_parser(sub: Any) -> None:
    c = sub.add_parser("calibrate-dra", help="match DRA and PGD budgets by robust accuracy "
                       "(DRA paper, Table V)")
    c.add_argument("target", help="run directory, checkpoint directory or weights file")
    c.add_argument("--dra-eps", default="1/255", help="DRA budget whose accuracy PGD must match "
                   "(default 1/255, per coordinate)")
    c.add_argument("--target-acc", type=float, default=None,
                   help="instead: find both budgets that leave this robust accuracy")
    c.add_argument("--p", default="1/3", help="DRA kept fraction (default 1/3)")
    c.add_argument("--steps", type=int, default=5, help="DRA steps T (default 5)")
    c.add_argument("--budget", default="per_coordinate", choices=["per_coordinate", "total"])
    c.add_argument("--pgd-steps", type=int, default=20, help="PGD-k with step eps/k (default 20)")
    c.add_argument("--max-pgd-eps", default="16/255")
    c.add_argument("--max-dra-eps", default="16/255")
    c.add_argument("--tol", type=float, default=0.005, help="accuracy tolerance (default 0.005)")
    c.add_argument("--n", type=int, default=1000, help="number of examples")
    c.add_argument("--checkpoint", default="best", choices=["best", "last"])
    c.add_argument("--config", default=None, help="config YAML for a bare checkpoint")
    c.add_argument("--split", default="test", choices=["test", "val"])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--batch-size", type=int, default=256)
    c.add_argument("--device", default="auto")
    c.add_argument("--out", default=None, help="JSON file (default RUN/eval/calibrate-dra.json)")
    c.set_defaults(fn=run)
