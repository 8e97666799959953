"""Paired comparisons of two training methods from their per-example evaluation outcomes.

For seeds s = 1..S and test examples i = 1..N evaluated for both methods (the same images,
the same seeds), d[s, i] = m_method[s, i] - m_baseline[s, i], where m is a per-example
quantity whose mean over examples is the reported figure: 1 / 0 correctness under an attack
(accuracy), best - last correctness (the best-last gap), or the example's share of the
robustness disparity. The estimate is the mean of d; its 95 % interval is a two-level
percentile bootstrap, resampling seeds and (the same, paired) examples with replacement,
so that both the training randomness and the test sample are in the interval (conservative
with few seeds; ``resample_seeds=False`` holds the seeds fixed).

A claim "method >= baseline" (``greater``) is *reproduced* when the whole interval is above
``margin``, *contradicted* when it is entirely below, and *not resolved* otherwise; ``less``
mirrors it. Units: fractions (0.01 = one point of accuracy). Decisions: docs/results.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

REPRODUCED, CONTRADICTED, UNRESOLVED = "reproduced", "contradicted", "not resolved"


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float
    seeds: int
    examples: int
    per_seed: tuple[float, ...]


def paired_bootstrap(diff: np.ndarray, *, n_boot: int = 10_000, level: float = 0.95,
                     seed: int = 0, resample_seeds: bool = True, chunk: int = 500) -> Interval:
    """diff (S, N): per-seed, per-example differences -> mean and percentile interval.

    Every replicate draws N example indices with replacement (the examples are the same for
    every seed: they are paired) and, with ``resample_seeds``, S seeds with replacement, and
    averages diff over them. Resampling the seeds puts the training randomness in the
    interval; it also counts the per-example noise a second time, so with few seeds the
    interval is conservative (about 99 % coverage at level 0.95 when the seeds do not matter;
    tests/test_paired.py). Without it the seeds are a fixed set and the coverage is nominal
    for them."""
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] < 1:
        raise ValueError(f"diff must be (seeds, examples) with both >= 1, got shape {d.shape}")
    s, n = d.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        seeds = (rng.integers(0, s, size=(b, s)) if resample_seeds
                 else np.broadcast_to(np.arange(s), (b, s)))                # (b, S)
        idx = rng.integers(0, n, size=(b, n))                            # (b, N)
        picked = np.take_along_axis(d[seeds], idx[:, None, :].repeat(s, 1), axis=2)  # (b, S, N)
        stats[start:start + b] = picked.mean(axis=(1, 2))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(float(d.mean()), float(lo), float(hi), s, n,
                    tuple(float(v) for v in d.mean(axis=1)))


def verdict(iv: Interval, direction: str, margin: float = 0.0) -> str:
    """``greater``: the claim is that the difference exceeds ``margin`` (for "no worse than
    0.5 points", greater with margin -0.005); ``less``: that it is below ``margin``."""
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    above, below = iv.lo > margin, iv.hi < margin
    if direction == "less":
        above, below = below, above
    return REPRODUCED if above else CONTRADICTED if below else UNRESOLVED


def combine(verdicts: Sequence[str]) -> str:
    """A claim made of several parts holds when every part does and fails when any fails."""
    if any(v == CONTRADICTED for v in verdicts):
        return CONTRADICTED
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return UNRESOLVED


def outcomes(bits: str) -> np.ndarray:
    """An evaluation JSON's per-example string ('0' / '1', see ``adaptrain eval``) -> (N,) 0/1."""
    return (np.frombuffer(bits.encode("ascii"), dtype=np.uint8) - ord("0")).astype(np.float64)


def rd_per_example(curve: dict) -> np.ndarray:
    """(N,) each example's share of the robustness disparity of an eval JSON's ``curve``:
    the mean over the non-zero budgets of (clean_i - correct_i(eps)) / (eps in 1/255), whose
    mean over examples is the run's RD."""
    eps, rows = curve["eps"], [outcomes(b) for b in curve["correct"]]
    clean = rows[eps.index(0.0)] if 0.0 in eps else None
    if clean is None:
        raise ValueError("the curve has no eps = 0 point, so RD has no clean reference")
    terms = [(clean - r) / (e * 255) for e, r in zip(eps, rows, strict=True) if e > 0]
    return np.mean(terms, axis=0)
