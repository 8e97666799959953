"""Threat models: per-sample norms, projections onto L-inf / L2 / L1 balls, the [0,1] box.

All budgets are per sample: ``eps`` has shape (B,) (a Python float is broadcast by
:func:`per_sample`). Budgets are in [0, 1] image units (8/255 for the usual L-inf setting).
Everything here is batched and free of host synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Rows:
    """Rows [start, stop) of a batch of ``total`` rows: the share this process holds (all of
    it in a single process; a contiguous shard under torchrun)."""

    start: int
    stop: int
    total: int

    @staticmethod
    def all(n: int) -> Rows:
        return Rows(0, n, n)

    @staticmethod
    def shard(total: int, rank: int, size: int) -> Rows:
        """Rank ``rank`` of ``size``'s contiguous rows of ``total``: sizes differ by at most
        one, earlier ranks take the extra rows."""
        base, extra = divmod(total, size)
        start = rank * base + min(rank, extra)
        return Rows(start, start + base + (rank < extra), total)


@dataclass(frozen=True)
class ShardDraws:
    """A generator whose per-row draws are made for the whole batch and cut to ``rows``, so a
    shard gets exactly the numbers its rows get in a single process (every rank draws the
    whole batch: a few random numbers per pixel, negligible next to a forward pass)."""

    generator: torch.Generator
    rows: Rows


Draws = torch.Generator | ShardDraws | None


def draw(fn: Callable[..., torch.Tensor], shape: tuple[int, ...], draws: Draws,
         **kw) -> torch.Tensor:
    """``fn(shape, generator=..., **kw)`` (torch.rand / randn style), row for row as in the
    whole batch when ``draws`` is a :class:`ShardDraws` and ``shape`` is its shard."""
    if isinstance(draws, ShardDraws):
        r = draws.rows
        if shape[0] == r.stop - r.start and r.stop - r.start != r.total:
            return fn((r.total, *shape[1:]), generator=draws.generator, **kw)[r.start:r.stop]
        return fn(shape, generator=draws.generator, **kw)
    return fn(shape, generator=draws, **kw)


def random_delta(
    x: torch.Tensor,
    radius: torch.Tensor,
    p: str,
    kind: str,
    generator: Draws = None,
) -> torch.Tensor:
    """Random start for (B, ...) inputs (draws: see :func:`draw`).

    kind: ``uniform`` (uniform in the ``p``-ball of per-sample ``radius``; for L-inf
    coordinate-wise U(-r, r)), ``normal`` (0.001 * N(0, 1) whatever the radius, as TRADES),
    or ``none`` (zeros).
    """
    if kind == "none":
        return torch.zeros_like(x)
    if kind == "normal":
        return 0.001 * draw(torch.randn, x.shape, generator, device=x.device, dtype=x.dtype)
    if kind != "uniform":
        raise ValueError(f"unknown random start {kind!r}; allowed: uniform, normal, none")
    u = draw(torch.rand, x.shape, generator, device=x.device, dtype=x.dtype)
    if p == "linf":
        return (2 * u - 1) * bcast(radius, x)
    # uniform in the L2 / L1 ball: random direction times radius * U^(1/d)
    d = x[0].numel()
    if p == "l2":
        g = draw(torch.randn, x.shape, generator, device=x.device, dtype=x.dtype)
    elif p == "l1":
        # Laplace-distributed coordinates give a uniform direction on the L1 sphere
        g = -torch.log(u.clamp_min(1e-12)) * torch.where(
            draw(torch.rand, x.shape, generator, device=x.device) < 0.5, -1.0, 1.0
        ).to(x.dtype)
    else:
        raise ValueError(f"unknown norm {p!r}; allowed: {', '.join(NORMS)}")
    direction = g / bcast(norm(g, p) + _TINY, g)
    r = draw(torch.rand, (x.shape[0],), generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
    return direction * bcast(r * radius, x)


# ---------------------------------------------------------------------------------------
# keyed randomness: the random start of example k depends on (seed, k) only, not on which
# other examples share its batch, so a cascade, a resumed evaluation and a different batch
# size all draw the same numbers for the same example.

_MASK64 = (1 << 64) - 1


def _signed(v: int) -> int:
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _splitmix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser (Steele et al. 2014) on int64 tensors, wrapping arithmetic."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def keyed_uniform(keys: torch.Tensor, shape: tuple[int, ...], seed: int, stream: int = 0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U[0, 1) noise of shape (B, *shape) where row i depends only on (seed, stream, keys[i]).

    keys: (B,) int64 example identifiers (e.g. indices into the evaluation set); ``stream``
    separates independent draws for the same example (restarts, different attacks).
    """
    d = 1
    for s in shape:
        d *= int(s)
    base = _splitmix64(torch.tensor([_signed(seed * 0x100000001B3 + stream)], dtype=torch.int64,
                                    device=keys.device))
    counter = keys.to(torch.int64)[:, None] * d + torch.arange(d, device=keys.device)[None, :]
    z = _splitmix64(counter ^ base)
    u = _shr(z, 11).to(torch.float64) * (1.0 / (1 << 53))  # 53 random bits -> [0, 1)
    return u.to(dtype).view(keys.shape[0], *shape)


def keyed_start(keys: torch.Tensor, like: torch.Tensor, eps: torch.Tensor, p: str, seed: int,
                stream: int = 0) -> torch.Tensor:
    """Uniform random start in each sample's ``p``-ball of radius eps_i (B,), drawn with
    :func:`keyed_uniform` so that row i depends only on (seed, stream, keys[i])."""
    shape = tuple(like.shape[1:])
    u = keyed_uniform(keys, shape, seed, 2 * stream, dtype=like.dtype)
    if p == "linf":
        return (2 * u - 1) * bcast(eps, like)
    if p != "l2":
        raise ValueError(f"keyed random start supports linf and l2, got {p!r}")
    # Box-Muller on a second stream gives a keyed Gaussian direction; radius eps * U^(1/d)
    v = keyed_uniform(keys, shape, seed, 2 * stream + 1, dtype=torch.float64)
    g = (torch.sqrt(-2 * torch.log1p(-v)) * torch.cos(2 * torch.pi * u.double())).to(like.dtype)
    direction = g / bcast(norm(g, "l2") + _TINY, g)
    d = like[0].numel()
    r = keyed_uniform(keys, (1,), seed, 2 * stream + 7919, dtype=like.dtype).squeeze(1) ** (1.0 / d)
    return direction * bcast(r * eps, like)
