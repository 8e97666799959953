"""SAAT: SA-PGD (Algorithm 1, batched) and the ``saat`` strategy, presets and telemetry."""

from __future__ import annotations

import csv
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptrain.attacks import ATTACKS, AttackPlan, make_loss, pgd
from adaptrain.attacks.sa_pgd import SAPGDSettings, sa_pgd
from adaptrain.config import build_config
from adaptrain.context import Batch, Feedback, RunContext, StepInfo
from adaptrain.data import DataSpec
from adaptrain.errors import ConfigError
from adaptrain.models import build_model
from adaptrain.profiling import count_passes
from adaptrain.strategies import STRATEGIES
from adaptrain.threat import clip_box, project
from adaptrain.threat import norm as lp
from adaptrain.train import train

E = 1 / 255


@pytest.fixture(autouse=True)
def one_thread():
    """These tiny models run fastest on one thread; on a shared, loaded machine two OpenMP
    threads spin-wait for each other and make every pass ~40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bn_model() -> nn.Module:
    """A float64 small CNN with BatchNorm whose running statistics are not trivial; the head is
    scaled up so that the loss moves by ~0.2 between budgets 0 and 8/255."""
    spec = DataSpec("t", 5, 3, (8, 8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.manual_seed(0)
    model = build_model({"name": "small_cnn", "width": 4}, spec).double()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 3, 8, 8, dtype=torch.float64))
        model.head.weight.mul_(6)
    return model


def data(n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (n,), generator=g)
    return x, y


def ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        was = model.training
        model.eval()
        out = F.cross_entropy(model(x), y, reduction="none")
        model.train(was)
        return out


def sa_plan(rho, eps_max=14 * E, *, warm=False, eps_0=0.0, tau=2 * E, k=3, alpha=2 * E, **kw):
    """The plan and the attack's search settings, as (plan, settings) for :func:`run`."""
    s = SAPGDSettings(eps_0=eps_0, tau=tau, warm_start=warm)
    return AttackPlan(eps=eps_max, step_size=alpha, steps=k, stop_loss=rho, **kw), s


def run(model, x, y, planned, seed=1, **kw):
    plan, search = planned
    return sa_pgd(model, x, y, plan, generator=torch.Generator().manual_seed(seed), search=search,
                  **kw)


def spread_rho(model, x, y, warm: bool = False) -> torch.Tensor:
    """Per-sample rho (B,) around the loss at the start of the search (clean, or after PGD-10
    at 8/255 for the warm start): some samples meet it at once, some after a few steps, some
    never."""
    start = x
    if warm:
        start = pgd(model, x, y, AttackPlan(eps=8 * E, step_size=2 * E, steps=10),
                    generator=torch.Generator().manual_seed(1)).x_adv
    return (ce(model, start, y) + torch.linspace(-0.05, 0.25, x.shape[0], dtype=x.dtype)).float()


# ---------------------------------------------------------------------------------------
# the attack


@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("norm_name", ["linf", "l2"])
def test_every_sample_meets_rho_or_eps_max_inside_its_own_budget(warm, norm_name):
    model = bn_model()
    x, y = data()
    rho = spread_rho(model, x, y, warm)
    scale = 1.0 if norm_name == "linf" else 8.0
    eps_max = (14 if warm else 8) * E * scale
    plan, search = sa_plan(rho, eps_max, warm=warm, tau=2 * E * scale, alpha=2 * E * scale,
                           norm=norm_name)
    if warm:
        search = SAPGDSettings(tau=2 * E * scale, warm_start=True, warm_eps=8 * E * scale,
                               warm_step_size=2 * E * scale)
    res = run(model, x, y, (plan, search))
    eps = res.info["eps"]
    at_max = torch.isclose(eps, torch.tensor(eps_max, dtype=eps.dtype))
    loss = ce(model, res.x_adv, y)
    assert ((loss >= rho) | at_max).all()
    assert (lp(res.x_adv - x, norm_name) <= eps + 1e-6).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    # the reported loss is that of every sample's final iterate, and 'reached' says which met rho
    assert torch.allclose(res.loss.double(), loss, atol=1e-6)
    assert torch.equal(res.info["reached"], res.loss >= rho)
    assert (~res.info["reached"]).any() and res.info["reached"].any(), "rho must split the batch"


def algorithm_1(model, x, y, rho, eps_max, tau, k, alpha, eps_0=0.0, delta=None):
    """A literal, one-sample-at-a-time transcription of the paper's Algorithm 1."""
    outs = []
    for i in range(x.shape[0]):
        xi, yi = x[i:i + 1], y[i:i + 1]
        d = torch.zeros_like(xi) if delta is None else delta[i:i + 1].clone()
        eps, steps = eps_0, 0
        loss = ce(model, xi + d, yi).float()
        if loss < rho[i]:
            while eps < eps_max - 1e-9:
                eps = min(eps + tau, eps_max)
                for _ in range(k):
                    d.requires_grad_(True)
                    g, = torch.autograd.grad(F.cross_entropy(model(xi + d), yi), d)
                    d = d.detach() + alpha * g.sign()
                    d = clip_box(xi, project(d, torch.tensor([eps], dtype=d.dtype), "linf"))
                    steps += 1
                    loss = ce(model, xi + d, yi).float()
                    if loss >= rho[i]:
                        break
                if loss >= rho[i]:
                    break
        outs.append((xi + d, eps, float(loss), steps))
    x_adv = torch.cat([o[0] for o in outs])
    return x_adv, torch.tensor([o[1] for o in outs]), torch.tensor([o[2] for o in outs]), \
        torch.tensor([o[3] for o in outs])


@pytest.mark.parametrize("warm", [False, True])
def test_batched_sa_pgd_equals_a_literal_per_sample_algorithm_1(warm):
    model = bn_model().eval()
    x, y = data(n=12, seed=3)
    rho = spread_rho(model, x, y, warm)
    res = run(model, x, y, sa_plan(rho, 13 * E, warm=warm))
    start, eps_0, pre = None, 0.0, 0
    if warm:  # the warm start is standard PGD-10 with the same generator
        start = pgd(model, x, y, AttackPlan(eps=8 * E, step_size=2 * E, steps=10),
                    generator=torch.Generator().manual_seed(1)).x_adv - x
        eps_0, pre = 8 * E, 10
    x_ref, eps_ref, loss_ref, steps_ref = algorithm_1(model, x, y, rho, 13 * E, 2 * E, 3, 2 * E,
                                                      eps_0, start)
    assert torch.allclose(res.x_adv, x_ref, atol=1e-12)
    assert torch.allclose(res.info["eps"].double(), eps_ref.double(), atol=1e-7)
    assert torch.allclose(res.loss, loss_ref, atol=1e-6)
    assert torch.equal(res.steps_used, steps_ref + pre)
    full = 3 * (3 if warm else 7)  # K * ceil((13 - eps_0) / 2) steps
    assert (steps_ref == 0).any() and (steps_ref == full).any()
    assert ((steps_ref > 0) & (steps_ref < full)).any()
    if warm:  # 13/255 from 8/255 in steps of 2/255: rounds at 10, 12 and 13 (clamped to eps_max)
        assert set((res.info["eps"] * 255).round().long().tolist()) <= {8, 10, 12, 13}


def test_rho_at_most_zero_is_natural_training():
    model = bn_model()
    x, y = data()
    for rho in (0.0, -1.0):
        res = run(model, x, y, sa_plan(rho, 8 * E))
        assert torch.equal(res.x_adv, x)
        assert torch.equal(res.steps_used, torch.zeros(16, dtype=torch.long))
        assert torch.equal(res.info["eps"], torch.zeros(16, dtype=res.info["eps"].dtype))
        assert torch.allclose(res.loss.double(), ce(model, x, y), atol=1e-9)
    # TRADES's KL from its 0.001 * N(0, 1) jitter start: no perturbation either (rho < 0, as a
    # computed KL can be a rounding error below 0)
    ref = model.eval()(x).detach()
    model.train()
    res = run(model, x, y, sa_plan(-1e-6, 8 * E, loss="kl", ref_logits=ref, random_start="normal"))
    assert torch.equal(res.x_adv, x) and torch.equal(res.steps_used, torch.zeros(16, dtype=torch.long))


def test_rho_inf_with_eps_max_eps_equals_standard_pgd():
    model = bn_model()
    x, y = data()
    gen = torch.Generator().manual_seed
    # warm start with eps_max = 8/255: exactly PGD-10 (uniform start, same generator draws)
    ref = pgd(model, x, y, AttackPlan(eps=8 * E, step_size=2 * E, steps=10), generator=gen(4),
              final_eval=True)
    res = run(model, x, y, sa_plan(math.inf, 8 * E, warm=True), seed=4)
    assert torch.equal(res.x_adv, ref.x_adv)
    assert torch.equal(res.steps_used, ref.steps_used)
    assert torch.allclose(res.loss, ref.loss, atol=1e-12)
    assert not res.info["reached"].any()
    # Algorithm 1 from eps_0 = 0 with one round (tau = eps_max = eps) of K = 10 steps: PGD-10
    # from the clean input (the paper's x' <- x has no random start)
    ref = pgd(model, x, y, AttackPlan(eps=8 * E, step_size=2 * E, steps=10, random_start="none"))
    res = run(model, x, y, sa_plan(math.inf, 8 * E, tau=8 * E, k=10), seed=4)
    assert torch.equal(res.x_adv, ref.x_adv)
    assert torch.allclose(res.info["eps"], torch.full((16,), 8 * E, dtype=res.info["eps"].dtype))
    # several rounds run K * rounds steps in all, all samples ending at eps_max
    res = run(model, x, y, sa_plan(math.inf, 8 * E, tau=2 * E, k=3), seed=4)
    assert torch.equal(res.steps_used, torch.full((16,), 12))


def test_down_weakens_easy_samples_and_the_warm_start_never_does():
    model = bn_model()
    x, y = data()
    rho = spread_rho(model, x, y)
    down = run(model, x, y, sa_plan(rho, 8 * E))
    up = run(model, x, y, sa_plan(rho, 14 * E, warm=True))
    easy = down.info["eps"] < 8 * E - 1e-9
    assert easy.any() and (down.info["eps"][easy] == 0).any()  # some are not attacked at all
    assert (up.info["eps"] >= 8 * E - 1e-7).all()
    assert (lp(up.x_adv - x, "linf") > 4 * E).all()  # PGD-10 moved every sample


def test_compaction_and_masking_agree_in_eval_mode():
    model = bn_model()
    x, y = data()
    for warm in (False, True):
        plan = sa_plan(spread_rho(model, x, y, warm), 12 * E, warm=warm, bn="eval")
        a, b = (run(model, x, y, plan, compact=c) for c in (True, False))
        assert torch.allclose(a.x_adv, b.x_adv, atol=1e-12)
        assert torch.equal(a.steps_used, b.steps_used)
        assert torch.allclose(a.loss, b.loss, atol=1e-10)
        assert torch.equal(a.info["eps"], b.info["eps"])


def test_train_mode_batchnorm_masks_instead_and_keeps_the_invariants():
    model = bn_model()
    x, y = data()
    rho = spread_rho(model, x, y)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    res = run(model, x, y, sa_plan(rho, 8 * E, bn="train"))
    assert not torch.equal(bn.running_mean, before)  # asked for: attack.bn = train
    assert (lp(res.x_adv - x, "linf") <= res.info["eps"] + 1e-6).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1 and model.training


def test_passes_are_exactly_those_the_search_needs():
    """Warm PGD-10: 10 F+B per row; then one F+B per check-and-step, where a sample's last check
    (the one that freezes it) also costs one; samples that used every step get a final F."""
    model = bn_model().eval()
    x, y = data()
    rho = spread_rho(model, x, y, warm=True)
    with count_passes(model) as c:
        res = run(model, x, y, sa_plan(rho, 14 * E, warm=True))
    moved = res.steps_used - 10
    exhausted = moved == 9  # 3 rounds of K = 3
    iters = moved + (~exhausted).long()
    assert c.backward_rows == int(16 * 10 + iters.sum())
    assert c.forward_rows == c.backward_rows + int(exhausted.sum())
    assert exhausted.any() and (~exhausted).any()


def test_attack_leaves_model_modes_flags_grads_and_bn_stats_alone():
    model = bn_model()
    x, y = data()
    rho = spread_rho(model, x, y, warm=True)
    model.head.eval()
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    stats = [b.clone() for b in model.buffers()]
    run(model, x, y, sa_plan(rho, 12 * E, warm=True))
    assert all(p.grad is None for p in model.parameters())
    assert model.training and not model.head.training and not frozen.requires_grad
    assert all(p.requires_grad for p in list(model.parameters())[1:])
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers(), strict=True))


def test_registered_attack_fills_norm_and_start_from_its_config():
    model = bn_model()
    x, y = data()
    attack = ATTACKS.build({"name": "sa_pgd", "norm": "l2", "bn": "eval", "tau": 0.5})
    plan, _ = sa_plan(math.inf, 1.0, alpha=0.25)
    res = attack(model, x, y, attack.resolve(plan), generator=torch.Generator().manual_seed(0))
    assert (lp(res.x_adv - x, "l2") <= 1.0 + 1e-6).all()
    assert (lp(res.x_adv - x, "linf") > 14 * E).any()  # an L2 ball of 1.0, not L-inf


def test_the_kl_constraint_is_on_the_trades_inner_loss():
    model = bn_model()
    x, y = data()
    with torch.no_grad():
        ref = model.eval()(x)
    model.train()
    plan = sa_plan(0.05, 14 * E, warm=True, loss="kl", ref_logits=ref, random_start="normal")
    res = run(model, x, y, plan)
    kl, _ = make_loss("kl", ref)(model.eval(), res.x_adv, y, torch.arange(16))
    assert torch.allclose(res.loss.double(), kl.detach().double(), atol=1e-9)
    at_max = torch.isclose(res.info["eps"], torch.tensor(14 * E, dtype=res.info["eps"].dtype))
    assert ((res.loss >= 0.05) | at_max).all()


# ---------------------------------------------------------------------------------------
# the strategy


def ctx(n: int = 40) -> RunContext:
    return RunContext(num_train=n, num_classes=5, input_shape=(3, 8, 8), epochs=2,
                      batches_per_epoch=3, device=torch.device("cpu"), seed=0)


def strategy(**fields):
    return STRATEGIES.build({"name": "saat", **fields}, ctx=ctx())


def test_strategy_plans_the_search_and_reports_stable_telemetry():
    model = bn_model()
    s = strategy(rho=1.7, eps_max=12 * E)
    attack = ATTACKS.build({"name": "sa_pgd", "warm_start": True})
    gen = torch.Generator().manual_seed(0)
    g = torch.Generator().manual_seed(5)
    x_all = torch.rand(40, 3, 8, 8, generator=g, dtype=torch.float64)
    y_all = torch.randint(0, 5, (40,), generator=g)
    s.start_epoch(0)
    results = []
    for b, idx in enumerate(torch.arange(40).split(16)):
        batch = Batch(model, x_all[idx], y_all[idx], idx, StepInfo(0, b, b, 0.1))
        plan = s.plan(batch)
        assert plan.stop_loss == 1.7 and plan.eps == 12 * E and plan.steps == 3
        res = attack(model, batch.x, batch.y, attack.resolve(plan), generator=gen)
        results.append(res)
        s.observe(Feedback(batch, plan, res, res.loss, None, None, None, attack))
    row = s.end_epoch(0)
    shares = {k: v for k, v in row.items() if k.startswith("eps_share_")}
    # one column per budget from 0 (a warm start never ends below 8/255: those stay 0)
    assert list(shares) == [f"eps_share_{k}" for k in range(13)]
    assert all(shares[f"eps_share_{k}"] == 0 for k in range(8))
    assert math.isclose(sum(shares.values()), 1.0, abs_tol=1e-6)
    eps = torch.cat([r.info["eps"] for r in results]) * 255
    loss = torch.cat([r.loss for r in results])
    assert math.isclose(shares["eps_share_8"], float((eps.round() == 8).float().mean()), abs_tol=1e-6)
    assert math.isclose(row["mean_eps"], float(eps.mean()), rel_tol=1e-5)
    assert math.isclose(row["loss_mean"], float(loss.mean()), rel_tol=1e-5)
    assert row["loss_q10"] <= row["loss_q50"] <= row["loss_q90"]
    reached = torch.cat([r.info["reached"] for r in results])
    assert math.isclose(row["frac_below_rho"], 1 - float(reached.float().mean()), abs_tol=1e-6)
    assert row["mean_steps"] >= 10
    assert list(strategy(eps_max=8 * E).end_epoch(0)) == []  # nothing seen: no row
    # state round-trips through a weights-only checkpoint
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    t = strategy(rho=1.7, eps_max=12 * E)
    t.load_state_dict(torch.load(buf, weights_only=True))
    assert t.end_epoch(0) == row
    assert all(torch.equal(getattr(s, k), getattr(t, k)) for k in s.state_keys)


@pytest.mark.parametrize(("fields", "bad"), [
    ({"steps": 0}, "strategy.steps"),
    ({"eps_max": 0.0}, "strategy.eps_max"),
    ({"step_size": 0.0}, "strategy.step_size"),
    ({"rho": float("nan")}, "strategy.rho"),
])
def test_bad_strategy_fields_name_the_field(fields, bad):
    with pytest.raises(ConfigError) as err:
        strategy(**fields)
    assert err.value.field == bad


@pytest.mark.parametrize(("overrides", "bad"), [
    (["attack.tau=0"], "attack.tau"),
    (["attack.warm_steps=0"], "attack.warm_steps"),
    (["attack.warm_start=false", "attack.eps_0=10/255", "strategy.eps_max=8/255"], "attack.eps_0"),
    (["strategy.eps_max=6/255"], "attack.warm_eps"),  # the warm start is above eps_max
    (["attack.eps_0=2/255"], "attack.eps_0"),  # a warm start starts at warm_eps
    (["attack.tau=1e-6"], "attack.tau"),  # millions of steps per sample
])
def test_the_search_settings_are_checked_against_the_strategy_before_any_work(overrides, bad):
    with pytest.raises(ConfigError) as err:
        build_config("saat-up", overrides)
    assert err.value.field == bad


def test_saat_refuses_an_attack_that_is_not_sa_pgd_before_any_work():
    # declared on the registry entry (requires), checked by config validation, not in observe
    with pytest.raises(ConfigError) as err:
        build_config("saat-up", ["attack.name=pgd"])
    assert err.value.field == "attack.name" and "sa_pgd" in str(err.value)


# ---------------------------------------------------------------------------------------
# presets and training


def test_presets_resolve_to_the_papers_settings():
    up, down, awp, trades = (build_config(p) for p in ("saat-up", "saat-down", "saat-awp", "sa-trades"))
    for cfg in (up, down, awp, trades):
        assert cfg.attack["name"] == "sa_pgd" and cfg.strategy["name"] == "saat"
        assert cfg.model["name"] == "preact_resnet18" and cfg.epochs == 200
        assert cfg.optim.schedule == "piecewise" and cfg.optim.weight_decay == 5e-4
        assert math.isclose(cfg.attack["tau"], 2 * E) and cfg.strategy["steps"] == 3
    assert up.attack["warm_start"] and math.isclose(up.strategy["eps_max"], 14 * E)
    assert up.strategy["rho"] == 1.7 and up.awp.gamma == 0
    assert not down.attack["warm_start"] and down.attack["eps_0"] == 0
    assert math.isclose(down.strategy["eps_max"], 8 * E) and down.strategy["rho"] == 1.5
    assert awp.awp.gamma == 0.01 and math.isclose(awp.strategy["eps_max"], 9 * E)
    assert awp.strategy["rho"] == 1.7 and awp.attack["warm_start"]
    assert trades.objective["name"] == "trades" and trades.attack["warm_step_size"] == 0.007


TINY = ("epochs=1", "data.name=digits", "data.val_size=0", "data.subset=128", "data.batch_size=64",
        "model.name=small_cnn", "model.width=4", "eval.n=64", "eval.attack=pgd-2", "device=cpu")


@pytest.mark.parametrize("preset", ["saat-up", "saat-down", "sa-trades", "saat-awp"])
def test_one_tiny_epoch_on_digits(tmp_path, preset):
    cfg = build_config(preset, list(TINY))
    summary = train(cfg, tmp_path, preset=preset, progress=False, log=lambda line: None)
    assert summary["finished"] and summary["epochs_completed"] == 1
    rows = list(csv.DictReader((tmp_path / "strategy.csv").open()))
    assert len(rows) == 1
    row = {k: float(v) for k, v in rows[0].items()}
    lo = 0 if preset == "saat-down" else 8  # a warm start never ends below warm_eps
    hi = round(255 * cfg.strategy["eps_max"])
    assert [k for k in row if k.startswith("eps_share_")] == [f"eps_share_{k}" for k in range(hi + 1)]
    assert all(row[f"eps_share_{k}"] == 0 for k in range(lo))
    assert math.isclose(sum(v for k, v in row.items() if k.startswith("eps_share_")), 1.0, abs_tol=1e-6)
    assert 0 <= row["frac_below_rho"] <= 1 and lo <= row["mean_eps"] <= hi
