"""``adaptrain`` command line: train, eval, report, calibrate-dra, presets.

Errors a user can fix (bad preset, field, value, missing data, unsafe checkpoint) print one
line ``error: <field>: <message>`` and exit with code 2 before any work starts; a training
failure (e.g. a non-finite loss) exits with code 1 and leaves the last checkpoint intact.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import AdaptrainError, ConfigError, TrainingError

RESUMABLE = ("epochs",)  # fields a resume may change: the rest would break exact continuation


def cmd_train(args: argparse.Namespace) -> int:
    from .claim import check_new, check_resumable
    from .train import check_init, train

    if args.resume:
        out = Path(args.resume)
        overrides = list(args.overrides)
        if args.preset:  # argparse reads the first key=value after --resume RUN as the preset
            if "=" not in args.preset:
                raise ConfigError("--resume", f"give no preset with --resume (the run's config.yaml "
                                  f"is its config), got {args.preset!r}")
            overrides.insert(0, args.preset)
        check_resumable(out)
        cfg = resume_config(out, overrides)
        preset, resume = "", True
    else:
        if not args.preset:
            raise ConfigError("preset", "give a preset name or YAML file (see `adaptrain presets`)")
        if not args.out:
            raise ConfigError("--out", "required: the run directory to write")
        from .config import build_config

        cfg = build_config(args.preset, args.overrides)
        out = Path(args.out)
        check_new(out)
        preset, resume = args.preset, False
    check_init(cfg)
    if args.dry_run:
        print(cfg.dump(), end="")
        print(f"# dry run: the config above is valid; nothing was written to {out}", file=sys.stderr)
        return 0
    train(cfg, out, resume=resume, preset=preset, progress=None if not args.quiet else False)
    print(f"run written to {out}")
    return 0


def resume_config(out: Path, overrides: list[str]):
    """The run's config with the resume overrides (only RESUMABLE fields), validated."""
    from .config import _merge, _read_yaml, config_from_dict, parse_overrides

    over = parse_overrides(overrides)
    changed = sorted(set(over) - set(RESUMABLE))
    if changed:
        raise ConfigError(changed[0], f"cannot be changed when resuming (only {', '.join(RESUMABLE)} "
                          "can); start a new run to change it")
    return config_from_dict(_merge(_read_yaml(out / "config.yaml"), over))


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval_cli import run_eval

    return run_eval(args)


def cmd_calibrate_dra(args: argparse.Namespace) -> int:
    from .calibrate import run_cli

    return run_cli(args)


def cmd_presets(args: argparse.Namespace) -> int:
    from .config import load_preset, preset_names

    names = preset_names()
    width = max(len(n) for n in names)
    for name in names:
        desc = str(load_preset(name).get("description", "")).strip().splitlines()
        print(f"{name:<{width}}  {desc[0] if desc else ''}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import run_report

    return run_report(args)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="adaptrain", description="Adversarial training with an "
                                "adaptive adversary.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a preset or YAML config")
    t.add_argument("preset", nargs="?", help="preset name (see `adaptrain presets`) or YAML path")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=2 model.width=16")
    t.add_argument("--out", help="run directory to create")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--dry-run", action="store_true",
                   help="check the config and --out, print the resolved config, write nothing")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run directory or checkpoint")
    from .eval_cli import add_arguments

    add_arguments(e)
    e.set_defaults(fn=cmd_eval)

    r = sub.add_parser("report", help="tables and plots from run directories")
    r.add_argument("runs", nargs="+", help="run directories")
    r.add_argument("--out", default=None, help="output directory (default: first run /report)")
    r.set_defaults(fn=cmd_report)

    c = sub.add_parser("calibrate-dra", help="match DRA and PGD budgets by robust accuracy "
                       "(DRA paper, Table V)")
    c.add_argument("target", help="run directory, checkpoint directory or weights file")
    c.add_argument("--dra-eps", default="1/255", help="DRA budget whose accuracy PGD must match "
                   "(default 1/255, per coordinate)")
    c.add_argument("--target-acc", type=float, default=None,
                   help="instead: find both budgets that leave this robust accuracy")
    c.add_argument("--p", default="1/3", help="DRA kept fraction (default 1/3)")
    c.add_argument("--steps", type=int, default=5, help="DRA steps T (default 5)")
    c.add_argument("--budget", default="per_coordinate", choices=["per_coordinate", "total"])
    c.add_argument("--pgd-steps", type=int, default=20, help="PGD-k with step eps/k (default 20)")
    c.add_argument("--max-pgd-eps", default="16/255")
    c.add_argument("--max-dra-eps", default="16/255")
    c.add_argument("--tol", type=float, default=0.005, help="accuracy tolerance (default 0.005)")
    c.add_argument("--n", type=int, default=1000, help="number of examples")
    c.add_argument("--checkpoint", default="best", choices=["best", "last"])
    c.add_argument("--config", default=None, help="config YAML for a bare checkpoint")
    c.add_argument("--split", default="test", choices=["test", "val"])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--batch-size", type=int, default=256)
    c.add_argument("--device", default="auto")
    c.add_argument("--out", default=None, help="JSON file (default RUN/eval/calibrate-dra.json)")
    c.set_defaults(fn=cmd_calibrate_dra)

    s = sub.add_parser("presets", help="list presets with one-line descriptions")
    s.set_defaults(fn=cmd_presets)
    return p


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one ``error: <command>: ...`` line (exit 2)
    instead of a usage block, like every other error."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(self.prog, f"{message} (see `{self.prog} --help`)")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
        return int(args.fn(args) or 0)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except AdaptrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
        if getattr(args, "command", None) == "train" and all("=" in e and not e.startswith("-")
                                                              for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            raise ConfigError(f"adaptrain {args.command}", f"unrecognized arguments: {' '.join(extra)} "
                              f"(see `adaptrain {args.command} --help`)")
    return args


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
