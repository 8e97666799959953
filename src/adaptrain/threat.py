"""Threat models: per-sample norms, projections onto L-inf / L2 / L1 balls, the [0,1] box.

All budgets are per sample: ``eps`` has shape (B,) (a Python float is broadcast by
:func:`per_sample`). Budgets are in [0, 1] image units (8/255 for the usual L-inf setting).
Everything here is batched and free of host synchronisation.
"""

from __future__ import annotations

from typing import Literal

import torch

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[str, ...] = ("linf", "l2", "l1")
_TINY = 1e-12


def per_sample(value: torch.Tensor | float | int, batch: int, *, device: torch.device,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Broadcast a scalar or (B,) value to a (B,) tensor on ``device``."""
    t = torch.as_tensor(value, device=device, dtype=dtype)
    if t.ndim == 0:
        return t.expand(batch).clone()
    if t.shape != (batch,):
        raise ValueError(f"per-sample value has shape {tuple(t.shape)}, expected ({batch},)")
    return t


def bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) so that it broadcasts against ``like`` (B, ...)."""
    return v.view(-1, *([1] * (like.ndim - 1)))


def norm(delta: torch.Tensor, p: str) -> torch.Tensor:
    """Per-sample norm: (B, ...) -> (B,)."""
    flat = delta.flatten(1)
    if p == "linf":
        return flat.abs().amax(dim=1)
    if p == "l2":
        return flat.norm(p=2, dim=1)
    if p == "l1":
        return flat.abs().sum(dim=1)
    raise ValueError(f"unknown norm {p!r}; allowed: {', '.join(NORMS)}")


def project(delta: torch.Tensor, eps: torch.Tensor, p: str) -> torch.Tensor:
    """Euclidean projection of each delta_i onto {||d|| <= eps_i}. eps: (B,)."""
    if p == "linf":
        e = bcast(eps, delta)
        return torch.maximum(torch.minimum(delta, e), -e)
    if p == "l2":
        n = norm(delta, "l2")
        scale = torch.clamp(eps / (n + _TINY), max=1.0)
        return delta * bcast(scale, delta)
    if p == "l1":
        return _project_l1(delta, eps)
    raise ValueError(f"unknown norm {p!r}; allowed: {', '.join(NORMS)}")


def _project_l1(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Batched projection onto the L1 ball (Duchi et al. 2008, sort-based, on device)."""
    flat = delta.flatten(1)
    a = flat.abs()
    inside = a.sum(dim=1) <= eps
    u, _ = torch.sort(a, dim=1, descending=True)
    css = u.cumsum(dim=1)
    k = torch.arange(1, u.shape[1] + 1, device=u.device, dtype=u.dtype)
    cond = u * k > (css - eps[:, None])
    # rho = last index where cond holds (cond is monotone: true then false)
    rho = cond.to(torch.int64).sum(dim=1).clamp(min=1)
    theta = (css.gather(1, (rho - 1)[:, None]).squeeze(1) - eps) / rho.to(u.dtype)
    theta = theta.clamp(min=0)
    out = torch.sign(flat) * torch.clamp(a - theta[:, None], min=0)
    out = torch.where(inside[:, None], flat, out)
    return out.view_as(delta)


def steepest_direction(grad: torch.Tensor, p: str) -> torch.Tensor:
    """Unit-norm ascent direction for a step under norm ``p`` (sign, L2- or L1-normalised).

    The L1 direction is the gradient divided by its L1 norm (the DRA paper's update), not the
    sparse steepest-ascent vertex.
    """
    if p == "linf":
        return grad.sign()
    n = norm(grad, p)
    return grad / bcast(n + _TINY, grad)


def clip_box(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Return delta such that x + delta lies in [0, 1]; never increases |delta| per coordinate."""
    return (x + delta).clamp_(0.0, 1.0) - x


def random_delta(
    x: torch.Tensor,
    radius: torch.Tensor,
    p: str,
    kind: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random start for (B, ...) inputs.

    kind: ``uniform`` (uniform in the ``p``-ball of per-sample ``radius``; for L-inf
    coordinate-wise U(-r, r)), ``normal`` (0.001 * N(0, 1) whatever the radius, as TRADES),
    or ``none`` (zeros).
    """
    if kind == "none":
        return torch.zeros_like(x)
    if kind == "normal":
        return 0.001 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if kind != "uniform":
        raise ValueError(f"unknown random start {kind!r}; allowed: uniform, normal, none")
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if p == "linf":
        return (2 * u - 1) * bcast(radius, x)
    # uniform in the L2 / L1 ball: random direction times radius * U^(1/d)
    d = x[0].numel()
    if p == "l2":
        g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    elif p == "l1":
        # Laplace-distributed coordinates give a uniform direction on the L1 sphere
        g = -torch.log(u.clamp_min(1e-12)) * torch.where(
            torch.rand(x.shape, generator=generator, device=x.device) < 0.5, -1.0, 1.0
        ).to(x.dtype)
    else:
        raise ValueError(f"unknown norm {p!r}; allowed: {', '.join(NORMS)}")
    direction = g / bcast(norm(g, p) + _TINY, g)
    r = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
    return direction * bcast(r * radius, x)
