"""ECAS benchmark (issue 5): per-epoch training time of ECAS-PGD-AT vs PGD-AT with the same
number of attack steps, plus exact forward / backward pass counts per batch.

Both variants run the package's own training epoch (``adaptrain.train.train_epoch``: strategy ->
attack -> objective -> optimiser) on the same CIFAR-10 images and the same narrow
PreActResNet-18; only the strategy differs (``fixed`` 8/255 vs ``ecas`` 3..12/255 with entropy
guidance). ECAS's only extra work is the clean eval-mode forward pass whose entropy it reads
(goal: <= 1.05x; with ``--objective trades`` that pass is shared with TRADES and costs nothing).

Usage (from the repository root):

    PYTHONPATH=src python benchmarks/ecas.py --data ../shared/data/cifar10-jpeg.tar.gz \
        --width 16 --batches 4 --repeats 5

Epochs are interleaved (A, B, B, A, A, B, ...) and medians reported, so background load hits
both variants alike. Output: one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from adaptrain import train as train_mod
from adaptrain.config import build_config
from adaptrain.profiling import count_passes

VARIANTS = {"baseline": "pgd-at", "ecas": "ecas-pgd-at"}


def build_run(preset: str, args: argparse.Namespace, out: Path) -> train_mod.Run:
    over = [
        f"data.name={args.data_name}", f"data.root={args.data}",
        f"data.subset={args.batch_size * args.batches}", "data.val_size=0",
        f"data.batch_size={args.batch_size}", "eval.n=16",
        f"model.name={args.model}", f"model.width={args.width}", f"epochs={args.repeats + 2}",
        f"objective.name={args.objective}", f"strategy.steps={args.steps}", f"awp.gamma={args.awp_gamma}",
        f"device={args.device}",
    ]
    return train_mod.setup(build_config(preset, over), out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="CIFAR-10 ImageFolder tree or .tar.gz")
    p.add_argument("--data-name", default="imagefolder", help="registered data set (default imagefolder)")
    p.add_argument("--model", default="preact_resnet18")
    p.add_argument("--width", type=int, default=16, help="model width (64 = the paper's PreActResNet-18)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=4, help="batches per timed epoch")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per variant")
    p.add_argument("--steps", type=int, default=10, help="attack steps for both variants")
    p.add_argument("--objective", default="pgd_at", help="pgd_at | trades | mart (same for both)")
    p.add_argument("--awp-gamma", type=float, default=0.0, help="> 0: AWP on for both variants")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: build_run(preset, args, Path(tmp) / name) for name, preset in VARIANTS.items()}
        for run in runs.values():  # warm-up epoch (allocator, kernels, ECAS's first plan)
            train_mod.train_epoch(run, 0, False)
        times: dict[str, list[float]] = {name: [] for name in runs}
        order = list(runs)
        for r in range(args.repeats):
            for name in order if r % 2 == 0 else order[::-1]:
                run = runs[name]
                if run.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                train_mod.train_epoch(run, 1 + r, False)
                if run.device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t0)
        passes = {}
        for name, run in runs.items():
            with count_passes(run.model) as c:
                train_mod.train_epoch(run, 1 + args.repeats, False)
            passes[name] = c.per_batch(args.batch_size, args.batches)
        device = str(next(iter(runs.values())).device)

    med = {name: statistics.median(v) for name, v in times.items()}
    out = {
        "setting": {"data": args.data_name, "model": args.model, "width": args.width,
                    "batch_size": args.batch_size, "batches_per_epoch": args.batches,
                    "repeats": args.repeats, "steps": args.steps, "objective": args.objective,
                    "awp_gamma": args.awp_gamma, "device": device, "threads": torch.get_num_threads()},
        "presets": VARIANTS,
        "seconds_per_epoch_median": med,
        "ratio_ecas_over_baseline": med["ecas"] / med["baseline"],
        "goal_ratio": 1.05,
        "passes_per_batch_F_B": passes,
        "seconds_per_epoch": times,
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
