"""Foundation benchmarks (issue 2): PGD-10 AT throughput vs the common reference pattern, and the
cost of a batch with uneven per-sample steps with and without active-set compaction.

Usage (from the repository root; CIFAR-10 as an ImageFolder tree or .tar.gz):

    PYTHONPATH=src python benchmarks/foundation.py throughput --data /path/cifar10-jpeg.tar.gz
    PYTHONPATH=src python benchmarks/foundation.py compaction --data /path/cifar10-jpeg.tar.gz

Both interleave the variants (A, B, A, B, ...) and report medians, so background load hits
both alike. Pass counts come from adaptrain.profiling and are exact.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from adaptrain.attacks import ATTACKS, AttackPlan, pgd
from adaptrain.context import Batch, StepInfo
from adaptrain.data import BatchLoader, load_arrays
from adaptrain.models import build_model
from adaptrain.objectives import OBJECTIVES
from adaptrain.profiling import count_passes

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10


def setup(args: argparse.Namespace):
    torch.manual_seed(0)
    arrays = load_arrays("imagefolder", args.data)
    n = args.batch_size * args.batches
    loader = BatchLoader(arrays.x_train[:n], arrays.y_train[:n], batch_size=args.batch_size,
                         shuffle=True, augment="crop_flip", generator=torch.Generator().manual_seed(0))
    model = build_model({"name": "preact_resnet18", "width": args.width}, arrays.spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return loader, model, opt


def adaptrain_epoch(loader, model, opt) -> int:
    """One pass of the package's training step (fixed strategy, PGD, pgd_at objective)."""
    attack = ATTACKS.build({"name": "pgd"})
    objective = OBJECTIVES.build({"name": "pgd_at"}, ctx=None)
    gen = torch.Generator().manual_seed(1)
    seen = 0
    for i, (x, y, idx) in enumerate(loader):
        batch = Batch(model, x, y, idx, StepInfo(0, i, i, 0.01))
        plan = objective.prepare(batch, AttackPlan(eps=EPS, step_size=ALPHA, steps=STEPS))
        res = attack(model, x, y, plan, generator=gen)
        model.train()
        opt.zero_grad(set_to_none=True)
        loss, _ = objective.loss(model, batch, res.x_adv, plan)
        loss.mean().backward()
        opt.step()
        seen += x.shape[0]
    return seen


def reference_epoch(loader, model, opt) -> int:
    """The pattern of most public PGD-AT code: the attack calls loss.backward() on the whole
    model, so every step also computes (and then discards) all weight gradients."""
    seen = 0
    for x, y, _ in loader:
        model.eval()  # same BatchNorm mode as adaptrain's default attack_bn=eval
        delta = torch.empty_like(x).uniform_(-EPS, EPS)
        delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
        for _ in range(STEPS):
            loss = F.cross_entropy(model(x + delta), y)
            loss.backward()
            grad = delta.grad.detach()
            delta.data = (delta + ALPHA * grad.sign()).clamp(-EPS, EPS)
            delta.data = (x + delta.data).clamp(0, 1) - x
            delta.grad.zero_()
        model.train()
        opt.zero_grad()
        loss = F.cross_entropy(model((x + delta.detach()).clamp(0, 1)), y)
        loss.backward()
        opt.step()
        seen += x.shape[0]
    return seen


def throughput(args: argparse.Namespace) -> dict:
    loader, model, opt = setup(args)
    adaptrain_epoch(loader, model, opt)  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {"adaptrain": [], "reference": []}
    for _ in range(args.repeats):
        for name, fn in (("adaptrain", adaptrain_epoch), ("reference", reference_epoch)):
            t0 = time.perf_counter()
            seen = fn(loader, model, opt)
            times[name].append(seen / (time.perf_counter() - t0))
    with count_passes(model) as c:
        adaptrain_epoch(loader, model, opt)
    out = {name: statistics.median(v) for name, v in times.items()}
    out["ratio"] = out["adaptrain"] / out["reference"]
    out["adaptrain_F_B_per_batch"] = c.per_batch(args.batch_size, args.batches)
    out["samples_img_per_s"] = times
    return out


def compaction(args: argparse.Namespace) -> dict:
    loader, model, _ = setup(args)
    x, y, _ = next(iter(loader))
    g = torch.Generator().manual_seed(0)
    steps = torch.randint(3, 16, (x.shape[0],), generator=g)
    plan = AttackPlan(eps=EPS, step_size=ALPHA, steps=steps, bn="eval")
    times: dict[str, list[float]] = {"compact": [], "masked": []}
    counts = {}
    for _ in range(args.repeats):
        for name, flag in (("compact", True), ("masked", False)):
            with count_passes(model) as c:
                t0 = time.perf_counter()
                pgd(model, x, y, plan, generator=torch.Generator().manual_seed(1), compact=flag)
                times[name].append(time.perf_counter() - t0)
            counts[name] = c.per_batch(x.shape[0])
    med = {name: statistics.median(v) for name, v in times.items()}
    return {"seconds_per_batch": med, "ratio_compact_over_masked": med["compact"] / med["masked"],
            "F_B_per_batch": counts, "mean_steps": steps.float().mean().item(),
            "max_steps": int(steps.max()), "samples_s": times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["throughput", "compaction"])
    p.add_argument("--data", required=True, help="CIFAR-10 ImageFolder directory or .tar.gz")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    result = throughput(args) if args.what == "throughput" else compaction(args)
    result["settings"] = {k: v for k, v in vars(args).items()}
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
