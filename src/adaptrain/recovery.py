"""Make ``checkpoints/last`` and ``checkpoints/best`` consistent after a crash, before a resume.

Each epoch commits in one order: ``last`` (weights, optimiser, history, every RNG) is swapped
in first — that rename is the epoch's commit point — then ``best`` when the epoch is the new
best, then metrics.csv and summary.json, which a resume rewrites from the history. A kill at
any point therefore leaves: the newest complete ``last`` either in place or stranded as
``.last.tmp-*`` / ``.last.old-*`` (between the two renames of a swap); and the best epoch
named by that history either in ``best``, stranded the same way, or equal to the last epoch,
whose weights are then the best weights. :func:`recover` puts both back, says so in one line
each, and deletes the leftovers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import checkpoint, fileio
from .errors import CheckpointError
from .rundir import best_row


def _candidates(ckpts: Path, name: str) -> list[tuple[int, Path]]:
    """Complete checkpoints called ``name`` or stranded as ``.name.tmp-*`` / ``.name.old-*``,
    with their epochs; the canonical one first among equal epochs."""
    paths = [ckpts / name, *sorted(ckpts.glob(f".{name}.tmp-*")), *sorted(ckpts.glob(f".{name}.old-*"))]
    out = []
    for p in paths:
        if p.is_dir() and checkpoint.is_complete(p):
            try:
                out.append((int(checkpoint.load_state(p)["epoch"]), p))
            except (CheckpointError, KeyError, TypeError, ValueError):
                continue  # unreadable: not a candidate
    return out


def _leftovers(ckpts: Path) -> list[Path]:
    return [p for p in ckpts.iterdir() if p.name.startswith((".last.", ".best."))]


def recover(ckpts: Path, select: str, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Repair ``ckpts`` (a run's checkpoints directory) in place; returns the training state of
    the recovered ``last`` (None when no epoch was ever completed)."""
    if not ckpts.is_dir():
        return None
    fileio.remove_partials(ckpts)
    lasts = _candidates(ckpts, "last")
    if not lasts and (ckpts / "last").exists():  # there, but unreadable: never restart silently
        checkpoint.load_state(ckpts / "last")
        raise CheckpointError("checkpoint", f"{ckpts / 'last'} is incomplete or not a training state")
    if not lasts:
        for p in _leftovers(ckpts):
            fileio.remove_tree(p)
        return None
    epoch, src = max(lasts, key=lambda c: c[0])  # max keeps the first (canonical) of equals
    last = ckpts / "last"
    if src != last:
        checkpoint.swap_in(src, last)
        log(f"recovered {last} (epoch {epoch}) from {src.name}, left by an interrupted save")
    state = checkpoint.load_state(last)
    history = state.get("history")
    try:
        row = best_row(list(history), select)
    except (TypeError, ValueError, KeyError):
        raise CheckpointError("checkpoint", f"{last / checkpoint.STATE_FILE} holds no valid "
                              "training history; it was not written by adaptrain train") from None
    if row is not None:
        _recover_best(ckpts, int(row["epoch"]), epoch, row, log)
    for p in _leftovers(ckpts):
        fileio.remove_tree(p)
    return state


def _recover_best(ckpts: Path, best_epoch: int, last_epoch: int, row: dict[str, Any],
                  log: Callable[[str], None]) -> None:
    best = ckpts / "best"
    found = [p for e, p in _candidates(ckpts, "best") if e == best_epoch]
    if found and found[0] == best:
        return
    if found:
        checkpoint.swap_in(found[0], best)
        log(f"recovered {best} (epoch {best_epoch}) from {found[0].name}, left by an interrupted save")
    elif best_epoch == last_epoch:
        # the crash came after the epoch's commit point and before its best was saved: the
        # committed weights are the best ones
        tmp = ckpts / f".best.tmp-rebuilt-{best_epoch}"
        fileio.remove_tree(tmp)
        tmp.mkdir()
        for name in (checkpoint.MODEL_FILE, checkpoint.EMA_FILE):  # the moving average too
            if (ckpts / "last" / name).is_file():
                fileio.copy_file(ckpts / "last" / name, tmp / name)
        checkpoint.write_state(tmp, {"epoch": best_epoch, "metrics": row})
        checkpoint.swap_in(tmp, best)
        log(f"rebuilt {best} from epoch {best_epoch}'s weights in {ckpts / 'last'} (the run stopped "
            "before saving it)")
    else:
        log(f"WARNING: {best} does not hold epoch {best_epoch}, the best epoch in the history, "
            "and no copy of it is left; it will be replaced when a later epoch is better")
