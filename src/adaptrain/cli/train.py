"""``adaptrain train PRESET [key=value ...] --out RUN`` and ``adaptrain train --resume RUN [epochs=N]``.

A new run needs a new or empty ``--out``; a resume may change only ``epochs`` (extending a
run); ``--dry-run`` checks everything and prints the resolved config without writing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError

# fields a resume may change: the rest would break exact continuation (threads only changes the
# order of CPU summations, i.e. the last bits; log only where copies of the tables go)
RESUMABLE = ("epochs", "threads", "log")


def run(args: argparse.Namespace) -> int:
    from ..claim import check_new, check_resumable, is_run
    from ..distributed import World
    from ..threads import apply_threads, resolve_threads
    from ..train import check_init, train

    if not args.resume and args.out and restarted_by_torchrun() and is_run(Path(args.out)):
        # torchrun --max-restarts restarts every rank with the same command line: the run
        # this command started continues from its last completed epoch
        args.resume, args.preset, args.overrides = args.out, None, []
    if args.resume:
        out = Path(args.resume)
        overrides = list(args.overrides)
        if args.preset:  # argparse reads the first key=value after --resume RUN as the preset
            if "=" not in args.preset:
                raise ConfigError("--resume", f"give no preset with --resume (the run's config.yaml "
                                  f"is its config), got {args.preset!r}")
            overrides.insert(0, args.preset)
        if args.threads:
            overrides.append(f"threads={args.threads}")
        check_resumable(out)
        cfg = resume_config(out, overrides)
        preset, resume = "", True
    else:
        if not args.preset:
            raise ConfigError("preset", "give a preset name or YAML file (see `adaptrain presets`)")
        if not args.out and not args.dry_run:
            raise ConfigError("--out", "required: the run directory to write")
        from ..config import build_config

        over = list(args.overrides) + ([f"threads={args.threads}"] if args.threads else [])
        cfg = build_config(args.preset, over)
        out = Path(args.out) if args.out else None
        if out is not None:
            check_new(out)
        preset, resume = args.preset, False
    check_init(cfg)
    if args.dry_run:  # no directory is created, no data read
        print(cfg.dump(), end="")
        print("# dry run: the config above is valid; nothing was written"
              + (f" to {out}" if out else ""), file=sys.stderr)
        return 0
    assert out is not None
    # under torchrun: join the other ranks only now, after every check that needs no peer
    world = World.from_env(cfg.device)
    apply_threads(resolve_threads(cfg.threads, sharers=world.local_size))
    train(cfg, out, resume=resume, preset=preset, progress=None if not args.quiet else False,
          world=world)
    if world.main:
        print(f"run written to {out}")
    return 0


def restarted_by_torchrun() -> bool:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def resume_config(out: Path, overrides: list[str]):
    """The run's config with the resume overrides (only RESUMABLE fields), validated."""
    from ..config import _merge, _read_yaml, config_from_dict, parse_overrides

    over = parse_overrides(overrides)
    changed = sorted(set(over) - set(RESUMABLE))
    if changed:
        raise ConfigError(changed[0], f"cannot be changed when resuming (only {', '.join(RESUMABLE)} "
                          "can); start a new run to change it")
    return config_from_dict(_merge(_read_yaml(out / "config.yaml"), over))


def add_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="train a preset or YAML config")
    t.add_argument("preset", nargs="?", help="preset name (see `adaptrain presets`) or YAML path")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=2 model.width=16")
    t.add_argument("--out", help="run directory to create")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--threads", metavar="N|auto",
                   help="CPU threads per process (the config's `threads`; default auto)")
    t.add_argument("--dry-run", action="store_true",
                   help="check the config and --out, print the resolved config, write nothing")
    t.set_defaults(fn=run)
