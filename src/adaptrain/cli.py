"""``adaptrain`` command line: train, eval, report, calibrate-dra, presets.

Errors a user can fix (bad preset, field, value, missing data, unsafe checkpoint) print one
line ``error: <field>: <message>`` and exit with code 2 before any work starts; a training
failure (e.g. a non-finite loss) exits with code 1 and leaves the last checkpoint intact.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from .errors import AdaptrainError, ConfigError, TrainingError


def _writable_dir(out: Path) -> None:
    """Fail early (ConfigError naming --out) if ``out`` cannot be created and written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError("--out", f"cannot write to {out}: {exc.strerror or exc}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from .config import build_config, load_config_file, parse_overrides
    from .train import train

    if args.resume:
        out = Path(args.resume)
        cfg_path = out / "config.yaml"
        if not cfg_path.is_file():
            raise ConfigError("--resume", f"{out} is not a run directory (no config.yaml)")
        over = parse_overrides(args.overrides)
        if set(over) - {"epochs"}:
            raise ConfigError("--resume", "only epochs=N may be changed when resuming")
        cfg = load_config_file(cfg_path)
        if "epochs" in over:
            cfg.epochs = int(over["epochs"])
        preset = args.preset or ""
        resume = (out / "checkpoints" / "last").is_dir()
    else:
        if not args.preset:
            raise ConfigError("preset", "give a preset name or YAML file (see `adaptrain presets`)")
        if not args.out:
            raise ConfigError("--out", "required: the run directory to write")
        cfg = build_config(args.preset, args.overrides)
        out = Path(args.out)
        if (out / "checkpoints").exists():
            raise ConfigError("--out", f"{out} already holds a run; use --resume {out} or "
                              "another directory")
        preset, resume = args.preset, False
    _writable_dir(out)
    train(cfg, out, resume=resume, preset=preset, progress=None if not args.quiet else False)
    print(f"run written to {out}")
    return 0


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
    p = argparse.ArgumentParser(prog="adaptrain", description="Adversarial training with an "
                                "adaptive adversary.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a preset or YAML config")
    t.add_argument("preset", nargs="?", help="preset name (see `adaptrain presets`) or YAML path")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=2 model.width=16")
    t.add_argument("--out", help="run directory to create")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options such as --out
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "command", None) == "train" and all("=" in e and not e.startswith("-")
                                                              for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.fn(args) or 0)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except AdaptrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with `adaptrain train --resume RUN_DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
