"""``adaptrain bench PRESET [PRESET ...] [key=value ...]``: images/s, seconds per epoch, exact
passes per image and efficiency against the pass floor of each preset on this machine, timed
through the real training epoch (:mod:`adaptrain.bench`; docs/bench.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .args import integer


def run(args: argparse.Namespace) -> int:
    from .. import bench

    presets = [i for i in args.overrides if "=" not in i]
    common = [i for i in args.overrides if "=" in i]
    entries, plan_common = bench.read_plan(Path(args.plan)) if args.plan else ([], [])
    entries = [*entries, *bench.entries_of(presets)]
    if not entries:
        raise ConfigError("preset", "give at least one preset or --plan (see `adaptrain presets`)")
    settings = bench.Settings(
        repeats=integer(args.repeats, "--repeats", 1, 10_000),
        batches=integer(args.batches, "--batches", 1, 1_000_000),
        warmup=integer(args.warmup, "--warmup", 0, 10_000),
        epoch=integer(args.epoch, "--epoch", 0, 1_000_000),
        threads=args.threads, device=args.device, reference=args.reference)
    result = bench.bench(entries, [*plan_common, *common], settings)
    print(bench.markdown(result), end="")
    if args.out:
        j, md = bench.write(result, Path(args.out))
        print(f"written to {j} and {md}")
    return 0


def add_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="time presets' training epochs: images/s, passes, efficiency")
    b.add_argument("overrides", nargs="*", metavar="PRESET_OR_KEY=VALUE",
                   help="presets (names or YAML files) to compare, and key=value overrides for all "
                        "of them, e.g. pgd-at trades model.width=16 amp=off")
    b.add_argument("--plan", default=None,
                   help="YAML plan: {common: [k=v, ...], rows: [{label, preset, overrides}, ...]}")
    b.add_argument("--repeats", default="3", help="timed epochs per preset, interleaved (default 3)")
    b.add_argument("--batches", default="4", help="batches per timed epoch (default 4)")
    b.add_argument("--warmup", default="1", help="untimed epochs per preset first (default 1)")
    b.add_argument("--epoch", default="0",
                   help="0-based training epoch the timed batches stand for (schedules, AWP warm-up, "
                        "UIAT's T'); the warm-up runs the epochs before it (default 0)")
    b.add_argument("--threads", default=None, help="torch CPU threads: N or auto (default auto: "
                   "the CPUs this process may use, or OMP_NUM_THREADS)")
    b.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the presets')")
    b.add_argument("--reference", action="store_true",
                   help="add a row for PGD-AT as most public code writes it (loss.backward() on the "
                        "whole model at every attack step), on the first preset's config")
    b.add_argument("--out", default=None, help="directory for bench.json and bench.md")
    b.set_defaults(fn=run)
