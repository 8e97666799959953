"""Catastrophic-overfitting detector for single-step adversarial training.

Catastrophic overfitting (Wong et al. 2020; Andriushchenko & Flammarion 2020): within an epoch
or two, the accuracy under a multi-step attack (PGD) collapses towards zero while the accuracy
under the single-step attack the model is trained on (FGSM) *rises* — the model has become
locally non-linear, so FGSM no longer finds its adversarial examples. This module recognises
that signature in the per-epoch validation history; it is a pure function, so the loop, a
report or a benchmark can all call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def catastrophic_overfitting(history: Sequence[dict[str, Any]], *, frac: float = 0.5,
                             min_drop: float = 0.1, min_rise: float = 0.0) -> str | None:
    """A warning when the last epoch looks catastrophically overfitted, else None.

    history: per-epoch rows with ``robust_acc`` (PGD validation accuracy, in [0, 1]) and
    ``fgsm_acc`` (FGSM validation accuracy); rows lacking either are skipped. The last such
    row fires when, against the earlier row with the best PGD accuracy,
      * PGD accuracy fell to at most ``frac`` of that best AND by at least ``min_drop``
        (absolute), so noise around a low or stable level never fires, and
      * FGSM accuracy rose by more than ``min_rise`` (a run whose FGSM accuracy falls too is
        diverging, not overfitting to FGSM).
    It keeps firing on every later epoch that stays collapsed.
    """
    rows = [r for r in history if r.get("robust_acc") is not None and r.get("fgsm_acc") is not None]
    if len(rows) < 2:
        return None
    *before, last = rows
    best = max(before, key=lambda r: r["robust_acc"])  # first of equals
    pgd_best, pgd_now = float(best["robust_acc"]), float(last["robust_acc"])
    fgsm_then, fgsm_now = float(best["fgsm_acc"]), float(last["fgsm_acc"])
    collapsed = pgd_now <= frac * pgd_best and pgd_best - pgd_now >= min_drop
    if not (collapsed and fgsm_now - fgsm_then > min_rise):
        return None
    epoch = last.get("epoch", len(rows))
    return (f"catastrophic overfitting suspected at epoch {epoch}: PGD accuracy {pgd_now:.3f} "
            f"collapsed from its best {pgd_best:.3f} (epoch {best.get('epoch', '?')}) while FGSM "
            f"accuracy rose from {fgsm_then:.3f} to {fgsm_now:.3f}")
