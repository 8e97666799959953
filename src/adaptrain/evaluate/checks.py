"""Sanity checks run after every evaluation (Carlini et al. 2019, "On Evaluating Adversarial
Robustness"; Croce & Hein 2020's flags). Each check is ``{"name", "ok", "detail"}`` with
``ok`` None when it does not apply; a failed check is printed as a warning and stored.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

Check = dict[str, Any]


def points(fraction: float) -> str:
    """An accuracy difference (a fraction of all examples) in percentage points: 1.11 points."""
    return f"{100 * fraction:.2f} points"


def _check(name: str, ok: bool | None, detail: str) -> Check:
    return {"name": name, "ok": ok, "detail": detail}


def robust_le_clean(accuracy: dict[str, float], worst_case: float | None) -> Check:
    clean = accuracy.get("clean")
    bad = [f"{k} {v:.4f}" for k, v in accuracy.items() if k != "clean" and clean is not None
           and v > clean + 1e-12]
    if worst_case is not None:
        others = [v for k, v in accuracy.items() if k != "clean"]
        if others and worst_case > min(others) + 1e-12:
            bad.append(f"worst_case {worst_case:.4f} above an attack's accuracy")
    return _check("robust <= clean", not bad,
                  "every attack's accuracy is at most the clean accuracy" if not bad
                  else "above clean: " + ", ".join(bad))


def budget_text(eps: float) -> str:
    """8/255 for a whole number of 8-bit levels, else the [0, 1] value (digits' 0.1)."""
    k = eps * 255
    if eps == 0:
        return "0"
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:.4g}"


def monotone_in_eps(curve: dict[str, Any] | None) -> Check:
    if not curve:
        return _check("accuracy non-increasing in eps", None, "no eps-curve was evaluated")
    eps, acc = curve["eps"], curve["accuracy"]
    order = sorted(range(len(eps)), key=lambda i: eps[i])
    rises = [f"{budget_text(eps[i])}->{budget_text(eps[j])}: {acc[i]:.4f}->{acc[j]:.4f}"
             for i, j in zip(order, order[1:], strict=False) if acc[j] > acc[i] + 1e-12]
    return _check("accuracy non-increasing in eps", not rises,
                  "monotone" if not rises else "accuracy rises with the budget (" + "; ".join(rises)
                  + "): the attack is not finding the worst case (gradient masking?)")


def pgd_aa_gap(gap: float | None, pgd_name: str | None, threshold: float) -> Check:
    if gap is None:
        return _check("PGD vs AutoAttack gap", None, "needs a PGD-type attack run before AutoAttack")
    ok = gap <= threshold
    detail = (f"AutoAttack took a further {points(gap)} of accuracy from the examples "
              f"that survived {pgd_name}"
              + ("" if ok else f" (> {points(threshold)}): a gap this large suggests gradient masking; "
                 "do not trust the PGD number"))
    return _check("PGD vs AutoAttack gap", ok, detail)


def square_vs_whitebox(square_gain: float | None, alpha: float = 0.002) -> Check:
    if square_gain is None:
        return _check("Square (black-box) not stronger than white-box", None,
                      "Square did not run after white-box attacks")
    ok = square_gain <= alpha
    return _check("Square (black-box) not stronger than white-box", ok,
                  f"Square took a further {points(square_gain)} of accuracy from what the "
                  "white-box attacks left"
                  + ("" if ok else f" (> {points(alpha)}): gradients are unreliable (gradient masking)"))


def zero_gradients(frac: float | None) -> Check:
    if frac is None:
        return _check("no zero input gradients", None, "not measured")
    ok = frac == 0
    return _check("no zero input gradients", ok,
                  f"{frac:.4f} of the correctly classified examples have an all-zero input gradient"
                  + ("" if ok else ": gradient-based attacks cannot work there (masking / "
                     "non-differentiable layer)"))


def aa_flags(flags: list[str] | None) -> Check:
    if flags is None:
        return _check("AutoAttack flags", None, "AutoAttack did not run")
    return _check("AutoAttack flags", not flags, "none raised" if not flags else " | ".join(flags))


def report(checks: list[Check], stream=None) -> None:
    """Print every failed check as a visible warning (stderr) and raise a Python warning."""
    stream = stream or sys.stderr
    for c in checks:
        if c["ok"] is False:
            line = f"WARNING: sanity check failed: {c['name']}: {c['detail']}"
            print(line, file=stream)
            warnings.warn(line, stacklevel=2)
