"""(U)IAT benchmark (issue 7, "Measure"): time per epoch of IAT, UIAT and UIAT one-off (before
and after T') against TRADES and PGD-AT, on a few CIFAR-10 batches with a narrow
PreActResNet-18. The paper's Table 2 ordering is UIAT one-off < UIAT < TRADES < IAT.

Usage (from the repository root; CIFAR-10 as an ImageFolder tree or .tar.gz):

    PYTHONPATH=src python benchmarks/uiat.py --data /path/cifar10-jpeg.tar.gz

Every variant runs the package's own training step (fixed PGD-10 strategy at 8/255, step
2/255 -> objective.prepare -> attack -> objective.loss -> backward -> SGD step) over the same
batches. Variants are interleaved (A, B, C, ..., A, B, C, ...) and medians reported, so
background load hits all alike; forward / backward pass counts per batch come from
adaptrain.profiling and are exact. "Epoch" here means the ``--batches`` batches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from adaptrain.attacks import ATTACKS, AttackPlan
from adaptrain.context import Batch, RunContext, StepInfo
from adaptrain.data import BatchLoader, load_arrays
from adaptrain.models import build_model
from adaptrain.objectives import OBJECTIVES
from adaptrain.profiling import count_passes

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10
EPOCHS = 100  # the paper's schedule length: fixes the default T (10) of the objectives


def setup(args: argparse.Namespace):
    torch.manual_seed(0)
    device = torch.device(args.device if args.device != "auto"
                          else ("cuda" if torch.cuda.is_available() else "cpu"))
    arrays = load_arrays("imagefolder", args.data)
    n = args.batch_size * args.batches
    loader = BatchLoader(arrays.x_train[:n], arrays.y_train[:n], batch_size=args.batch_size,
                         device=device, shuffle=True, augment="crop_flip",
                         generator=torch.Generator(device=device).manual_seed(0))
    model = build_model({"name": "preact_resnet18", "width": args.width}, arrays.spec).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    ctx = RunContext(num_train=n, num_classes=arrays.spec.num_classes,
                     input_shape=tuple(arrays.x_train.shape[1:]), epochs=EPOCHS,
                     batches_per_epoch=len(loader), device=device, seed=0, dataset="cifar10",
                     first_decay_epoch=EPOCHS // 4)
    return loader, model, opt, ctx


def variants(ctx: RunContext) -> dict[str, tuple[object, int]]:
    """name -> (objective, the epoch it is timed in). The one-off objectives are put before /
    after their T' by the epoch they are started in."""
    build = OBJECTIVES.build
    after = build({"name": "uiat", "one_off": True, "one_off_epoch": 0}, ctx=ctx)
    return {
        "pgd_at": (build({"name": "pgd_at"}, ctx=ctx), 0),
        "trades": (build({"name": "trades", "beta": 6.0}, ctx=ctx), 0),
        "iat": (build({"name": "uiat", "inverse": "instance"}, ctx=ctx), 0),
        "uiat": (build({"name": "uiat"}, ctx=ctx), 0),
        "uiat_oneoff_before": (build({"name": "uiat", "one_off": True, "one_off_epoch": 50},
                                     ctx=ctx), 0),
        "uiat_oneoff_after": (after, 1),
    }


def epoch(loader: BatchLoader, model: torch.nn.Module, opt: torch.optim.Optimizer, objective,
          at_epoch: int, attack: Callable, gen: torch.Generator) -> int:
    objective.start_epoch(at_epoch)
    seen = 0
    for i, (x, y, idx) in enumerate(loader):
        batch = Batch(model, x, y, idx, StepInfo(at_epoch, i, i, 0.01))
        plan = objective.prepare(batch, AttackPlan(eps=EPS, step_size=ALPHA, steps=STEPS))
        res = attack(model, x, y, plan, generator=gen)
        model.train()
        opt.zero_grad(set_to_none=True)
        loss, _ = objective.loss(model, batch, res.x_adv, plan)
        loss.mean().backward()
        opt.step()
        seen += x.shape[0]
    objective.end_epoch(at_epoch)
    if loader.device.type == "cuda":
        torch.cuda.synchronize()
    return seen


def run(args: argparse.Namespace) -> dict:
    loader, model, opt, ctx = setup(args)
    attack = ATTACKS.build({"name": "pgd"})
    gen = torch.Generator(device=ctx.device).manual_seed(2)
    table = variants(ctx)
    table["uiat_oneoff_after"][0].start_epoch(0)
    epoch(loader, model, opt, table["uiat_oneoff_after"][0], 0, attack, gen)  # T' = 0: store p
    for obj, at in table.values():  # warm-up (allocator, kernels)
        epoch(loader, model, opt, obj, at, attack, gen)
    times: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(args.repeats):
        for name, (obj, at) in table.items():
            t0 = time.perf_counter()
            epoch(loader, model, opt, obj, at, attack, gen)
            times[name].append(time.perf_counter() - t0)
    passes = {}
    for name, (obj, at) in table.items():
        with count_passes(model) as c:
            epoch(loader, model, opt, obj, at, attack, gen)
        f, b = c.per_batch(args.batch_size, args.batches)
        passes[name] = {"F": round(f, 3), "B": round(b, 3)}
    med = {name: statistics.median(v) for name, v in times.items()}
    order = ["uiat_oneoff_after", "uiat", "trades", "iat"]
    return {
        "seconds_per_epoch": med,
        "ratio_to_pgd_at": {name: v / med["pgd_at"] for name, v in med.items()},
        "passes_per_batch": passes,
        "paper_table2_order": " < ".join(order),
        "measured_order": " < ".join(sorted(order, key=med.get)),
        "paper_order_holds": all(med[a] < med[b] for a, b in zip(order, order[1:], strict=False)),
        "samples_s": times,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="CIFAR-10 ImageFolder directory or .tar.gz")
    p.add_argument("--width", type=int, default=16, help="PreActResNet-18 base width (64 = full)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = p.parse_args()
    result = run(args)
    result["settings"] = dict(vars(args))
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
