"""Relating DRA's budget to PGD's L-inf budget on a given model (Hou et al., Table V protocol).

The DRA paper's eps has no stated unit; it compared DRA and PGD at budgets that give the same
robust accuracy on the vanilla model (DRA 1 and PGD 2.55/255 both left 44.5% on ResNet-50).
:func:`calibrate_dra` does that for any model: it measures the accuracy under DRA at a given
eps and bisects PGD's eps (PGD-k, step eps/k, as the paper's evaluation) until the two
accuracies agree within ``tol``; or, given a target accuracy, bisects both budgets to it.

Accuracy is counted as in :mod:`adaptrain.evaluate`: an example is robust if it is correct on
the clean image and under the attack (attacks run on the clean-correct examples only). Both
accuracy curves are non-increasing in eps up to noise; every evaluation reuses the same seed
so a bisection sees one fixed function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .attacks import AttackPlan
from .attacks.dra import dra
from .errors import ConfigError


def _float_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device):
    for start in range(0, x.shape[0], batch_size):
        sl = slice(start, min(start + batch_size, x.shape[0]))
        xb = x[sl].to(device)
        xb = xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb.float()
        yield sl, xb, y[sl].to(device)


def spread_subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` examples drawn by a fixed permutation: the test split of an ImageFolder tree is
    sorted by class, so its first ``n`` images would be one class."""
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def dra_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                p: float = 1 / 3, steps: int = 5, budget: str = "per_coordinate",
                rank: str = "last", only: torch.Tensor | None = None, batch_size: int = 256,
                device: torch.device | None = None) -> torch.Tensor:
    """(N,) bool: still correct under DRA (CE loss, eval-mode BatchNorm) at budget ``eps``.

    ``only`` (N,) bool restricts the attack to those examples; the rest count as wrong.
    """
    device = device or next(model.parameters()).device
    todo = torch.ones(x.shape[0], dtype=torch.bool) if only is None else only.clone()
    sel = todo.nonzero().squeeze(1)
    out = torch.zeros(x.shape[0], dtype=torch.bool)
    plan = AttackPlan(eps=eps, step_size=0.0, steps=steps, loss="ce", random_start="none", bn="eval")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for sl, xb, yb in _float_batches(x[sel], y[sel], batch_size, device):
            res = dra(model, xb, yb, plan, p=p, steps=steps, budget=budget, rank=rank)
            with torch.no_grad():
                out[sel[sl]] = (model(res.x_adv).argmax(1) == yb).cpu()
    finally:
        for m, mode in modes:
            m.training = mode
    return out


def bisect_eps(acc_at: Callable[[float], float], target: float, lo: float, hi: float, *,
               tol: float, max_iter: int) -> dict[str, Any]:
    """Find eps in [lo, hi] with acc_at(eps) within ``tol`` of ``target``, assuming acc_at is
    non-increasing. Returns the closest eps evaluated, its accuracy, whether it is within
    ``tol`` and the history of (eps, accuracy)."""
    history: list[tuple[float, float]] = []

    def probe(eps: float) -> float:
        acc = float(acc_at(eps))
        history.append((eps, acc))
        return acc

    acc_hi = probe(hi)
    if acc_hi > target + tol:  # even the largest budget leaves too many examples robust
        return {"eps": hi, "acc": acc_hi, "matched": False, "bracketed": False, "history": history}
    for _ in range(max_iter):
        if abs(history[-1][1] - target) <= tol:
            break
        mid = 0.5 * (lo + hi)
        if probe(mid) > target:
            lo = mid
        else:
            hi = mid
    eps, acc = min(history, key=lambda h: (abs(h[1] - target), h[0]))
    return {"eps": eps, "acc": acc, "matched": abs(acc - target) <= tol, "bracketed": True,
            "history": history}


def calibrate_dra(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                  dra_eps: float | None = 1 / 255, target_acc: float | None = None,
                  p: float = 1 / 3, steps: int = 5, budget: str = "per_coordinate",
                  rank: str = "last", pgd_steps: int = 20, max_pgd_eps: float = 16 / 255,
                  max_dra_eps: float = 16 / 255, tol: float = 0.005, max_iter: int = 16,
                  seed: int = 0, batch_size: int = 256, device: torch.device | None = None
                  ) -> dict[str, Any]:
    """Match DRA and PGD budgets by robust accuracy on (x, y).

    With ``dra_eps``: accuracy under DRA at dra_eps is the target and PGD's eps is bisected
    in [0, max_pgd_eps]. With ``target_acc``: both DRA's eps (in [0, max_dra_eps]) and PGD's
    are bisected to that accuracy. All budgets are in [0, 1] units (DRA's in its ``budget``
    convention); ``pgd_per_dra`` is the exchange rate pgd_eps / dra_eps.
    """
    from .evaluate import attack_correct, evaluate_attacks

    if (dra_eps is None) == (target_acc is None):
        raise ConfigError("--dra-eps", "give exactly one of --dra-eps and --target-acc")
    device = device or next(model.parameters()).device
    clean = evaluate_attacks(model, x, y, ["clean"], eps=0.0, step_size=0.0,
                             batch_size=batch_size, seed=seed, device=device)["clean"]
    n = int(y.shape[0])

    def dra_acc(eps: float) -> float:
        ok = dra_correct(model, x, y, eps=eps, p=p, steps=steps, budget=budget, rank=rank,
                         only=clean, batch_size=batch_size, device=device)
        return ok.float().mean().item()

    def pgd_acc(eps: float) -> float:
        # keyed random starts: the same seed gives every eps the same (scaled) start per example
        ok = attack_correct(model, x, y, f"pgd-{pgd_steps}", eps=eps, step_size=eps / pgd_steps,
                            batch_size=batch_size, seed=seed, device=device)
        return ok.float().mean().item()

    out: dict[str, Any] = {"n_examples": n, "clean_acc": clean.float().mean().item(),
                           "tol": tol, "pgd": {"attack": f"pgd-{pgd_steps}", "step": "eps/k",
                                               "norm": "linf"},
                           "dra": {"p": p, "steps": steps, "budget": budget, "rank": rank}}
    if dra_eps is not None:
        target = dra_acc(dra_eps)
        out["dra"].update(eps=dra_eps, eps_255=dra_eps * 255, acc=target)
    else:
        target = float(target_acc)
        found = bisect_eps(dra_acc, target, 0.0, max_dra_eps, tol=tol, max_iter=max_iter)
        out["dra"].update(eps=found["eps"], eps_255=found["eps"] * 255, acc=found["acc"],
                          matched=found["matched"], history=found["history"])
    found = bisect_eps(pgd_acc, target, 0.0, max_pgd_eps, tol=tol, max_iter=max_iter)
    out["target_acc"] = target
    out["pgd"].update(eps=found["eps"], eps_255=found["eps"] * 255, acc=found["acc"],
                      matched=found["matched"], bracketed=found["bracketed"],
                      history=found["history"])
    d = out["dra"]["eps"]
    out["pgd_per_dra"] = found["eps"] / d if d > 0 and found["bracketed"] else None
    out["matched"] = bool(found["matched"] and out["dra"].get("matched", True))
    return out
