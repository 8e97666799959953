"""Claiming a run directory: one process at a time, never someone else's files.

A new run needs an empty or new ``--out``; a directory that already holds a run is resumed,
not overwritten, and any other non-empty directory is refused. The claim holds an exclusive
lock on ``RUN/.lock`` until training ends (released by the operating system if the process
dies), so a second ``adaptrain train`` on the same directory stops at once. A new run that
fails before its first checkpoint removes what it created and nothing that was there before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import checkpoint, fileio
from .errors import ConfigError

LOCK = ".lock"


def is_run(out: Path) -> bool:
    """A directory adaptrain trained into: its ``config.yaml`` is a resolved adaptrain config
    (a run killed in its first epoch has nothing else yet). Only its shape is checked here: a
    run whose config no longer validates (a file it names was deleted) is still a run."""
    import yaml

    try:
        data = yaml.safe_load((out / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and {"epochs", "data", "model", "strategy", "attack"} <= set(data)


def check_new(out: Path) -> None:
    """Refuse ``out`` for a new run unless it is missing or empty (ConfigError naming --out)."""
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{out} is a file, not a directory")
    if not out.is_dir():
        return
    if is_run(out):
        raise ConfigError("--out", f"{out} already holds a run; continue it with "
                          f"`adaptrain train --resume {out}` or choose another directory")
    # our own leftovers (the lock, a half-written file) do not make it someone else's directory
    if any(p.name != LOCK and not fileio.is_partial(p) for p in out.iterdir()):
        raise ConfigError("--out", f"{out} is not empty and is not an adaptrain run; choose a new "
                          "or empty directory (nothing was written)")


def check_resumable(out: Path) -> None:
    if not is_run(out):
        raise ConfigError("--resume", f"{out} is not an adaptrain run directory (no valid config.yaml)")


@contextmanager
def claim(out: Path, *, resume: bool) -> Iterator[None]:
    """Lock ``out`` for this process; on failure of a new run that wrote no checkpoint, remove
    the files it created (and ``out`` itself if it created it)."""
    out = Path(out)
    if resume:
        check_resumable(out)
    else:
        check_new(out)
    existed = out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        before = {p.name for p in out.iterdir()}
    except OSError as exc:
        raise ConfigError("--out", f"cannot create {out}: {exc.strerror or exc}") from None
    with fileio.exclusive_lock(out / LOCK, what="--out", holder=f"the run directory {out}"):
        if not resume:
            check_new(out)  # a concurrent run may have claimed it between the check and the lock
        fileio.remove_partials(out)
        try:
            yield
        except BaseException:
            if not resume and not checkpoint.is_complete(out / "checkpoints" / "last"):
                _remove_created(out, existed, before)
            raise


def _remove_created(out: Path, existed: bool, before: set[str]) -> None:
    if not existed:
        fileio.remove_tree(out)
        return
    for p in out.iterdir():
        if p.name not in before:
            if p.is_dir():
                fileio.remove_tree(p)
            else:
                p.unlink(missing_ok=True)
