"""Corruption cost: wall time of every corruption at every severity on the
first ``--n`` CIFAR-10 test images, as one batch or in batches of ``--batch-size``.

Usage (from the repository root; CIFAR-10 as an ImageFolder tree or .tar.gz):

    PYTHONPATH=src python benchmarks/corruptions.py --data /path/cifar10-jpeg.tar.gz --n 1000

Prints JSON: per corruption the median seconds (over ``--repeats`` rounds) of each severity and
their sum, and the total for all 15 x 5. Rounds go through all corruptions in turn (round 1 of
every corruption, then round 2, ...), so background load hits them alike. Frost's one-off texture
preparation is done before timing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from adaptrain.corruptions import CORRUPTIONS, corrupt, resolve_table
from adaptrain.data import load_arrays


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="CIFAR-10 ImageFolder tree or .tar.gz")
    p.add_argument("--n", type=int, default=1000, help="test images")
    p.add_argument("--batch-size", type=int, default=0, help="0: all --n images in one batch")
    p.add_argument("--table", default="auto", choices=["auto", "cifar", "imagenet"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", default="", help="comma-separated subset of corruptions")
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_one(x: torch.Tensor, name: str, severity: int, batch: int, table: str) -> float:
    start = time.perf_counter()
    for i in range(0, x.shape[0], batch):
        corrupt(x[i:i + batch], name, severity, seed=i, table=table)
    sync(x.device)
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = load_arrays("imagefolder", args.data).x_test[: args.n].to(device)
    batch = args.batch_size or x.shape[0]
    names = [n for n in args.only.split(",") if n] or list(CORRUPTIONS)
    unknown = sorted(set(names) - set(CORRUPTIONS))
    if unknown:
        raise SystemExit(f"unknown corruptions: {', '.join(unknown)}")
    for name in names:  # warm-up: frost textures, kernels, allocator
        corrupt(x[:2], name, 5, table=args.table)
    times: dict[str, list[list[float]]] = {n: [[] for _ in range(5)] for n in names}
    for _ in range(args.repeats):
        for name in names:
            for severity in range(1, 6):
                times[name][severity - 1].append(time_one(x, name, severity, batch, args.table))
    per = {n: [statistics.median(t) for t in times[n]] for n in names}
    total = sum(sum(v) for v in per.values())
    print(json.dumps({
        "n": int(x.shape[0]),
        "image_shape": list(x.shape[1:]),
        "batch_size": batch,
        "table": resolve_table(args.table, x.shape[-2], x.shape[-1]).name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "seconds": {n: {"by_severity": [round(t, 4) for t in v], "all_severities": round(sum(v), 4)}
                    for n, v in per.items()},
        "total_seconds": round(total, 3),
        "images_per_second_all_75": round(x.shape[0] * len(names) * 5 / total, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
