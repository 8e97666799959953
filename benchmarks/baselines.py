"""Baselines benchmarks (issue 4): the cost of AWP over its base objective, and catastrophic
overfitting of FGSM-RS vs N-FGSM with the detector of ``adaptrain.overfitting``.

Usage (from the repository root; CIFAR-10 as an ImageFolder tree or .tar.gz):

    PYTHONPATH=src python benchmarks/baselines.py awp-time --data /path/cifar10-jpeg.tar.gz
    PYTHONPATH=src python benchmarks/baselines.py co --data /path/cifar10-jpeg.tar.gz

``awp-time`` times one training epoch (a few batches) of PGD-AT, AT-AWP, TRADES and
TRADES-AWP through the real loop (``adaptrain.train.train_epoch``) on a narrow
PreActResNet-18, interleaving the variants (A, B, C, D, A, ...) and reporting medians, the
AWP / base ratios (AWP's authors report about +9%) and exact pass counts of the model and of
AWP's proxy. ``co`` trains FGSM-RS and N-FGSM at each budget over a short schedule on a
CIFAR-10 subset and reports, per epoch, clean / PGD-10 / FGSM validation accuracy and whether
the detector fires. JSON goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from adaptrain import train as train_mod
from adaptrain.config import build_config
from adaptrain.overfitting import catastrophic_overfitting
from adaptrain.profiling import count_passes

AWP_VARIANTS = {  # name -> (preset, extra overrides)
    "pgd_at": ("pgd-at", []),
    "awp": ("awp", []),
    "trades": ("trades", ["strategy.step_size=2/255"]),  # the step TRADES-AWP uses
    "trades_awp": ("trades-awp", ["awp.warmup=0"]),  # timed at an epoch with AWP on
}


def data_overrides(args: argparse.Namespace) -> list[str]:
    return ["data.name=imagefolder", f"data.root={args.data}", f"data.batch_size={args.batch_size}",
            f"model.width={args.width}", "model.name=preact_resnet18", f"seed={args.seed}"]


# ---------------------------------------------------------------------------------------
# awp-time


def awp_time(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="awp-time-"))
    over = [*data_overrides(args), f"data.subset={args.batch_size * args.batches}", "data.val_size=0",
            "eval.n=16", "epochs=1"]
    runs = {}
    for name, (preset, extra) in AWP_VARIANTS.items():
        runs[name] = train_mod.setup(build_config(preset, [*over, *extra]), tmp / name)
        train_mod.train_epoch(runs[name], 0, bar=False)  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            train_mod.train_epoch(run, 0, bar=False)
            times[name].append(time.perf_counter() - t0)
        print(f"repeat {r + 1}/{args.repeats}: "
              + ", ".join(f"{n} {t[-1]:.1f}s" for n, t in times.items()), file=sys.stderr)
    passes = {}
    for name, run in runs.items():
        with count_passes(run.model) as c:
            if run.awp is None:
                train_mod.train_epoch(run, 0, bar=False)
                proxy = (0.0, 0.0)
            else:
                with count_passes(run.awp.proxy) as cp:
                    train_mod.train_epoch(run, 0, bar=False)
                proxy = cp.per_batch(args.batch_size, args.batches)
        model = c.per_batch(args.batch_size, args.batches)
        passes[name] = {"model_F": model[0], "model_B": model[1], "proxy_F": proxy[0],
                        "proxy_B": proxy[1]}
    med = {name: statistics.median(v) for name, v in times.items()}
    return {"seconds_per_epoch": med,
            "ratio_awp_over_pgd_at": med["awp"] / med["pgd_at"],
            "ratio_trades_awp_over_trades": med["trades_awp"] / med["trades"],
            "passes_per_batch": passes, "samples_s": times}


# ---------------------------------------------------------------------------------------
# co


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
    p.add_argument("what", choices=["awp-time", "co"])
    p.add_argument("--data", required=True, help="CIFAR-10 ImageFolder directory or .tar.gz")
    p.add_argument("--width", type=int, default=16, help="PreActResNet-18 width (64 = full)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batches", type=int, default=4, help="awp-time: batches per timed epoch")
    p.add_argument("--repeats", type=int, default=3, help="awp-time: interleaved repeats")
    p.add_argument("--subset", type=int, default=10000, help="co: training images")
    p.add_argument("--val", type=int, default=500, help="co: held-out validation images")
    p.add_argument("--epochs", type=int, default=15, help="co: epochs of the cyclic schedule")
    p.add_argument("--eps", type=float, nargs="+", default=[8, 16], help="co: budgets in 1/255")
    p.add_argument("--methods", nargs="+", default=["fgsm-rs", "n-fgsm"], help="co: presets")
    p.add_argument("--out", default=None, help="co: directory for the run directories")
    args = p.parse_args()
    result = awp_time(args) if args.what == "awp-time" else co(args)
    result["settings"] = dict(vars(args))
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
