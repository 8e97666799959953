"""Single-step attacks (fgsm, fgsm_rs, n_fgsm): budgets and clipping rules, per-sample eps as the
step unit, steps == 0, loss raised, model state untouched, config fields."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adaptrain.attacks import ATTACKS, AttackPlan
from adaptrain.data import DataSpec
from adaptrain.errors import ConfigError
from adaptrain.models import build_model
from adaptrain.threat import norm as lp
from toy_models import Linear

NAMES = ("fgsm", "fgsm_rs", "n_fgsm")



def data(n: int = 12, c: int = 5, lo: float = 0.0, hi: float = 1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, 3, 4, 4, generator=g), torch.randint(0, c, (n,), generator=g)


def ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def run(name: str, model, x, y, plan, seed: int = 1, **fields):
    attack = ATTACKS.build({"name": name, **fields})
    return attack(model, x, y, plan, generator=torch.Generator().manual_seed(seed))


EPS = torch.linspace(0, 16, 12) / 255
STEPS = torch.tensor([0, 1, 1, 2, 1, 10, 1, 0, 1, 1, 3, 1])


@pytest.mark.parametrize("name", NAMES)
def test_box_zero_steps_and_one_step_each(name):
    model = Linear()
    x, y = data()  # inputs up to the box edges
    res = run(name, model, x, y, AttackPlan(eps=EPS, step_size=0.5, steps=STEPS))
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    frozen = STEPS == 0
    assert torch.equal(res.x_adv[frozen], x[frozen])
    assert torch.equal(res.steps_used, (STEPS > 0).long())


@pytest.mark.parametrize("name", ["fgsm", "fgsm_rs"])
def test_fgsm_and_fgsm_rs_stay_inside_each_samples_eps(name):
    model = Linear()
    x, y = data()
    for seed in range(3):
        res = run(name, model, x, y, AttackPlan(eps=EPS, step_size=0.5, steps=1), seed=seed)
        assert (lp(res.x_adv - x, "linf") <= EPS + 1e-6).all()


def test_n_fgsm_is_not_projected_but_stays_inside_k_plus_one_eps():
    model = Linear()
    x, y = data(lo=0.3, hi=0.7)  # away from the box, so that only the rule itself bounds delta
    eps = torch.full((12,), 4 / 255)
    linf = torch.stack([lp(run("n_fgsm", model, x, y, AttackPlan(eps=eps, step_size=0, steps=1),
                               seed=s).x_adv - x, "linf") for s in range(4)])
    assert (linf <= 3 * eps + 1e-6).all()  # noise 2 eps + step 1 eps
    assert (linf > eps + 1e-6).float().mean() > 0.9  # not projected back to eps
    wide = run("n_fgsm", model, x, y, AttackPlan(eps=eps, step_size=0, steps=1), k=4.0, step=0.5)
    assert (lp(wide.x_adv - x, "linf") <= 4.5 * eps + 1e-6).all()
    assert (lp(wide.x_adv - x, "linf") > 3 * eps + 1e-6).any()  # k and step are the config's


def test_fgsm_is_the_exact_optimum_of_a_linear_two_class_model():
    # CE of two classes grows with (w_other - w_y) . x, so the L-inf optimum is eps * sign(.)
    model = Linear(c=2)
    x, y = data(c=2, lo=0.3, hi=0.7)
    res = run("fgsm", model, x, y, AttackPlan(eps=EPS, step_size=0, steps=1))
    w = model.fc.weight.detach()
    direction = (w[1 - y] - w[y]).sign().view_as(x)
    assert torch.allclose(res.x_adv - x, EPS.view(-1, 1, 1, 1) * direction, atol=1e-6)
    assert (ce(model, res.x_adv, y)[EPS > 0] > ce(model, x, y)[EPS > 0]).all()


def test_fgsm_rs_step_is_one_and_a_quarter_eps_from_the_uniform_start():
    # Linear two-class model: the gradient sign is the same everywhere, so the result is
    # clip_eps(start + 1.25 eps * s) and every coordinate whose start lies within 0.75 eps of
    # the ascent side ends exactly at +-eps, the rest at start + 1.25 eps.
    model = Linear(c=2)
    x, y = data(c=2, lo=0.3, hi=0.7)
    eps = torch.full((12,), 8 / 255)
    res = run("fgsm_rs", model, x, y, AttackPlan(eps=eps, step_size=123.0, steps=5), seed=7)
    w = model.fc.weight.detach()
    s = (w[1 - y] - w[y]).sign().view_as(x)
    start = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(7)) - 1) * 8 / 255
    expected = (start + 1.25 * 8 / 255 * s).clamp(-8 / 255, 8 / 255)
    assert torch.allclose(res.x_adv - x, expected, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_the_loss_goes_up(name):
    model = Linear()
    x, y = data(lo=0.2, hi=0.8)
    res = run(name, model, x, y, AttackPlan(eps=8 / 255, step_size=0, steps=1))
    assert ce(model, res.x_adv, y).mean() > ce(model, x, y).mean() + 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_model_state_is_left_as_it_was(name):
    spec = DataSpec("t", 5, 3, (8, 8), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    model = build_model({"name": "small_cnn", "width": 4}, spec)
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 8, 8))
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    stats = [b.clone() for b in model.buffers()]
    weights = [p.detach().clone() for p in model.parameters()]
    x = torch.rand(6, 3, 8, 8)
    y = torch.randint(0, 5, (6,))
    run(name, model, x, y, AttackPlan(eps=8 / 255, step_size=0, steps=1))
    assert model.training and not frozen.requires_grad
    assert all(p.requires_grad for p in list(model.parameters())[1:])
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))


def test_fgsm_starts_from_zero_unless_the_kl_objective_asks_for_its_tiny_normal_start():
    model = Linear()
    x, y = data(lo=0.2, hi=0.8)
    ref = model(x).detach()
    plan = AttackPlan(eps=8 / 255, step_size=0, steps=1, loss="kl", ref_logits=ref)
    # the KL to the model's own clean prediction has a zero gradient at x: FGSM from zero is stuck
    stuck = run("fgsm", model, x, y, plan.replace(random_start="none"))
    assert (lp(stuck.x_adv - x, "linf") < 7.9 / 255).any()
    moved = run("fgsm", model, x, y, plan.replace(random_start="normal"))  # what TRADES asks for
    assert torch.allclose(lp(moved.x_adv - x, "linf"), torch.full((12,), 8 / 255), atol=1e-6)
    plain = AttackPlan(eps=8 / 255, step_size=0, steps=1)
    a = run("fgsm", model, x, y, plain, seed=1)
    b = run("fgsm", model, x, y, plain.replace(random_start="none"), seed=2)
    assert torch.equal(a.x_adv, b.x_adv)  # nobody asks: deterministic, from zero
    c = run("fgsm_rs", model, x, y, plain.replace(random_start="normal"), seed=1)
    d = run("fgsm_rs", model, x, y, plain.replace(random_start="none"), seed=1)
    assert torch.equal(c.x_adv, d.x_adv)  # FGSM-RS keeps its own uniform start


@pytest.mark.parametrize(("section", "field"), [
    ({"name": "fgsm_rs", "step": 0}, "attack.step"),
    ({"name": "n_fgsm", "k": -1}, "attack.k"),
    ({"name": "fgsm", "alpha": 1}, "attack.alpha"),
])
def test_bad_fields_name_the_field(section, field):
    with pytest.raises(ConfigError) as err:
        ATTACKS.build(section)
    assert err.value.field == field
