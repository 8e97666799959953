"""``adaptrain report``: comparison tables and plots from run directories."""

from __future__ import annotations

import argparse

from .errors import ConfigError


def run_report(args: argparse.Namespace) -> int:
    raise ConfigError("report", "not available yet")
