"""Learning-rate schedules as pure functions of the fractional epoch t in [0, epochs].

Being stateless, they resume exactly: the lr of a step depends only on (epoch, batch).
The loop evaluates them at t = epoch + (batch + 1) / batches_per_epoch, as Rice et al. do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .errors import ConfigError

SCHEDULES = ("constant", "multistep", "piecewise", "cosine", "onecycle")


def make_schedule(name: str, lr: float, epochs: int, *, milestones: Sequence[float] = (),
                  gamma: float = 0.1, peak_at: float = 0.4) -> Callable[[float], float]:
    """Return lr(t).

    constant: lr.  multistep: lr * gamma^(number of milestones < t) (milestones in epochs, so
    epoch m is the first at the lower rate).
    piecewise: Rice et al. 2020 — lr until 50% of training, lr/10 until 75%, then lr/100
    (for 200 epochs: decays at 100 and 150).  cosine: lr * (1 + cos(pi t / epochs)) / 2.
    onecycle: linear 0 -> lr over the first ``peak_at`` fraction, then linear to 0 (the
    "cyclic" schedule of Wong et al. 2020, used by UIAT).
    """
    if name == "constant":
        return lambda t: lr
    if name == "multistep":
        ms = sorted(float(m) for m in milestones)
        # t > m: epoch m (0-based) is the first whose batches (t in (m, m + 1]) are decayed
        return lambda t: lr * gamma ** sum(t > m for m in ms)
    if name == "piecewise":
        return lambda t: lr if t < 0.5 * epochs else (lr / 10 if t < 0.75 * epochs else lr / 100)
    if name == "cosine":
        return lambda t: lr * 0.5 * (1.0 + math.cos(math.pi * min(t, epochs) / epochs))
    if name == "onecycle":
        if not 0.0 < peak_at < 1.0:
            raise ConfigError("optim.peak_at", f"must be in (0, 1), got {peak_at}")
        peak = peak_at * epochs

        def onecycle(t: float) -> float:
            if t <= peak:
                return lr * t / peak
            return lr * max(0.0, (epochs - t) / (epochs - peak))

        return onecycle
    raise ConfigError("optim.schedule", f"unknown {name!r}; allowed: {', '.join(SCHEDULES)}")


def first_decay_epoch(name: str, epochs: int, *, milestones: Sequence[float] = (),
                      peak_at: float = 0.4) -> int | None:
    """First epoch (0-based) whose learning rate is lowered below the peak; None if never.

    UIAT's one-off variant computes its inverse targets in the epoch before this one.
    """
    if name == "multistep":
        return int(min(milestones)) if milestones else None
    if name == "piecewise":
        return math.ceil(0.5 * epochs)
    if name == "onecycle":
        return math.ceil(peak_at * epochs)
    return None  # constant never decays; cosine decays from the first step (no "first decay")
