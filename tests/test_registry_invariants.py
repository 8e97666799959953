"""Invariants looped over every registered attack, strategy and objective (a new component is
checked the day it is registered): budgets and the [0, 1] box, untouched model state, per-sample
plans, state that round-trips, losses that do not commit state when asked not to."""

from __future__ import annotations

import pytest
import torch

from adaptrain.attacks import ATTACKS, AttackPlan
from adaptrain.context import Batch, RunContext, StepInfo
from adaptrain.data import DataSpec
from adaptrain.models import build_model
from adaptrain.objectives import OBJECTIVES
from adaptrain.strategies import STRATEGIES
from adaptrain.threat import norm as lp

B, C = 10, 10
SPEC = DataSpec("t", C, 3, (8, 8), (0.5,) * 3, (0.25,) * 3)
CTX = RunContext(num_train=64, num_classes=C, input_shape=(3, 8, 8), epochs=100,
                 batches_per_epoch=4, device=torch.device("cpu"), seed=0, first_decay_epoch=50)


def model_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model({"name": "small_cnn", "width": 4}, SPEC)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model(torch.rand(32, 3, 8, 8))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, 8, 8, generator=g)
    y = torch.randint(0, C, (B,), generator=g)
    return model, Batch(model, x, y, torch.arange(B), StepInfo(3, 0, 12, 0.05))


def snapshot(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [b.clone() for b in model.buffers()])


def assert_untouched(model, before):
    modes, flags, buffers = before
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))


def budget_ok(name: str, attack, delta: torch.Tensor, eps: torch.Tensor) -> bool:
    """Each attack's own threat model: L-inf eps_i, N-FGSM's unprojected (k + 1) eps_i, DRA's
    per-coordinate L1 budget (||delta_i||_1 <= eps_i * C * H * W)."""
    if name == "n_fgsm":
        k = attack.fn.keywords.get("noise", 2.0)
        return bool((lp(delta, "linf") <= (k + 1) * eps + 1e-6).all())
    if name == "dra":
        return bool((lp(delta, "l1") <= eps * delta[0].numel() * (1 + 1e-5) + 1e-6).all())
    return bool((lp(delta, "linf") <= eps + 1e-6).all())


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_keeps_each_budget_the_box_and_the_model_state(name):
    model, batch = model_and_batch()
    attack = ATTACKS.build({"name": name})
    eps = torch.linspace(0, 12, B) / 255
    steps = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 10])
    plan = AttackPlan(eps=eps, step_size=eps / 4, steps=steps)
    before = snapshot(model)
    res = attack(model, batch.x, batch.y, plan, generator=torch.Generator().manual_seed(1))
    assert_untouched(model, before)
    assert res.x_adv.shape == batch.x.shape
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    delta = res.x_adv - batch.x
    assert budget_ok(name, attack, delta, eps), name
    assert torch.equal(res.x_adv[0], batch.x[0])  # eps 0 and 0 steps: unchanged


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_plans_per_sample_budgets_and_round_trips_its_state(name):
    model, batch = model_and_batch()
    strategy = STRATEGIES.build({"name": name}, ctx=CTX)
    strategy.start_epoch(3)
    before = snapshot(model)
    plan = strategy.plan(batch)
    assert_untouched(model, before)
    eps, alpha, steps = plan.tensors(B, batch.x.device)
    assert eps.shape == alpha.shape == steps.shape == (B,)
    assert (eps >= 0).all() and (eps <= 1).all() and (alpha >= 0).all() and (steps >= 0).all()
    # a fresh strategy loaded with the state plans the next batch exactly as the original does
    again = STRATEGIES.build({"name": name}, ctx=CTX)
    again.load_state_dict(strategy.state_dict())
    _, nxt = model_and_batch(seed=1)
    for a, b in zip(strategy.plan(nxt).tensors(B, nxt.x.device), again.plan(nxt).tensors(B, nxt.x.device),
                    strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_objective_gives_per_sample_losses_and_commit_false_keeps_its_state(name):
    model, batch = model_and_batch()
    objective = OBJECTIVES.build({"name": name}, ctx=CTX)
    objective.start_epoch(60)
    plan = objective.prepare(batch, AttackPlan(eps=4 / 255, step_size=1 / 255, steps=3))
    x_adv = ATTACKS.build({"name": "pgd"})(model, batch.x, batch.y, plan,
                                           generator=torch.Generator().manual_seed(0)).x_adv
    state = {k: (v.clone() if isinstance(v, torch.Tensor) else v)
             for k, v in objective.state_dict().items()}
    loss, logits = objective.loss(model, batch, x_adv, plan, commit=False)
    assert loss.shape == (B,) and torch.isfinite(loss).all()
    assert logits is None or logits.shape == (B, C)
    after = objective.state_dict()
    for k, v in state.items():
        assert torch.equal(v, after[k]) if isinstance(v, torch.Tensor) else v == after[k], (name, k)
    loss.mean().backward()
    assert any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ATTACKS.names())
def test_the_single_step_trait_is_declared_by_exactly_the_attacks_that_take_one_step(name):
    """Training reads the trait (to watch FGSM accuracy) instead of a list of names: an attack
    asked for 10 steps forwards the model at most twice (gradient + final check) iff declared."""
    model, batch = model_and_batch()
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    eps = torch.full((B,), 8 / 255)
    plan = AttackPlan(eps=eps, step_size=eps / 4, steps=torch.full((B,), 10))
    ATTACKS.build({"name": name})(model, batch.x, batch.y, plan, generator=torch.Generator().manual_seed(1))
    hook.remove()
    assert (len(calls) <= 2) == ATTACKS.get(name).traits.single_step, (name, len(calls))
