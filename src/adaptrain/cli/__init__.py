"""``adaptrain`` command line: train, eval, export, report, calibrate-dra, presets, config,
bench — one module each.

Each subcommand module owns its parser (``add_parser``) and its work (``run``). Errors a user
can fix (bad preset, field, flag, value, missing data, unsafe checkpoint, a malformed command
line) print one line ``error: <field>: <message>`` and exit with code 2 before any work
starts; a training failure (e.g. a diverged run) exits with code 1 and leaves the last good
checkpoint intact.
"""

from __future__ import annotations

import argparse
import os
import sys

# Read once, when torch loads the OpenMP runtime, so it must come first: threads waiting for
# work sleep instead of spinning on a core that another busy process needs (2 threads next to
# two busy processes on 2 cores: quickstart 627 s spinning, 202 s passive; idle 94 vs 98 s;
# docs/bench.md, "Threads"). A value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ..errors import AdaptrainError, ConfigError, TrainingError  # noqa: E402
from . import bench, calibrate, export, presets, report, train  # noqa: E402
from . import config as config_cmd  # noqa: E402
from . import eval as eval_cmd  # noqa: E402

SUBCOMMANDS = (train, eval_cmd, export, report, calibrate, presets, config_cmd, bench)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one ``error: <command>: ...`` line (exit 2)
    instead of a usage block, like every other error."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(self.prog, f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="adaptrain", description="Adversarial training with an adaptive adversary.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # under torchrun every rank reports its own error, marked with its rank
    who = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    try:
        args = parse(argv)
        return int(args.fn(args) or 0)
    except TrainingError as exc:
        print(f"{who}error: {exc}", file=sys.stderr)
        return 1
    except AdaptrainError as exc:
        print(f"{who}error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `adaptrain presets | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit either
        return 1
    except OSError as exc:  # e.g. a full disk or a read-only folder met after the checks
        where = exc.filename or "file system"
        print(f"error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with `adaptrain train --resume RUN_DIR`", file=sys.stderr)
        return 130


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    # key=value overrides may come before or after options such as --out
    args, extra = parser.parse_known_args(argv)
    if extra:
        takes_overrides = getattr(args, "command", None) in ("train", "config", "bench")
        if takes_overrides and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            raise ConfigError(f"adaptrain {args.command}", f"unrecognized arguments: {' '.join(extra)} "
                              f"(see `adaptrain {args.command} --help`)")
    return args
