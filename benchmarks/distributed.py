"""One process with T threads against torchrun with R ranks of T/R threads each: PGD-AT training
throughput at the same global batch, interleaved repeats, median.

    python benchmarks/distributed.py --data-root ../shared/data/cifar10-jpeg.tar.gz \
        --subset 1024 --repeats 3 --out /tmp/dist-bench

Each repeat trains one epoch of ``--subset`` images into a fresh run directory and reads the
epoch's ``train_time_s`` from its metrics.csv (validation and start-up excluded). Refuses to
time while other adaptrain work runs on the machine (never touches other processes).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def busy() -> list[str]:
    """Command lines of other adaptrain / pytest processes (timing would be meaningless)."""
    me, out = os.getpid(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        mine = int(pid) == me or "benchmarks/distributed.py" in cmd
        if not mine and ("adaptrain" in cmd or "pytest" in cmd):
            out.append(cmd[:120])
    return out


def one(kind: str, args: argparse.Namespace, out: Path) -> float:
    over = ["pgd-at", "data.name=imagefolder", f"data.root={args.data_root}",
            f"data.subset={args.subset}", "data.val_size=0", "data.batch_size=128", "epochs=1",
            "model.width=16", "eval.n=16", "eval.attack=pgd-1", "device=cpu", "--quiet",
            "--out", str(out)]
    env = {**os.environ}
    if kind == "process":
        env["OMP_NUM_THREADS"] = str(args.threads)
        cmd = [sys.executable, "-m", "adaptrain", "train", *over]
    else:
        env["OMP_NUM_THREADS"] = str(max(1, args.threads // args.ranks))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={args.ranks}", "-m", "adaptrain", "train", *over]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    row = next(csv.DictReader((out / "metrics.csv").open()))
    return float(row["train_time_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=os.environ.get("ADAPTRAIN_DATA_ROOT",
                                                         "../shared/data/cifar10-jpeg.tar.gz"))
    p.add_argument("--subset", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if others := busy():
        sys.exit("other adaptrain work is running; time on an idle machine:\n  " + "\n  ".join(others))
    args.out.mkdir(parents=True, exist_ok=True)
    one("process", args, args.out / "warm")  # decodes and caches the data set once
    times: dict[str, list[float]] = {"process": [], "ranks": []}
    for r in range(args.repeats):
        for kind in times:
            times[kind].append(one(kind, args, args.out / f"{kind}-{r}"))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"subset": args.subset, "global_batch": 128, "threads": args.threads,
              "ranks": args.ranks, "seconds": times,
              "images_per_s": {k: args.subset / v for k, v in med.items()},
              "ratio_ranks_over_process": med["process"] / med["ranks"],
              "load_after": os.getloadavg()}
    (args.out / "distributed.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
