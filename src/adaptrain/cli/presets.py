"""``adaptrain presets``: every preset with its one-line description."""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    from ..config import load_preset, preset_names

    names = preset_names()
    width = max(len(n) for n in names)
    for name in names:
        desc = str(load_preset(name).get("description", "")).strip().splitlines()
        print(f"{name:<{width}}  {desc[0] if desc else ''}")
    return 0


def add_parser(sub: Any) -> None:
    s = sub.add_parser("presets", help="list presets with one-line descriptions")
    s.set_defaults(fn=run)
