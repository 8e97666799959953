"""PGD engine: budgets, box, directions, analytic optimum, compaction, early stops, restarts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptrain.attacks import ATTACKS, AttackPlan, engine, make_loss, pgd
from adaptrain.models import build_model
from adaptrain.threat import norm as lp
from toy_models import Linear


def data(n: int = 12, shape=(3, 4, 4), c: int = 5, seed: int = 0, lo: float = 0.0, hi: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, *shape, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


def ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


@pytest.mark.parametrize("norm_name", ["linf", "l2", "l1"])
@pytest.mark.parametrize("start", ["uniform", "normal", "none"])
def test_budget_box_and_zero_steps(norm_name, start):
    torch.manual_seed(0)
    model = Linear(48, 5)
    x, y = data()
    scale = {"linf": 1.0, "l2": 10.0, "l1": 100.0}[norm_name]
    eps = torch.linspace(0, 16, 12) / 255 * scale
    steps = torch.tensor([0, 1, 2, 3, 5, 7, 10, 10, 0, 4, 6, 8])
    plan = AttackPlan(eps=eps, step_size=eps / 4, steps=steps, norm=norm_name, random_start=start)
    res = pgd(model, x, y, plan, generator=torch.Generator().manual_seed(1))
    delta = res.x_adv - x
    assert (lp(delta, norm_name) <= eps + 1e-6).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    unchanged = steps == 0
    assert torch.equal(res.x_adv[unchanged], x[unchanged])
    assert torch.equal(res.steps_used, steps)


def test_maximise_raises_and_minimise_lowers_the_loss():
    model = Linear(48, 5)
    x, y = data(lo=0.2, hi=0.8)
    base = ce(model, x, y)
    up = pgd(model, x, y, AttackPlan(eps=8 / 255, step_size=2 / 255, steps=5, random_start="none"))
    assert (ce(model, up.x_adv, y) > base).all()
    down = pgd(model, x, y, AttackPlan(eps=8 / 255, step_size=1e-3, steps=1, direction=-1,
                                       random_start="none"))
    assert (ce(model, down.x_adv, y) < base).all()


def test_linf_reaches_the_analytic_optimum_of_a_linear_two_class_model():
    # For two classes CE increases monotonically in (w_other - w_y) . x, so the optimum over the
    # L-inf ball is delta = eps * sign(w_other - w_y) (inputs kept away from the box edges).
    model = Linear(48, 2)
    x, y = data(c=2, lo=0.3, hi=0.7)
    eps = torch.full((12,), 8 / 255)
    res = pgd(model, x, y, AttackPlan(eps=eps, step_size=2 / 255, steps=10, random_start="uniform"),
              generator=torch.Generator().manual_seed(0))
    w = model.fc.weight.detach()
    direction = (w[1 - y] - w[y]).sign().view_as(x)
    assert torch.allclose(res.x_adv - x, 8 / 255 * direction, atol=1e-6)


def test_cw_and_kl_losses_are_maximised():
    model = Linear(48, 5)
    x, y = data(lo=0.2, hi=0.8)
    ref = model(x).detach()
    for loss_name, kwargs in (("cw", {}), ("kl", {"ref_logits": ref})):
        loss_fn = make_loss(loss_name, kwargs.get("ref_logits"))
        plan = AttackPlan(eps=8 / 255, step_size=2 / 255, steps=5, loss=loss_name,
                          random_start="none", **kwargs)
        res = pgd(model, x, y, plan, final_eval=True)
        with torch.no_grad():
            before, _ = loss_fn(model, x, y, torch.arange(12))
            after, _ = loss_fn(model, res.x_adv, y, torch.arange(12))
        assert (after >= before - 1e-6).all() and after.mean() > before.mean()
        assert torch.allclose(res.loss, after, atol=1e-5)


def test_scalar_budgets_broadcast_like_per_sample_tensors():
    model = Linear(48, 5)
    x, y = data()
    a = pgd(model, x, y, AttackPlan(eps=8 / 255, step_size=2 / 255, steps=3),
            generator=torch.Generator().manual_seed(3))
    b = pgd(model, x, y, AttackPlan(eps=torch.full((12,), 8 / 255), step_size=torch.full((12,), 2 / 255),
                                    steps=torch.full((12,), 3)),
            generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.x_adv, b.x_adv)


def small_bn_model() -> nn.Module:
    from adaptrain.data import DataSpec

    spec = DataSpec("t", 5, 3, (8, 8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.manual_seed(0)
    model = build_model({"name": "small_cnn", "width": 4}, spec).double()
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model(torch.rand(16, 3, 8, 8, dtype=torch.float64))
    return model


def test_compaction_equals_masking_in_eval_mode():
    model = small_bn_model()
    x, y = data(n=10, shape=(3, 8, 8))
    x = x.double()
    steps = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 15])
    eps = torch.linspace(1, 12, 10) / 255
    plan = AttackPlan(eps=eps, step_size=eps / 4, steps=steps, bn="eval", stop_loss=2.0)
    results = [pgd(model, x, y, plan, generator=torch.Generator().manual_seed(5), compact=c,
                   final_eval=True) for c in (True, False)]
    assert torch.allclose(results[0].x_adv, results[1].x_adv, atol=1e-12)
    assert torch.equal(results[0].steps_used, results[1].steps_used)
    assert torch.allclose(results[0].loss, results[1].loss, atol=1e-10)


def test_compaction_saves_passes_for_uneven_steps():
    from adaptrain.profiling import count_passes

    model = Linear(48, 5)
    x, y = data()
    steps = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 12])
    with count_passes(model) as c:
        pgd(model, x, y, AttackPlan(eps=8 / 255, step_size=2 / 255, steps=steps))
    assert c.forward_rows == c.backward_rows == int(steps.sum())
    with count_passes(model) as c:
        pgd(model, x, y, AttackPlan(eps=8 / 255, step_size=2 / 255, steps=steps), compact=False)
    assert c.forward_rows == 12 * 12


def test_compacted_working_batch_is_padded_to_few_sizes():
    """B = 64: the working batch is rounded up to a multiple of 64 // 16 = 4 rows with frozen
    rows, which never move, so results still equal masking."""
    model = small_bn_model()
    x, y = data(n=64, shape=(3, 8, 8), seed=3)
    x = x.double()
    steps = torch.randint(0, 13, (64,), generator=torch.Generator().manual_seed(0))
    plan = AttackPlan(eps=8 / 255, step_size=2 / 255, steps=steps, bn="eval")
    widths: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, args: widths.append(args[0].shape[0]))
    compact = pgd(model, x, y, plan, generator=torch.Generator().manual_seed(5))
    hook.remove()
    masked = pgd(model, x, y, plan, generator=torch.Generator().manual_seed(5), compact=False)
    assert torch.allclose(compact.x_adv, masked.x_adv, atol=1e-12)
    assert torch.equal(compact.steps_used, steps) and torch.equal(masked.steps_used, steps)
    active = [int((steps > t).sum()) for t in range(int(steps.max()))]
    assert widths == [min(64, -(-a // 4) * 4) for a in active]
    assert len(set(widths)) <= engine.WIDTHS and sum(widths) < 64 * int(steps.max())


def test_attack_leaves_parameters_modes_and_flags_alone():
    model = small_bn_model().float()
    model.train()
    model.head.eval()  # a submodule in a different mode must come back as it was
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    stats = [b.clone() for b in model.buffers()]
    x, y = data(n=6, shape=(3, 8, 8))
    pgd(model, x, y, AttackPlan(eps=8 / 255, step_size=2 / 255, steps=3, bn="eval"))
    assert all(p.grad is None for p in model.parameters())
    assert model.training and not model.head.eval().training
    model.head.train()
    assert not frozen.requires_grad
    assert all(p.requires_grad for p in list(model.parameters())[1:])
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers(), strict=True))


def test_train_mode_attack_updates_batchnorm_only_when_asked():
    model = small_bn_model().float()
    x, y = data(n=6, shape=(3, 8, 8))
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    mean_before = bn.running_mean.clone()
    pgd(model, x, y, AttackPlan(eps=8 / 255, step_size=2 / 255, steps=2, bn="eval"))
    assert torch.equal(bn.running_mean, mean_before)
    pgd(model, x, y, AttackPlan(eps=8 / 255, step_size=2 / 255, steps=2, bn="train"))
    assert not torch.equal(bn.running_mean, mean_before)
    assert model.training


def trajectory(model, x, y, max_steps, **plan_kw):
    """x_adv after k = 0..max_steps steps of deterministic PGD (no random start)."""
    out = [x.clone()]
    for k in range(1, max_steps + 1):
        out.append(pgd(model, x, y, AttackPlan(eps=16 / 255, step_size=2 / 255, steps=k,
                                               random_start="none", **plan_kw)).x_adv)
    return out


def test_stop_loss_freezes_each_sample_at_its_first_check_above_rho():
    model = Linear(48, 5)
    x, y = data(lo=0.2, hi=0.8)
    traj = trajectory(model, x, y, 8)
    losses = torch.stack([ce(model, t, y) for t in traj])  # (9, B)
    rho = losses[3] - 1e-4  # every sample crosses rho at some step <= 3 (the loss only rises)
    rho[:3] = float("inf")  # these never stop early
    rho[3] = float("-inf")  # this one stops at once
    res = pgd(model, x, y, AttackPlan(eps=16 / 255, step_size=2 / 255, steps=8, random_start="none",
                                      stop_loss=rho))
    first = torch.where((losses >= rho).any(0), (losses >= rho).float().argmax(0), torch.tensor(8))
    assert torch.equal(res.steps_used, first)
    for i in range(12):
        assert torch.allclose(res.x_adv[i], traj[int(first[i])][i])
    frozen = first < 8
    assert (res.loss[frozen] >= rho[frozen]).all()


def test_misclassification_rule_counts_checks_like_fat():
    model = Linear(48, 5)
    x, y = data(lo=0.2, hi=0.8)
    traj = trajectory(model, x, y, 10)
    with torch.no_grad():
        wrong = torch.stack([model(t).argmax(1) != y for t in traj])  # (11, B)
    tau = torch.arange(12) % 3
    res = pgd(model, x, y, AttackPlan(eps=16 / 255, step_size=2 / 255, steps=10, random_start="none",
                                      stop_misclassified=tau))
    counts = wrong.long().cumsum(0)  # misclassified checks up to and including step k
    hit = counts > tau
    expected = torch.where(hit.any(0), hit.float().argmax(0), torch.tensor(10))
    assert torch.equal(res.steps_used, expected)
    assert wrong.any(), "the test needs some samples to flip"


def test_restarts_keep_each_samples_worst_case():
    model = Linear(48, 5, seed=3)
    x, y = data(lo=0.2, hi=0.8, seed=4)
    single = pgd(model, x, y, AttackPlan(eps=4 / 255, step_size=1 / 255, steps=3),
                 generator=torch.Generator().manual_seed(9), final_eval=True)
    multi = pgd(model, x, y, AttackPlan(eps=4 / 255, step_size=1 / 255, steps=3, restarts=5),
                generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        wrong_single = model(single.x_adv).argmax(1) != y
        wrong_multi = model(multi.x_adv).argmax(1) != y
    assert (wrong_multi | ~wrong_single).all()  # fooled once -> stays fooled
    keep = ~wrong_single
    assert (multi.loss[keep] >= single.loss[keep] - 1e-6).all()
    assert (multi.loss[keep] > single.loss[keep] + 1e-4).any()  # later restarts found worse cases
    assert torch.allclose(multi.loss, ce(model, multi.x_adv, y), atol=1e-5)
    assert torch.equal(multi.info["misclassified"], wrong_multi)
    assert (lp(multi.x_adv - x, "linf") <= 4 / 255 + 1e-6).all()


def test_budget_schedule_and_reported_final_eps():
    model = Linear(48, 5)
    x, y = data(lo=0.2, hi=0.8)

    def schedule(t: int) -> torch.Tensor:  # grows by 2/255 every 2 steps, up to 8/255
        return torch.full((12,), min(2 * (t // 2 + 1), 8) / 255)

    with engine.frozen_model(model):
        res = engine.run(model, x, y, torch.zeros_like(x), eps=schedule,
                         step_size=torch.full((12,), 1 / 255), steps=torch.full((12,), 8, dtype=torch.long),
                         norm="linf", loss_fn=make_loss("ce"))
    assert (lp(res.x_adv - x, "linf") <= 8 / 255 + 1e-6).all()
    assert torch.allclose(res.info["eps"], torch.full((12,), 8 / 255))


@pytest.mark.parametrize(("section", "plan_start", "wish", "expected"), [
    ({"name": "pgd"}, None, None, "uniform"),  # the attack's default
    ({"name": "pgd"}, None, "normal", "normal"),  # the objective's wish (TRADES)
    ({"name": "pgd"}, "none", "normal", "none"),  # the plan (a strategy or caller) first
    ({"name": "pgd", "random_start": "none"}, "uniform", "normal", "none"),  # config first
    ({"name": "dra"}, None, None, "none"),  # Algorithm 1 starts at x
    ({"name": "dra"}, None, "normal", "normal"),
    ({"name": "fgsm"}, None, None, "none"),
    ({"name": "fgsm"}, None, "normal", "normal"),
    ({"name": "fgsm_rs"}, None, "normal", "uniform"),  # part of FGSM-RS's definition
    ({"name": "n_fgsm", "k": 0}, None, None, "none"),
    ({"name": "sa_pgd"}, None, "normal", "normal"),
])
def test_one_resolve_holds_the_random_start_precedence(section, plan_start, wish, expected):
    attack = ATTACKS.build(section)
    plan = attack.resolve(AttackPlan(eps=0.1, step_size=0.01, steps=1, random_start=plan_start),
                          wish=wish)
    assert plan.random_start == expected
    assert attack.resolve(plan, wish="uniform") == plan  # a resolved plan is final
    assert plan.norm == ("l1" if section["name"] == "dra" else "linf") and plan.bn == "eval"
