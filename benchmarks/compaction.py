"""Does a batch with uneven per-sample steps cost the mean of its steps? One PGD call on a batch
whose samples take 3..15 steps, with active-set compaction (frozen samples leave the working
batch, what eval-mode BatchNorm allows) and with masking (every row forwarded every step, what
train-mode BatchNorm needs).

Usage (from the repository root; CIFAR-10 as an ImageFolder tree or .tar.gz):

    PYTHONPATH=src python benchmarks/compaction.py --data /path/cifar10-jpeg.tar.gz --width 16 --repeats 5

The two modes are interleaved (A, B, A, B, ...) and medians reported, so background load hits
both alike. Pass counts come from adaptrain.profiling and are exact. Training throughput and
its comparison with the common PGD-AT pattern are `adaptrain bench pgd-at --reference`
(docs/bench.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from adaptrain.attacks import AttackPlan, pgd
from adaptrain.data import BatchLoader, load_arrays
from adaptrain.models import build_model
from adaptrain.profiling import count_passes

EPS, ALPHA = 8 / 255, 2 / 255


def setup(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A narrow PreActResNet-18 and one augmented batch of CIFAR-10 training images."""
    torch.manual_seed(0)
    arrays = load_arrays("imagefolder", args.data)
    n = args.batch_size
    loader = BatchLoader(arrays.x_train[:n], arrays.y_train[:n], batch_size=n, shuffle=True,
                         augment="crop_flip", generator=torch.Generator().manual_seed(0))
    model = build_model({"name": "preact_resnet18", "width": args.width}, arrays.spec)
    x, y, _ = next(iter(loader))
    return model, x, y


def compaction(args: argparse.Namespace) -> dict:
    model, x, y = setup(args)
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
    p.add_argument("--data", required=True, help="CIFAR-10 ImageFolder directory or .tar.gz")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    result = compaction(args)
    result["settings"] = {k: v for k, v in vars(args).items()}
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
