"""Budget schedules over an integer budget list, the four rows of ECAS's Table 1
(Kuurila-Zhang, Chen and Zhao 2023, "Adaptive Adversarial Norm Space for Efficient
Adversarial Training", Eq. 2 and Section 4.1).

Budgets here are integers in the strategy's ``eps_unit`` (1/255 for CIFAR); the list is
``[eps_min, eps_min + 1, ..., eps_max]``, i.e. one unit between neighbours as in the authors'
code. Every schedule is a pure function of its counters, so a resumed run that restores the
counters continues the schedule exactly.

* ``fixed``: the given budget at every step (the "Fixed" baseline, 8/255 in the paper).
* ``linear``: eps_min -> eps_max over training in equal stairs of ``epochs / len(list)``
  epochs each (the budgets are integers, so "linear" is a staircase through the list).
* ``cyclic``: Eq. 2 as the authors' ``cyclical_epsilon`` implements it: the epoch's budget is
  ``list[epoch mod len(list)]`` — a sawtooth that starts at eps_min in epoch 0, climbs one unit
  per epoch and wraps from eps_max back to eps_min.
* ``cyclic-batch``: the same walk, one entry per batch (the counter counts batches since the
  start of training, across epoch boundaries).
"""

from __future__ import annotations

from collections.abc import Sequence

SCHEDULES = ("fixed", "linear", "cyclic", "cyclic-batch")


def budget_list(eps_min: int, eps_max: int) -> list[int]:
    """``[eps_min, ..., eps_max]`` in steps of one unit (inclusive)."""
    if eps_min > eps_max:
        raise ValueError(f"eps_min ({eps_min}) must not exceed eps_max ({eps_max})")
    return list(range(eps_min, eps_max + 1))


def scheduled_budget(schedule: str, budgets: Sequence[int], *, epoch: int, batch_count: int,
                     epochs: int, fixed: int | None = None) -> int:
    """The scheduled budget (an entry of ``budgets``, or ``fixed``) for one batch.

    epoch: 0-based epoch of the batch; batch_count: number of batches planned before this one
    since training started (used by ``cyclic-batch`` only); epochs: length of training (used
    by ``linear`` only; epochs past the end stay at eps_max).
    """
    n = len(budgets)
    if n == 0:
        raise ValueError("the budget list is empty")
    if schedule == "fixed":
        if fixed is None:
            raise ValueError("schedule 'fixed' needs its budget")
        return int(fixed)
    if schedule == "linear":
        return int(budgets[min(n - 1, epoch * n // max(1, epochs))])
    if schedule == "cyclic":
        return int(budgets[epoch % n])
    if schedule == "cyclic-batch":
        return int(budgets[batch_count % n])
    raise ValueError(f"unknown budget schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
