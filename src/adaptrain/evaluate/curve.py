"""Accuracy-vs-budget curves, SAAT's robustness disparity, and their plot.

Robustness disparity (Strength-Adaptive Adversarial Training, Sec. 3.1):
RD = (1/n) sum_i (A_0 - A_i) / eps_i over the curve's non-zero budgets eps_i, with A_0 the
clean accuracy. Here accuracies are fractions and budgets are in units of 1/255, so RD is the
accuracy lost per 1/255 of budget, averaged over the curve (lower is flatter).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from .. import fileio


def robustness_disparity(eps: Sequence[float], acc: Sequence[float], clean: float | None = None,
                         unit: float = 1 / 255) -> float | None:
    """RD over the non-zero budgets of the curve; ``clean`` defaults to the accuracy at eps 0."""
    if clean is None:
        zero = [a for e, a in zip(eps, acc, strict=True) if e == 0]
        if not zero:
            return None
        clean = zero[0]
    terms = [(clean - a) / (e / unit) for e, a in zip(eps, acc, strict=True) if e > 0]
    return sum(terms) / len(terms) if terms else None


def plot_curves(curves: dict[str, dict], path: Path, title: str = "") -> Path:
    """One line per label: ``curves[label] = {"eps": [...], "accuracy": [...]}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, c in curves.items():
        ax.plot([e * 255 for e in c["eps"]], c["accuracy"], marker="o", label=label)
    ax.set_xlabel("budget eps (x 1/255)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if len(curves) > 1 or any(curves):
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_file(path, buf.getvalue())  # atomic: a crash never leaves half an image
    return path
