"""Per-sample projections and random starts."""

from __future__ import annotations

import pytest
import torch

from adaptrain.threat import clip_box, norm, project, random_delta, steepest_direction


@pytest.mark.parametrize("p", ["linf", "l2", "l1"])
def test_projection_lands_in_the_ball_and_is_idempotent(p):
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(8, 3, 4, 4, generator=g)
    eps = torch.tensor([0.0, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 100.0])
    out = project(delta, eps, p)
    assert (norm(out, p) <= eps + 1e-5).all()
    assert torch.allclose(project(out, eps, p), out, atol=1e-6)
    inside = norm(delta, p) <= eps
    assert torch.equal(out[inside], delta[inside])  # points inside stay put


def test_l1_projection_is_the_closest_point():
    # The Euclidean projection onto the L1 ball is soft-thresholding at the theta where the L1
    # norm equals eps; find theta by bisection and compare.
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(5, 20, generator=g)
    eps = torch.tensor([0.5, 1.0, 2.0, 3.0, 7.0])
    out = project(delta, eps, "l1")
    for i in range(5):
        lo, hi = 0.0, float(delta[i].abs().max())
        for _ in range(100):
            mid = (lo + hi) / 2
            if (delta[i].abs() - mid).clamp(min=0).sum() > eps[i]:
                lo = mid
            else:
                hi = mid
        ref = delta[i].sign() * (delta[i].abs() - hi).clamp(min=0)
        assert torch.allclose(out[i], ref, atol=1e-5)


def test_box_clipping_never_grows_a_coordinate():
    x = torch.rand(4, 3, 5, 5)
    delta = torch.randn(4, 3, 5, 5)
    d = clip_box(x, delta)
    assert ((x + d) >= 0).all() and ((x + d) <= 1).all()
    assert (d.abs() <= delta.abs() + 1e-7).all()


@pytest.mark.parametrize("p", ["linf", "l2", "l1"])
def test_uniform_start_inside_the_ball(p):
    x = torch.rand(64, 3, 4, 4)
    eps = torch.linspace(0, 1, 64)
    d = random_delta(x, eps, p, "uniform", torch.Generator().manual_seed(0))
    assert (norm(d, p) <= eps + 1e-5).all()
    assert (norm(d, p)[1:] > 0).all()


def test_normal_and_none_starts():
    x = torch.rand(256, 3, 8, 8)
    d = random_delta(x, torch.ones(256), "linf", "normal", torch.Generator().manual_seed(0))
    assert abs(float(d.std()) - 0.001) < 5e-5
    assert torch.equal(random_delta(x, torch.ones(256), "linf", "none"), torch.zeros_like(x))


def test_steepest_directions_have_unit_norm():
    grad = torch.randn(6, 3, 4, 4)
    assert torch.equal(steepest_direction(grad, "linf"), grad.sign())
    for p in ("l2", "l1"):
        assert torch.allclose(norm(steepest_direction(grad, p), p), torch.ones(6), atol=1e-5)
