"""GradAlign regulariser: zero when the input gradients align, positive otherwise, exact double
backprop to the parameters, per-sample eps, one eta per batch, no cost when lam = 0."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adaptrain.attacks import AttackPlan
from adaptrain.context import Batch, RunContext, StepInfo
from adaptrain.errors import ConfigError
from adaptrain.profiling import count_passes
from adaptrain.regularizers import REGULARIZERS
from adaptrain.regularizers.gradalign import ETA
from adaptrain.threat import norm as lp

CTX = RunContext(16, 5, (3, 4, 4), 1, 1, torch.device("cpu"), 0)


class Linear(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(48, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class Smooth(nn.Module):
    """A smooth non-linear network (tanh), so finite differences of the term are exact."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.Tanh(), nn.Linear(16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_batch(model: nn.Module, n: int = 8, dtype=torch.float32) -> Batch:
    g = torch.Generator().manual_seed(3)
    x = (0.2 + 0.6 * torch.rand(n, 3, 4, 4, generator=g)).to(dtype)
    y = torch.randint(0, 5, (n,), generator=g) % (model(x).shape[1])
    return Batch(model, x, y, torch.arange(n), StepInfo(0, 0, 0, 0.1))


def gradalign(**fields):
    return REGULARIZERS.build({"name": "gradalign", **fields}, ctx=CTX)


def test_zero_when_the_input_gradients_align():
    # two classes, linear logits: grad_x CE = p_other * (w_other - w_y), one direction everywhere
    model = Linear(2)
    batch = make_batch(model)
    term = gradalign(lam=0.2).term(model, batch, batch.x, AttackPlan(eps=16 / 255, step_size=0, steps=1))
    assert term.shape == (8,)
    assert term.abs().max() < 1e-5


def test_positive_when_they_do_not():
    model = Smooth()
    with torch.no_grad():
        model.net[1].weight.mul_(20)  # strongly non-linear within the eps-ball
    batch = make_batch(model)
    term = gradalign(lam=1.0).term(model, batch, batch.x, AttackPlan(eps=32 / 255, step_size=0, steps=1))
    assert (term > 1e-3).all() and (term <= 2.0).all()  # lam * (1 - cos) with cos in [-1, 1]


def total(reg, model, batch, plan) -> torch.Tensor:
    return reg.term(model, batch, batch.x, plan).sum()


@pytest.mark.parametrize("detach_clean", [False, True])
def test_its_gradient_reaches_the_parameters_exactly(detach_clean):
    model = Smooth().double()
    with torch.no_grad():
        model.net[1].weight.mul_(5)
    batch = make_batch(model, dtype=torch.float64)
    plan = AttackPlan(eps=16 / 255, step_size=0, steps=1)
    reg = gradalign(lam=1.0, detach_clean=detach_clean)
    total(reg, model, batch, plan).backward()  # draws and caches eta for the batch
    w = model.net[1].weight
    assert w.grad is not None and w.grad.abs().max() > 1e-6
    if detach_clean:  # the authors' variant: a partial derivative, checked against the full below
        return
    h = 1e-6
    for i, j in ((0, 0), (3, 7), (11, 40)):  # the full derivative, through both gradients
        with torch.no_grad():
            w[i, j] += h
            up = total(reg, model, batch, plan)
            w[i, j] -= 2 * h
            down = total(reg, model, batch, plan)
            w[i, j] += h
        assert w.grad[i, j].item() == pytest.approx(((up - down) / (2 * h)).item(), rel=1e-4, abs=1e-9)


def test_detaching_the_clean_gradient_changes_the_parameter_gradient():
    grads = []
    for detach_clean in (False, True):
        model = Smooth()
        batch = make_batch(model)
        reg = gradalign(lam=1.0, detach_clean=detach_clean)
        total(reg, model, batch, AttackPlan(eps=16 / 255, step_size=0, steps=1)).backward()
        grads.append(model.net[1].weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_eta_is_inside_each_samples_eps_and_drawn_once_per_batch():
    model = Smooth()
    batch = make_batch(model)
    eps = torch.linspace(0, 16, 8) / 255
    plan = AttackPlan(eps=eps, step_size=0, steps=1)
    reg = gradalign()
    first = reg.term(model, batch, batch.x, plan, commit=False)  # e.g. AWP's proxy
    state = reg.generator.get_state()
    second = reg.term(model, batch, batch.x, plan)
    assert torch.equal(reg.generator.get_state(), state)  # the second call drew nothing
    assert torch.allclose(first, second)
    eta = batch.cache[ETA]
    assert (lp(eta, "linf") <= eps + 1e-7).all() and (lp(eta, "linf")[1:] > 0.5 * eps[1:]).all()
    assert ((batch.x + eta) >= 0).all() and ((batch.x + eta) <= 1).all()
    assert first[0].item() == pytest.approx(0.0, abs=1e-6)  # eps 0: the same point twice


def test_cost_is_two_forward_passes_and_lam_zero_adds_nothing():
    model = Smooth()
    batch = make_batch(model)
    plan = AttackPlan(eps=8 / 255, step_size=0, steps=1)
    with count_passes(model) as c:
        assert gradalign(lam=0.0).term(model, batch, batch.x, plan) is None
    assert c.forward_rows == 0
    with count_passes(model) as c:
        gradalign(lam=0.2).term(model, batch, batch.x, plan)
    assert c.forward_rows == 2 * 8


def test_state_and_bad_lam():
    reg = gradalign()
    assert set(reg.state_dict()) == {"generator"}
    with pytest.raises(ConfigError) as err:
        gradalign(lam=-1)
    assert err.value.field == "regularizer.lam"
