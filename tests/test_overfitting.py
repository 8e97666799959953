"""Catastrophic-overfitting detector on synthetic per-epoch histories."""

from __future__ import annotations

import random

import pytest

from adaptrain.overfitting import catastrophic_overfitting


def history(pgd: list[float], fgsm: list[float]) -> list[dict]:
    return [{"epoch": i + 1, "robust_acc": p, "fgsm_acc": f}
            for i, (p, f) in enumerate(zip(pgd, fgsm, strict=True))]


# FGSM-RS at 16/255 as Wong et al. / Andriushchenko & Flammarion describe it: PGD accuracy
# climbs, then collapses to ~0 within an epoch while FGSM accuracy jumps above its old level.
CO_PGD = [0.18, 0.24, 0.27, 0.29, 0.02, 0.00, 0.00]
CO_FGSM = [0.30, 0.36, 0.40, 0.42, 0.71, 0.85, 0.88]


def test_fires_on_the_collapse_and_while_it_lasts():
    h = history(CO_PGD, CO_FGSM)
    assert [catastrophic_overfitting(h[:k]) is not None for k in range(1, len(h) + 1)] == [
        False, False, False, False, True, True, True]
    msg = catastrophic_overfitting(h[:5])
    assert "epoch 5" in msg and "0.290" in msg and "epoch 4" in msg and "0.710" in msg


def test_silent_on_a_healthy_run():
    pgd = [0.15, 0.22, 0.28, 0.33, 0.37, 0.40, 0.43, 0.45, 0.46, 0.47]
    fgsm = [0.25, 0.33, 0.40, 0.45, 0.49, 0.52, 0.55, 0.57, 0.58, 0.59]
    h = history(pgd, fgsm)
    assert all(catastrophic_overfitting(h[:k]) is None for k in range(1, len(h) + 1))


def test_silent_on_ordinary_noise():
    rng = random.Random(0)
    for _ in range(200):  # a plateau with +-4 points of evaluation noise on a small val set
        pgd = [min(1.0, max(0.0, 0.45 + rng.uniform(-0.04, 0.04))) for _ in range(30)]
        fgsm = [min(1.0, max(0.0, 0.55 + rng.uniform(-0.04, 0.04))) for _ in range(30)]
        h = history(pgd, fgsm)
        assert all(catastrophic_overfitting(h[:k]) is None for k in range(1, 31))


def test_silent_when_everything_collapses_or_accuracies_are_tiny():
    # divergence (e.g. a too-large lr): both accuracies fall, which is not CO
    assert catastrophic_overfitting(history([0.4, 0.42, 0.05], [0.5, 0.52, 0.10])) is None
    # an early, tiny best (0.06 -> 0.02 halves but is only 4 points): noise, not CO
    assert catastrophic_overfitting(history([0.06, 0.02], [0.10, 0.20])) is None
    # robust overfitting (a slow decline well above half the best) is not CO either
    assert catastrophic_overfitting(history([0.52, 0.50, 0.47, 0.44], [0.6, 0.62, 0.64, 0.66])) is None


def test_rows_without_both_accuracies_are_skipped():
    rows = history(CO_PGD[:5], CO_FGSM[:5])
    rows.insert(2, {"epoch": 99, "train_loss": 1.0})  # an epoch without validation
    rows[1].pop("fgsm_acc")
    assert catastrophic_overfitting(rows) is not None
    pgd_only = [{"epoch": 1, "robust_acc": 0.3}, {"epoch": 2, "robust_acc": 0.0}]
    assert catastrophic_overfitting(pgd_only) is None
    assert catastrophic_overfitting([]) is None


@pytest.mark.parametrize(("frac", "min_drop", "fires"), [(0.5, 0.1, True), (0.05, 0.1, False),
                                                         (0.5, 0.5, False)])
def test_thresholds(frac, min_drop, fires):
    h = history([0.30, 0.10], [0.40, 0.60])
    assert (catastrophic_overfitting(h, frac=frac, min_drop=min_drop) is not None) is fires
