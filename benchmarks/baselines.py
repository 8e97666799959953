"""Does single-step adversarial training overfit catastrophically, and does the detector of
``adaptrain.overfitting`` see it? FGSM-RS vs N-FGSM at each budget.

Usage (from the repository root; CIFAR-10 as an ImageFolder tree or .tar.gz):

    PYTHONPATH=src python benchmarks/baselines.py --data /path/cifar10-jpeg.tar.gz

Trains FGSM-RS and N-FGSM at each budget over a short schedule on a CIFAR-10 subset and
reports, per epoch, clean / PGD-10 / FGSM validation accuracy and whether the detector fires.
JSON goes to stdout, progress to stderr. (What AWP costs over its base objective is
``adaptrain bench --plan benchmarks/plans/bench-awp.yaml``, docs/bench.md.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from adaptrain import train as train_mod
from adaptrain.config import build_config
from adaptrain.overfitting import catastrophic_overfitting


def data_overrides(args: argparse.Namespace) -> list[str]:
    return ["data.name=imagefolder", f"data.root={args.data}", f"data.batch_size={args.batch_size}",
            f"model.width={args.width}", "model.name=preact_resnet18", f"seed={args.seed}"]


def co(args: argparse.Namespace) -> dict[str, Any]:
    """Train each method at each budget; the loop's validation measures PGD and FGSM accuracy
    (``eval.fgsm: auto`` for single-step attacks) and its detector flags each epoch."""
    out_root = Path(args.out or tempfile.mkdtemp(prefix="co-"))
    results = []
    for eps in args.eps:
        for preset in args.methods:
            over = [*data_overrides(args), f"data.subset={args.subset}",
                    f"data.val_size={args.val}", f"eval.n={args.val}", f"epochs={args.epochs}",
                    f"strategy.eps={eps}/255", f"eval.eps={eps}/255",
                    f"eval.step_size={eps / 4}/255", "eval.fgsm=on"]
            cfg = build_config(preset, over)
            out = out_root / f"{preset}-eps{eps}"
            print(f"== {preset} at {eps}/255 -> {out}", file=sys.stderr)
            t0 = time.perf_counter()
            if not (out / "summary.json").is_file():
                train_mod.train(cfg, out, preset=preset, progress=False,
                                log=lambda line: print(line, file=sys.stderr))
            history = _read_history(out)
            fired = [r for r in history if r.get("catastrophic_overfitting")]
            first = fired[0]["epoch"] if fired else None
            results.append({
                "method": preset, "eps_255": eps, "wall_s": time.perf_counter() - t0,
                "co_detected_at_epoch": first,
                "warning": catastrophic_overfitting([r for r in history if r["epoch"] <= first])
                if first else None,
                "epochs": [{k: r.get(k) for k in ("epoch", "lr", "train_acc", "clean_acc",
                                                  "robust_acc", "fgsm_acc")} for r in history],
            })
    return {"runs": results, "out": str(out_root)}


def _read_history(out: Path) -> list[dict[str, Any]]:
    import csv

    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: (float(v) if v not in ("", None) else None) for k, v in r.items()} for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="CIFAR-10 ImageFolder directory or .tar.gz")
    p.add_argument("--width", type=int, default=16, help="PreActResNet-18 width (64 = full)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", type=int, default=10000, help="training images")
    p.add_argument("--val", type=int, default=500, help="held-out validation images")
    p.add_argument("--epochs", type=int, default=15, help="epochs of the cyclic schedule")
    p.add_argument("--eps", type=float, nargs="+", default=[8, 16], help="budgets in 1/255")
    p.add_argument("--methods", nargs="+", default=["fgsm-rs", "n-fgsm"], help="presets")
    p.add_argument("--out", default=None, help="directory for the run directories")
    args = p.parse_args()
    result = co(args)
    result["settings"] = dict(vars(args))
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
