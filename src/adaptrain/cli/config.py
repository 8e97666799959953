"""``adaptrain config PRESET [key=value ...]``: the config a run of it would use, as YAML.

The preset's ``base`` chain is merged, the overrides applied, every component's defaults
filled in and the result validated exactly as ``adaptrain train`` does (a bad field is the
same one line, exit 2), so what is printed is what a run would write to RUN/config.yaml; it
loads back (``adaptrain train printed.yaml --out RUN``) to the same config. Nothing is
written and no data is read.
"""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    from ..config import build_config
    from ..train import check_init

    cfg = build_config(args.preset, list(args.overrides))
    check_init(cfg)
    said = " ".join([args.preset, *args.overrides])
    print(f"# adaptrain config {said}\n{cfg.dump()}", end="")
    return 0


def add_parser(sub: Any) -> None:
    c = sub.add_parser("config", help="print a preset's resolved config (validated) as YAML")
    c.add_argument("preset", help="preset name (see `adaptrain presets`) or YAML path")
    c.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=2 model.width=16")
    c.set_defaults(fn=run)
