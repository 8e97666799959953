"""What does SAAT's search cost? Forward / backward passes per batch and training time of SAAT-up vs
PGD-AT, next to the pass counts of the SAAT authors' released code.

Usage (from the repository root):

    PYTHONPATH=src python benchmarks/saat.py --data /path/cifar10-jpeg.tar.gz
    PYTHONPATH=src python benchmarks/saat.py --data /path/cifar10-jpeg.tar.gz --init RUN_DIR

Each variant runs the package's real training step (``train.train_epoch``: strategy, attack,
objective, backward, optimiser step) over the same few CIFAR-10 batches. Before every timed
epoch the model, optimiser, strategy and generators are restored to one snapshot, so every
repeat does identical work; the variants are interleaved (A, B, A, B, ...) and medians are
reported. Pass counts are exact (``adaptrain.profiling.count_passes``, in full-batch units).

How much SA-PGD costs depends on how trained the model is: an untrained model has CE > rho
almost everywhere, so the search stops at its first check. Without ``--init`` the script
reports an untrained model and one briefly trained with PGD-AT on the benchmark batches
(``--trained-epochs``); ``--init RUN_DIR`` measures on that run's last checkpoint instead
(the model section is taken from the run's config).

The authors' counts come from reading their released ``sa_pgd`` (SAAT/main.py): PGD-10 on the
whole batch (10 F + 10 B) plus a loss evaluation for restarts (1 F); then, while the budget is
below eps_max: one F to find the samples below rho, and per step a full-batch F + B and one
more F to re-check; a final F for restarts; the training step 1 F + 1 B. With eps_max 14/255
(3 rounds of K = 3) that is at most 11 + (3 + 18 + 1) + 1 = 34 F and 10 + 9 + 1 = 20 B,
vs 12 F + 11 B for their PGD-AT. Because their loop always forwards the full batch and runs
while any sample is below rho, the script also replays it on our per-sample trace: with n
the largest number of search steps in the batch, r = ceil(n / K) rounds, R = all rounds,
their search costs r + 2n + [r < R] + 1 F and n B (2 F if no sample is below rho).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from adaptrain import checkpoint
from adaptrain.config import build_config, load_config_file
from adaptrain.profiling import count_passes
from adaptrain.train import Run, setup, train_epoch

AUTHORS_MAX = {"F": 34, "B": 20}  # their SAAT-up at eps_max 14/255, K 3, tau 2/255
AUTHORS_PGD_AT = {"F": 12, "B": 11}


class Recorder:
    """Wraps the run's attack to keep each batch's per-sample steps (for the authors' replay)."""

    def __init__(self, attack: Any) -> None:
        self.attack, self.steps = attack, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.attack, name)

    def __call__(self, *args: Any, **kwargs: Any):
        res = self.attack(*args, **kwargs)
        self.steps.append(res.steps_used.detach().cpu())
        return res


def build(preset: str, args: argparse.Namespace, model_over: list[str], out: Path,
          extra: list[str]) -> Run:
    over = [f"data.root={args.data}", "data.name=imagefolder",
            f"data.subset={args.batch_size * args.batches}", "data.val_size=0",
            f"data.batch_size={args.batch_size}", f"device={args.device}", "eval.n=16",
            *model_over, *args.set, *extra]
    run = setup(build_config(preset, over), out)
    run.attack = Recorder(run.attack)
    return run


def snapshot(run: Run) -> dict[str, Any]:
    return {"model": copy.deepcopy(run.model.state_dict()),
            "opt": copy.deepcopy(run.optimizer.state_dict()),
            "strategy": copy.deepcopy(run.strategy.state_dict()),
            "gens": {k: g.get_state() for k, g in run.generators.items()}}


def restore(run: Run, snap: dict[str, Any]) -> None:
    run.model.load_state_dict(snap["model"])
    run.optimizer.load_state_dict(copy.deepcopy(snap["opt"]))
    run.strategy.load_state_dict(copy.deepcopy(snap["strategy"]))
    for k, g in run.generators.items():
        g.set_state(snap["gens"][k])


def authors_replay(steps_per_batch: list[torch.Tensor], warm_steps: int, k: int, rounds: int) -> dict:
    """Their full-batch loop's passes per batch on our per-sample trace (see the module doc)."""
    f_sum = b_sum = 0.0
    for steps in steps_per_batch:
        n = int((steps - warm_steps).clamp(min=0).max())
        if n == 0:
            search_f = 2
        else:
            r = math.ceil(n / k)
            search_f = r + 2 * n + (1 if r < rounds else 0) + 1
        f_sum += (warm_steps + 1) + search_f + 1
        b_sum += warm_steps + n + 1
    m = len(steps_per_batch)
    return {"F": f_sum / m, "B": b_sum / m}


def measure(runs: dict[str, Run], args: argparse.Namespace) -> dict[str, Any]:
    snaps = {name: snapshot(run) for name, run in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    out: dict[str, Any] = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            restore(run, snaps[name])
            run.attack.steps.clear()
            with count_passes(run.model) as c:
                t0 = time.perf_counter()
                train_epoch(run, 0, False)
                times[name].append(time.perf_counter() - t0)
            f, b = c.per_batch(args.batch_size, args.batches)
            out[name] = {"F": round(f, 3), "B": round(b, 3)}
    for name, run in runs.items():
        med = statistics.median(times[name])
        out[name].update(epoch_s=med, s_per_batch=med / args.batches,
                         cifar10_epoch_s_estimate=med / args.batches * math.ceil(50000 / args.batch_size),
                         epoch_s_all=times[name])
        steps = torch.cat(run.attack.steps).float()
        out[name]["mean_steps_per_sample"] = float(steps.mean())
        telemetry = run.strategy.end_epoch(0)
        for key in ("mean_eps", "frac_below_rho", "loss_mean"):
            if key in telemetry:
                out[name][key] = telemetry[key]
        s = run.cfg.strategy
        a = run.cfg.attack  # the search settings are the sa_pgd attack's fields
        if s["name"] == "saat" and a["warm_start"]:
            rounds = math.ceil(round((s["eps_max"] - a["warm_eps"]) / a["tau"], 4))
            out[name]["authors_code_replayed"] = authors_replay(
                run.attack.steps, a["warm_steps"], s["steps"], rounds)
    names = list(runs)
    out["time_ratio"] = out[names[1]]["epoch_s"] / out[names[0]]["epoch_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="CIFAR-10 ImageFolder directory or .tar.gz")
    p.add_argument("--width", type=int, default=16, help="PreActResNet-18 width (64 = the paper's)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trained-epochs", type=int, default=5,
                   help="PGD-AT epochs over the benchmark batches for the 'briefly trained' model")
    p.add_argument("--init", default=None, help="run directory: measure on its last checkpoint")
    p.add_argument("--baseline", default="pgd-at")
    p.add_argument("--preset", default="saat-up")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for both variants")
    p.add_argument("--saat-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for the SAAT variant only (e.g. strategy.rho=1.5)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_over = [f"model.width={args.width}"]
    if args.init:
        model_cfg = load_config_file(Path(args.init) / "config.yaml").model
        model_over = [f"model.{k}={v}" for k, v in model_cfg.items()]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {args.baseline: build(args.baseline, args, model_over, Path(tmp) / "base", []),
                args.preset: build(args.preset, args, model_over, Path(tmp) / "saat", args.saat_set)}
        base, saat = runs.values()
        saat.model.load_state_dict(base.model.state_dict())
        result: dict[str, Any] = {}
        if args.init:
            for run in runs.values():
                checkpoint.load_into(run.model, checkpoint.resolve(args.init, "last"))
            result["init"] = measure(runs, args)
        else:
            result["untrained"] = measure(runs, args)
            for epoch in range(args.trained_epochs):
                train_epoch(base, epoch, False)
            saat.model.load_state_dict(base.model.state_dict())
            result[f"pgd_at_{args.trained_epochs}_epochs"] = measure(runs, args)
    result["authors_code"] = {args.preset: AUTHORS_MAX, args.baseline: AUTHORS_PGD_AT,
                              "note": "their SAAT-up maximum (eps_max 14/255) and PGD-AT, per batch"}
    result["settings"] = {**vars(args), "model_overrides": model_over}
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
