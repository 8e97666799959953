"""FAT strategy: each sample stops tau steps after its first misclassification, tau schedule per
epoch, telemetry, start, config errors, presets."""

from __future__ import annotations

import pytest
import torch

from adaptrain.attacks import ATTACKS, pgd
from adaptrain.config import build_config
from adaptrain.context import Batch, Feedback, RunContext, StepInfo
from adaptrain.errors import ConfigError
from adaptrain.objectives import OBJECTIVES
from adaptrain.strategies import STRATEGIES
from toy_models import Linear

CTX = RunContext(12, 5, (3, 4, 4), 120, 1, torch.device("cpu"), 0)



def fat(**fields):
    return STRATEGIES.build({"name": "fat", **fields}, ctx=CTX)


def data():
    g = torch.Generator().manual_seed(0)
    return 0.2 + 0.6 * torch.rand(12, 3, 4, 4, generator=g), torch.randint(0, 5, (12,), generator=g)


@pytest.mark.parametrize("epoch", [0, 50, 95])
def test_each_sample_stops_tau_steps_after_its_first_misclassification(epoch):
    model = Linear()
    x, y = data()
    strategy = fat(eps=16 / 255, step_size=2 / 255, steps=10)  # tau 0, 1, 2 from epochs 0, 50, 90
    strategy.start_epoch(epoch)
    tau = strategy.tau
    assert tau == {0: 0, 50: 1, 95: 2}[epoch]
    batch = Batch(model, x, y, torch.arange(12), StepInfo(epoch, 0, 0, 0.1))
    plan = strategy.plan(batch).replace(random_start="none")
    res = pgd(model, x, y, plan)
    # the plain PGD trajectory of the same attack, k = 0..10 steps
    traj = [x] + [pgd(model, x, y, plan.replace(steps=k, stop_misclassified=None)).x_adv
                  for k in range(1, 11)]
    with torch.no_grad():
        wrong = torch.stack([model(t).argmax(1) != y for t in traj])  # (11, B)
    first = torch.where(wrong.any(0), wrong.float().argmax(0), torch.tensor(99))
    expected = torch.clamp(first + tau, max=10)
    assert torch.equal(res.steps_used, expected)
    for i in range(12):
        assert torch.allclose(res.x_adv[i], traj[int(expected[i])][i])
    assert (first < 10 - tau).sum() >= 3, "the test needs samples that flip early"
    # the rule counts misclassified checks: correct again in between would not reset it
    counts = wrong.long().cumsum(0)
    hit = counts > tau
    assert torch.equal(res.steps_used, torch.where(hit.any(0), hit.float().argmax(0), torch.tensor(10)))


def test_tau_schedules_of_the_presets():
    at = build_config("fat").strategy
    s = fat(**{k: v for k, v in at.items() if k != "name"})
    assert [s.tau_at(e) for e in (0, 49, 50, 89, 90, 119)] == [0, 0, 1, 1, 2, 2]
    tr = build_config("fat-trades").strategy
    s = fat(**{k: v for k, v in tr.items() if k != "name"})
    assert [s.tau_at(e) for e in (0, 29, 30, 49, 50, 69, 70, 84)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert fat(tau=[3], tau_epochs=[]).tau_at(100) == 3  # a constant tau


def test_plan_follows_the_epoch_and_the_objectives_start():
    s = fat()
    model = Linear()
    x, y = data()
    batch = Batch(model, x, y, torch.arange(12), StepInfo(0, 0, 0, 0.1))
    s.start_epoch(90)
    plan = s.plan(batch)
    assert plan.stop_misclassified == 2 and plan.steps == 10
    attack = ATTACKS.build({"name": "pgd"})
    trades = OBJECTIVES.build({"name": "trades"}, ctx=CTX)
    resolved = attack.resolve(trades.prepare(batch, plan), wish=trades.random_start)
    assert resolved.random_start == "normal"  # x + 0.001 N(0, 1), as their code
    at = OBJECTIVES.build({"name": "pgd_at"}, ctx=CTX)
    resolved = attack.resolve(at.prepare(batch, plan), wish=at.random_start)
    assert resolved.random_start == "uniform"  # the attack's uniform start, as their code


def test_telemetry_counts_steps_and_early_stops():
    model = Linear()
    x, y = data()
    s = fat(eps=16 / 255, step_size=2 / 255, steps=10)
    s.start_epoch(0)
    batch = Batch(model, x, y, torch.arange(12), StepInfo(0, 0, 0, 0.1))
    plan = s.plan(batch)
    res = pgd(model, x, y, plan, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        s.observe(Feedback(batch, plan, res, torch.zeros(12), None, None, None, None))
    row = s.end_epoch(0)
    assert row["tau"] == 0.0
    assert row["mean_steps"] == pytest.approx(res.steps_used.float().mean().item())
    assert row["frac_early_stop"] == pytest.approx((res.steps_used < 10).float().mean().item())
    assert 0 < row["frac_early_stop"] < 1
    s.start_epoch(1)
    assert s.end_epoch(1)["mean_steps"] == 0.0  # reset each epoch


@pytest.mark.parametrize(("fields", "field"), [
    ({"tau": [0, 1], "tau_epochs": [10, 20]}, "strategy.tau_epochs"),
    ({"tau": [0, 1, 2], "tau_epochs": [20, 10]}, "strategy.tau_epochs"),
    ({"tau": [-1]}, "strategy.tau"),
    ({"steps": 0}, "strategy.steps"),
])
def test_bad_fields_name_the_field(fields, field):
    with pytest.raises(ConfigError) as err:
        fat(**fields)
    assert err.value.field == field


def test_presets():
    c = build_config("fat")
    assert c.strategy["name"] == "fat" and c.objective["name"] == "pgd_at" and c.epochs == 120
    assert c.optim.milestones == [60, 90] and c.optim.weight_decay == 2e-4
    t = build_config("fat-trades")
    assert t.objective["name"] == "trades" and t.epochs == 85 and t.strategy["tau"] == [0, 1, 2, 3]
    p = build_config("pgd-at", ["strategy.name=fat"])  # any objective / preset can use it
    assert p.strategy["tau_epochs"] == [50, 90]
