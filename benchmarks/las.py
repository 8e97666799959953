"""Where does LAS-AT's cost go? Per-epoch time of LAS-PGD-AT vs PGD-10-AT, LAS-TRADES vs
TRADES and LAS-AWP vs AWP through the real training loop, with the cost broken down into the
attack, the policy forward, the reward (look-ahead + evaluation attack), the policy update,
AWP's proxy step and the rest (objective forward/backward, optimiser step).

Usage (from the repository root; CIFAR-10 as an ImageFolder tree or .tar.gz):

    PYTHONPATH=src python benchmarks/las.py --data ../shared/data/cifar10-jpeg.tar.gz

Every variant trains the same narrow PreActResNet-18 (``--width``) on the same ``--batches``
CIFAR-10 batches; the LAS variants use a small-CNN policy (``--policy-width``) and update it
every ``--k`` batches, so an epoch of a multiple of k batches contains exactly batches / k
policy updates (otherwise the amortised figure below accounts for the difference). Variants
are interleaved (base, LAS, base, LAS, ...); medians are reported, and the median of the
per-repeat ratios (each LAS epoch over the base epoch run just before it, which cancels most
of the machine's drift). Pass counts come from adaptrain.profiling (exact rows through the
target model and AWP's proxy, first repeat).

``attack_replay`` separates the attack engine from the training context: on one target model
(the base run's) and the same batches it runs the base plan and the plan LAS samples,
alternately, and reports seconds per row-iteration (a sample's gradient step; padding rows
of the working batch are paid for but not counted). Equal figures mean the compacted
per-sample attack costs what its iterations do; ``las_unpadded`` runs the same plans with the
working batch cut to exactly its active rows (no ``engine.WIDTHS`` rounding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from adaptrain.attacks import engine
from adaptrain.config import build_config
from adaptrain.context import Batch, StepInfo
from adaptrain.profiling import count_passes
from adaptrain.train import Run, setup, train_epoch

# pair -> (base preset, base overrides, LAS preset)
PAIRS: dict[str, tuple[str, list[str], str]] = {
    "pgd": ("pgd-at", [], "las-pgd-at"),
    "trades": ("trades", [], "las-trades"),
    "awp": ("pgd-at", ["awp.gamma=0.01", "awp.warmup=0", "awp.proxy_lr=0.01"], "las-awp"),
}
PHASES = ("policy", "attack", "reward", "policy_update", "awp")


class _TimedAttack:
    """Wraps the run's Attack so its calls are timed; attribute reads (norm, ...) pass through."""

    def __init__(self, attack: Any, clock: Callable[[str, Callable[..., Any]], Callable[..., Any]]) -> None:
        self._attack = attack
        self._call = clock("attack", attack.__call__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attack, name)


def instrument(run: Run, seconds: dict[str, float]) -> None:
    """Time the phases of a step by wrapping the bound methods that implement them."""
    cuda = run.device.type == "cuda"

    def clock(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if cuda:
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - t0
            seconds[f"{name}_calls"] += 1
            return out
        return timed

    s = run.strategy
    s.plan = clock("policy", s.plan)
    if hasattr(s, "reward_terms_of"):
        s.reward_terms_of = clock("reward", s.reward_terms_of)
        s.update_policy = clock("policy_update", s.update_policy)
    run.attack = _TimedAttack(run.attack, clock)
    if run.awp is not None:
        run.awp.perturb = clock("awp", run.awp.perturb)


def build(preset: str, overrides: list[str], args: argparse.Namespace, las: bool, out: Path) -> Run:
    common = ["data.name=imagefolder", f"data.root={args.data}",
              f"data.subset={args.batch_size * args.batches}", "data.val_size=0",
              f"data.batch_size={args.batch_size}", "data.augment=crop_flip",
              "model.name=preact_resnet18", f"model.width={args.width}", "eval.n=1",
              f"device={args.device}", f"seed={args.seed}"]
    if las:
        common += [f"strategy.backbone={{name: small_cnn, width: {args.policy_width}}}",
                   f"strategy.k={args.k}", f"strategy.reward_subset={args.reward_subset}"]
    return setup(build_config(preset, [*overrides, *common]), out)


def measure_pair(pair: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    base_preset, base_over, las_preset = PAIRS[pair]
    variants = {"base": build(base_preset, base_over, args, False, out / f"{pair}-base"),
                "las": build(las_preset, [], args, True, out / f"{pair}-las")}
    epoch_s: dict[str, list[float]] = defaultdict(list)
    phase_s: dict[str, dict[str, list[float]]] = {v: defaultdict(list) for v in variants}
    passes: dict[str, dict[str, float]] = {}
    telemetry: dict[str, list[dict[str, float]]] = defaultdict(list)
    for r in range(args.repeats):
        for name, run in variants.items():
            seconds: dict[str, float] = defaultdict(float)
            instrument(run, seconds)
            models = [run.model] + ([run.awp.proxy] if run.awp is not None else [])
            counters = [count_passes(m) for m in models] if r == 0 else []
            counts = [c.__enter__() for c in counters]
            t0 = time.perf_counter()
            train_epoch(run, r, bar=False)
            total = time.perf_counter() - t0
            for c in counters:
                c.__exit__(None, None, None)
            if counts:
                f = sum(c.per_batch(args.batch_size, args.batches)[0] for c in counts)
                b = sum(c.per_batch(args.batch_size, args.batches)[1] for c in counts)
                passes[name] = {"F_per_batch": f, "B_per_batch": b}
            epoch_s[name].append(total)
            for phase in PHASES:
                phase_s[name][phase].append(seconds[phase])
            phase_s[name]["rest"].append(total - sum(seconds[p] for p in PHASES))
            tel = run.strategy.end_epoch(r)
            if tel:
                telemetry[name].append({**{k: v for k, v in tel.items() if "_share_" not in k},
                                        "policy_updates": seconds["policy_update_calls"]})
            _unwrap(run)
    med = {name: statistics.median(v) for name, v in epoch_s.items()}
    paired = [b / a for a, b in zip(epoch_s["base"], epoch_s["las"], strict=True)]
    breakdown = {name: {p: statistics.median(v) for p, v in ph.items()} for name, ph in phase_s.items()}
    result: dict[str, Any] = {
        "base_preset": base_preset, "las_preset": las_preset,
        "epoch_s": med, "ratio_las_over_base": med["las"] / med["base"],
        "ratio_paired_median": statistics.median(paired), "ratios_paired": paired,
        "breakdown_s_per_epoch": breakdown, "passes": passes, "samples_epoch_s": dict(epoch_s),
        "las_telemetry": telemetry["las"],
    }
    # what LAS's own machinery (policy forward, reward, policy update) adds, against what the
    # sampled attack costs; the latter follows the option lists' (and later the policy's) mean
    # iteration count, not the implementation
    lb = breakdown["las"]
    machinery = lb["policy"] + lb["reward"] + lb["policy_update"]
    result["machinery_over_base"] = machinery / med["base"]
    result["ratio_without_machinery"] = (med["las"] - machinery) / med["base"]
    result["attack_ratio"] = lb["attack"] / breakdown["base"]["attack"]
    updates = [t["policy_updates"] for t in telemetry["las"]]
    if updates and min(updates) > 0:
        per_update = (lb["reward"] + lb["policy_update"]) / statistics.median(updates)
        amortised = med["las"] - lb["reward"] - lb["policy_update"] + per_update * args.batches / args.k
        result["las_amortised_epoch_s"] = amortised
        result["ratio_amortised"] = amortised / med["base"]
        result["reward_plus_update_s_per_update"] = per_update
    if args.replay:
        result["attack_replay"] = attack_replay(variants, args.replay)
    return result


def attack_replay(variants: dict[str, Run], repeats: int) -> dict[str, Any]:
    """Seconds per row-iteration of the base plan and of LAS's sampled plans on one model.

    Both variants' plans are made for the same batches and run on the base run's target, so
    only the plan differs (per-sample budgets and iterations, hence compaction); the LAS
    strategy samples a fresh plan every call, as in training.
    """
    model = variants["base"].net
    batches = list(variants["base"].loader)[:2]
    # "las_unpadded": the same sampled plans with the working batch compacted to exactly its
    # active rows (every size from B down), i.e. without engine.WIDTHS
    runs = {**variants, "las_unpadded": variants["las"]}
    seconds = {name: 0.0 for name in runs}
    rows = {name: 0 for name in runs}
    widths = engine.WIDTHS
    try:
        for r in range(repeats):
            for i, (x, y, idx) in enumerate(batches):
                for name, run in runs.items():
                    engine.WIDTHS = x.shape[0] if name == "las_unpadded" else widths
                    batch = Batch(model, x, y, idx, StepInfo(0, i, i, run.optimizer.param_groups[0]["lr"]))
                    plan = run.attack.resolve(run.objective.prepare(batch, run.strategy.plan(batch)))
                    t0 = time.perf_counter()
                    res = run.attack(model, x, y, plan, generator=torch.Generator().manual_seed(r))
                    seconds[name] += time.perf_counter() - t0
                    rows[name] += int(res.steps_used.sum())
    finally:
        engine.WIDTHS = widths
    per_row = {name: seconds[name] / rows[name] for name in runs}
    return {"s_per_row_iteration": per_row, "ratio_las_over_base": per_row["las"] / per_row["base"],
            "ratio_unpadded_over_base": per_row["las_unpadded"] / per_row["base"],
            "row_iterations": rows, "calls_each": repeats * len(batches)}


def _unwrap(run: Run) -> None:
    """Remove the timing wrappers (instance attributes shadowing the methods)."""
    for obj, names in ((run.strategy, ("plan", "reward_terms_of", "update_policy")),
                       (run.awp, ("perturb",))):
        for n in names:
            if obj is not None and n in vars(obj):
                delattr(obj, n)
    if isinstance(run.attack, _TimedAttack):
        run.attack = run.attack._attack


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="CIFAR-10 ImageFolder directory or .tar.gz")
    p.add_argument("--pairs", default="pgd,trades,awp", help="comma list of pgd, trades, awp")
    p.add_argument("--width", type=int, default=16, help="PreActResNet-18 width (64 = standard)")
    p.add_argument("--policy-width", type=int, default=16, help="small-CNN policy width")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=20, help="batches per measured epoch")
    p.add_argument("--k", type=int, default=20, help="policy update interval (strategy.k)")
    p.add_argument("--reward-subset", type=int, default=0, help="strategy.reward_subset (0: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--replay", type=int, default=0,
                   help="attack_replay repeats over 2 batches (0: skip)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    pairs = [s.strip() for s in args.pairs.split(",") if s.strip()]
    unknown = [s for s in pairs if s not in PAIRS]
    if unknown:
        p.error(f"unknown pair(s) {unknown}; allowed: {', '.join(PAIRS)}")
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, Any] = {name: measure_pair(name, args, Path(tmp)) for name in pairs}
    result["settings"] = vars(args)
    result["note"] = ("batches % k != 0: see las_amortised_epoch_s" if args.batches % args.k
                      else f"{args.batches // args.k} policy update(s) per measured epoch")
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
