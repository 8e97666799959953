"""DRA fine-tuning: the DRA attack (mask, budget, box, L1 step), the replay objective, the
dra_schedule strategy with its clean-only tail, init_from, the calibration, the 2-conv 2-fc
CNN, and tiny training runs of the recipe on digits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptrain import checkpoint
from adaptrain.attacks import ATTACKS, AttackPlan
from adaptrain.attacks.dra import dra, keep_count
from adaptrain.attacks.losses import kl_to_ref
from adaptrain.calibrate import bisect_eps, calibrate_dra, dra_correct
from adaptrain.cli import main
from adaptrain.config import build_config
from adaptrain.context import Batch, RunContext, StepInfo
from adaptrain.data.base import DataSpec
from adaptrain.errors import ConfigError
from adaptrain.evaluate import attack_correct
from adaptrain.models import build_model
from adaptrain.objectives import OBJECTIVES
from adaptrain.profiling import count_passes
from adaptrain.strategies import STRATEGIES
from adaptrain.threat import norm as lp
from adaptrain.train import setup, train
from toy_models import Linear as _Linear
from training_helpers import QUIET


def Linear(d: int, c: int, seed: int = 0) -> _Linear:  # noqa: N802 - a model factory
    """No bias: the input gradient of CE is dense."""
    return _Linear(d, c, seed, bias=False)


DIGITS = ("data.name=digits", "data.val_size=0", "model.name=small_cnn", "model.width=4",
          "data.subset=256", "data.batch_size=64", "eval.n=64")



def data(n: int = 8, shape=(3, 4, 4), c: int = 5, lo: float = 0.3, hi: float = 0.7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, *shape, generator=g)
    return x, torch.randint(0, c, (n,), generator=g)


def input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return g


def reference_dra(model, x, y, eps, steps, p, per_coordinate=True):
    """Algorithm 1 written out directly: T L1-normalised steps, then the top-p |last grad| mask."""
    D = x[0].numel()
    budget = eps * D if per_coordinate else eps
    alpha = (budget / steps).view(-1, 1, 1, 1)
    xt = x.clone()
    for _ in range(steps):
        g = input_grad(model, xt, y)
        last = g
        xt = (xt + alpha * g / g.abs().flatten(1).sum(1).view(-1, 1, 1, 1)).clamp(0, 1)
    k = keep_count(p, D)
    idx = last.abs().flatten(1).topk(k, dim=1).indices
    mask = torch.zeros(x.shape[0], D, dtype=torch.bool).scatter_(1, idx, True).view_as(x)
    return torch.where(mask, xt, x), mask, xt


def plan(eps, steps=1, **kw) -> AttackPlan:
    return AttackPlan(eps=eps, step_size=0.0, steps=steps, **kw)


# --------------------------------------------------------------------------------------
# the attack


@pytest.mark.parametrize("p", [1 / 6, 1 / 3, 2 / 3])
def test_mask_keeps_round_p_coordinates_with_the_largest_last_gradient(p):
    model = Linear(48, 5)
    x, y = data()
    eps = torch.linspace(0.5, 2.0, 8) / 255
    res = dra(model, x, y, plan(eps), p=p, steps=5)
    ref, mask, _ = reference_dra(model, x, y, eps, 5, p)
    k = keep_count(p, 48)
    assert k == round(p * 48)
    changed = res.x_adv != x
    assert torch.equal(changed.flatten(1).sum(1), torch.full((8,), k))
    assert torch.equal(changed, mask)  # the k largest |grad| coordinates, nothing else
    assert torch.equal(res.x_adv[~mask], x[~mask])
    torch.testing.assert_close(res.x_adv, ref, rtol=0, atol=1e-6)
    assert torch.equal(res.info["kept"], torch.full((8,), k))


def test_rank_accumulated_uses_the_total_perturbation():
    model = Linear(48, 5)
    x, y = data()
    eps = torch.full((8,), 1 / 255)
    res = dra(model, x, y, plan(eps), p=1 / 3, steps=5, rank="accumulated")
    _, _, xt = reference_dra(model, x, y, eps, 5, 1.0)
    idx = (xt - x).abs().flatten(1).topk(16, dim=1).indices
    mask = torch.zeros(8, 48, dtype=torch.bool).scatter_(1, idx, True).view_as(x)
    assert torch.equal(res.x_adv != x, mask)


@pytest.mark.parametrize("budget", ["per_coordinate", "total"])
@pytest.mark.parametrize("start", ["none", "normal", "uniform"])
def test_budget_box_and_untouched_samples(budget, start):
    model = Linear(48, 5)
    x, y = data(n=10, lo=0.0, hi=1.0)  # pixels near 0 and 1: the box clips
    scale = 1.0 if budget == "per_coordinate" else 48.0
    eps = torch.tensor([0, 1, 2, 4, 8, 16, 32, 64, 8, 8]) / 255 * scale
    steps = torch.tensor([3, 3, 3, 3, 3, 3, 3, 3, 0, 3])
    res = dra(model, x, y, plan(eps, steps, random_start=start), p=1 / 2, steps=4, budget=budget,
              generator=torch.Generator().manual_seed(0))
    delta = res.x_adv - x
    l1_budget = eps * 48 if budget == "per_coordinate" else eps
    assert (lp(delta, "l1") <= l1_budget * (1 + 1e-5) + 1e-7).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    off = (eps == 0) | (steps == 0)
    assert torch.equal(res.x_adv[off], x[off])  # zero budget or zero steps: unchanged
    assert (delta[~off].flatten(1) != 0).sum(1).le(24).all()
    assert (lp(delta[~off], "l1") > 0).all()
    assert torch.equal(res.steps_used, torch.where(off, 0, 4))


@pytest.mark.parametrize("budget", ["per_coordinate", "total"])
def test_p1_one_step_is_an_l1_normalised_gradient_step(budget):
    model = Linear(48, 5)
    x, y = data()
    eps = torch.linspace(0.1, 1.0, 8) / 255 * (1 if budget == "per_coordinate" else 48)
    res = dra(model, x, y, plan(eps), p=1.0, steps=1, budget=budget)
    g = input_grad(model, x, y)
    size = eps * 48 if budget == "per_coordinate" else eps
    step = size.view(-1, 1, 1, 1) * g / g.abs().flatten(1).sum(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(res.x_adv, (x + step).clamp(0, 1), rtol=0, atol=1e-7)
    torch.testing.assert_close(lp(res.x_adv - x, "l1"), size, rtol=1e-5, atol=0)


def test_raises_the_loss_it_maximises():
    model = Linear(48, 5)
    x, y = data()
    res = dra(model, x, y, plan(1 / 255), p=1 / 3, steps=5, final_eval=True)
    with torch.no_grad():
        before = F.cross_entropy(model(x), y, reduction="none")
        after = F.cross_entropy(model(res.x_adv), y, reduction="none")
    assert (after > before).all()
    torch.testing.assert_close(res.loss, after)  # final_eval reports the masked example's loss


def test_per_sample_steps_from_the_plan_when_attack_steps_is_null():
    model = Linear(48, 5)
    x, y = data()
    steps = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    res = dra(model, x, y, plan(1 / 255, steps), p=1 / 3, steps=None)
    assert torch.equal(res.steps_used, steps)
    ref, _, _ = reference_dra(model, x[3:4], y[3:4], torch.tensor([1 / 255]), 3, 1 / 3)
    torch.testing.assert_close(res.x_adv[3:4], ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bn", ["eval", "train"])
def test_a_samples_x_dra_does_not_depend_on_the_rest_of_its_batch(bn):
    # sample 0 takes T = 2 steps, the 31 others T = 5. Rows the engine still forwards after a
    # sample froze -- padding of the compacted batch (32 rows: quantum 2) under ``eval``, every
    # row under ``train`` (masking) -- must not re-rank its coordinates. A BatchNorm-free ReLU
    # network (``train`` changes nothing but the engine's masking) whose gradient ranking moves
    # between iterates (a linear model's hardly does)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 64), nn.ReLU(), nn.Linear(64, 5))
    x, y = data(n=32, shape=(3, 8, 8))
    eps = torch.full((32,), 8 / 255)
    steps = torch.tensor([2] + [5] * 31)
    attack = ATTACKS.build({"name": "dra", "p": 1 / 3, "steps": None, "bn": bn})
    together = attack(model, x, y, attack.resolve(plan(eps, steps)))
    alone = attack(model, x[:1], y[:1], attack.resolve(plan(eps[:1], steps[:1])))
    moved = int(((together.x_adv[:1] != x[:1]) != (alone.x_adv != x[:1])).sum())
    assert moved == 0, f"{moved} coordinates kept in one case and reset in the other"
    torch.testing.assert_close(together.x_adv[:1], alone.x_adv, rtol=0, atol=1e-6)
    ref, _, _ = reference_dra(model, x[:1], y[:1], eps[:1], 2, 1 / 3)
    torch.testing.assert_close(alone.x_adv, ref, rtol=0, atol=1e-6)


def small_bn_model() -> nn.Module:
    spec = DataSpec("t", 5, 3, (8, 8), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    model = build_model({"name": "small_cnn", "width": 4}, spec)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 3, 8, 8))
    return model


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_mode_flags_grads_and_bn_statistics_untouched(mode):
    model = small_bn_model().train(mode == "train")
    model.head.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    x, y = data(n=6, shape=(3, 8, 8))
    attack = ATTACKS.build({"name": "dra", "p": 1 / 3, "steps": 3})
    res = attack(model, x, y, plan(2 / 255))
    assert (res.x_adv != x).any()
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_attack_config_and_random_start_resolution():
    with pytest.raises(ConfigError) as err:
        ATTACKS.build({"name": "dra", "p": 1.5})
    assert err.value.field == "attack.p"
    with pytest.raises(ConfigError) as err:
        ATTACKS.build({"name": "dra", "steps": 0})
    assert err.value.field == "attack.steps"
    attack = ATTACKS.build({"name": "dra"})
    assert attack.resolve(plan(1.0)).random_start == "none"  # Algorithm 1 starts at x
    assert attack.resolve(plan(1.0, random_start="normal")).random_start == "normal"  # TRADES
    forced = ATTACKS.build({"name": "dra", "random_start": "none"})
    assert forced.resolve(plan(1.0, random_start="normal")).random_start == "none"


def test_trades_kl_needs_the_start_and_gets_one_inside_the_budget():
    model = Linear(48, 5)
    x, y = data()
    ref = model(x).detach()
    xg = x.clone().requires_grad_(True)
    kl_at_x = kl_to_ref(model(xg), ref).sum()
    (g,) = torch.autograd.grad(kl_at_x, xg)
    assert g.abs().max() < 1e-5 * input_grad(model, x, y).abs().max()  # KL is flat at x
    kl = plan(1 / 255, loss="kl", ref_logits=ref, random_start="normal")
    moved = dra(model, x, y, kl, p=1 / 3, steps=5, generator=torch.Generator().manual_seed(0),
                final_eval=True)
    delta = moved.x_adv - x
    assert (lp(delta, "l1") > 0.5 * 48 / 255).all()
    assert (lp(delta, "l1") <= 48 / 255 * (1 + 1e-5)).all()
    assert (moved.loss > 1e-6).all()  # the KL it maximises is no longer zero


def test_p_zero_returns_clean_images_without_passes():
    model = Linear(48, 5)
    x, y = data()
    with count_passes(model) as c:
        res = dra(model, x, y, plan(2 / 255), p=0.0, steps=5)
    assert torch.equal(res.x_adv, x) and c.forward_rows == 0


# --------------------------------------------------------------------------------------
# strategy, objective, clean-only tail


def ctx(epochs: int = 60, shape=(3, 8, 8)) -> RunContext:
    return RunContext(num_train=64, num_classes=5, input_shape=shape, epochs=epochs,
                      batches_per_epoch=1, device=torch.device("cpu"), seed=0)


def batch_at(model, x, y, epoch: int) -> Batch:
    return Batch(model, x, y, torch.arange(x.shape[0]), StepInfo(epoch, 0, epoch, 0.01))


def test_schedule_values_per_epoch_with_the_clean_tail():
    s = STRATEGIES.build({"name": "dra_schedule"}, ctx=ctx(60))
    model = Linear(192, 5)
    x, y = data(shape=(3, 8, 8))
    eps = [s.plan(batch_at(model, x, y, e)).eps for e in range(60)]
    steps = [s.plan(batch_at(model, x, y, e)).steps for e in range(60)]
    assert eps[0] == pytest.approx(2 / 255) and eps[49] == pytest.approx(0.5 / 255)
    assert eps[1] == pytest.approx((2 - 1.5 / 49) / 255)
    assert all(a > b for a, b in zip(eps[:49], eps[1:50], strict=True))  # strictly linear decay
    assert all(math.isclose(eps[e + 1] - eps[e], eps[1] - eps[0], rel_tol=1e-9) for e in range(48))
    assert eps[50:] == [0.0] * 10 and steps[50:] == [0] * 10 and steps[:50] == [1] * 50
    assert s.end_epoch(55) == {"mean_eps": 0.0, "clean_only": 1.0}
    assert s.end_epoch(0)["clean_only"] == 0.0
    short = STRATEGIES.build({"name": "dra_schedule", "eps_start": 0.1, "eps_end": 0.1,
                              "decay_epochs": 1, "clean_epochs": 0}, ctx=ctx(3))
    assert [short.eps_at(e) for e in range(3)] == [0.1, 0.1, 0.1]
    with pytest.raises(ConfigError) as err:
        STRATEGIES.build({"name": "dra_schedule"}, ctx=ctx(6))
    assert err.value.field == "strategy.decay_epochs" and "6 epochs" in err.value.message


def one_step(model, strategy, objective, attack, x, y, epoch):
    b = batch_at(model, x, y, epoch)
    p = attack.resolve(objective.prepare(b, strategy.plan(b)), wish=objective.random_start)
    res = attack(model, x, y, p)
    model.train()
    loss, _ = objective.loss(model, b, res.x_adv, p)
    loss.mean().backward()
    return res


def test_clean_tail_makes_no_attack_passes_and_trains_on_clean_once():
    c = ctx(4)
    model = small_bn_model()
    x, y = data(n=8, shape=(3, 8, 8), lo=0.0, hi=1.0)
    strategy = STRATEGIES.build({"name": "dra_schedule", "decay_epochs": 3, "clean_epochs": 1}, ctx=c)
    objective = OBJECTIVES.build({"name": "replay"}, ctx=c)
    attack = ATTACKS.build({"name": "dra", "steps": 5})
    with count_passes(model) as attacked:
        one_step(model, strategy, objective, attack, x, y, epoch=2)
    with count_passes(model) as tail:
        res = one_step(model, strategy, objective, attack, x, y, epoch=3)
    assert torch.equal(res.x_adv, x)
    assert tail.per_batch(8) == (1.0, 1.0)  # the objective's clean pass only
    assert attacked.per_batch(8) == (5.0 + 2.0, 5.0 + 2.0)  # T attack steps + clean and DRA rows


def test_replay_loss_is_clean_plus_adversarial_and_clean_once_when_unchanged():
    model = Linear(48, 5)
    x, y = data()
    obj = OBJECTIVES.build({"name": "replay", "beta": 0.5}, ctx=ctx(1, (3, 4, 4)))
    x_adv = dra(model, x, y, plan(1 / 255), p=1 / 3, steps=3).x_adv
    x_adv[:3] = x[:3]  # three samples were not attacked
    b = batch_at(model, x, y, 0)
    with count_passes(model) as c:
        loss, logits = obj.loss(model, b, x_adv, plan(1 / 255))
    with torch.no_grad():
        ce_x = F.cross_entropy(model(x), y, reduction="none")
        ce_adv = F.cross_entropy(model(x_adv), y, reduction="none")
    expected = torch.cat([ce_x[:3], ce_x[3:] + 0.5 * ce_adv[3:]])
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits, model(x_adv).detach())
    assert c.forward_rows == 8 + 5
    with count_passes(model) as c:
        loss, _ = obj.loss(model, b, x.clone(), plan(0.0))
    torch.testing.assert_close(loss, ce_x)
    assert c.forward_rows == 8


# --------------------------------------------------------------------------------------
# init_from, presets, models


@pytest.fixture(scope="module")
def phase1(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phase1")
    train(build_config("standard", [*DIGITS, "epochs=1"]), out, preset="standard", **QUIET)
    return out


def test_init_from_loads_weights_and_starts_a_fresh_optimizer(phase1, tmp_path):
    assert checkpoint.load_state(phase1 / "checkpoints" / "last")["optimizer"]["state"]  # had momentum
    cfg = build_config("dra-finetune", [*DIGITS, "epochs=2", "strategy.decay_epochs=1",
                                        "strategy.clean_epochs=1", f"init_from={phase1}"])
    run = setup(cfg, tmp_path / "ft")
    want = checkpoint.load_weights(phase1 / "checkpoints" / "best")
    got = run.model.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert run.optimizer.state_dict()["state"] == {} and run.start_epoch == 0
    assert run.optimizer.param_groups[0]["weight_decay"] == 2e-4
    fresh = setup(build_config("dra-finetune", [*DIGITS, "epochs=2", "strategy.decay_epochs=1",
                                                "strategy.clean_epochs=1", "init_from=null"]),
                  tmp_path / "scratch")
    assert not all(torch.equal(want[k], v) for k, v in fresh.model.state_dict().items()
                   if k in want and v.dtype.is_floating_point)


def test_fine_tuning_presets_require_init_from(tmp_path, capsys):
    for preset in ("dra-finetune", "dra-finetune-mnist"):
        with pytest.raises(ConfigError) as err:
            setup(build_config(preset, list(DIGITS)), tmp_path)
        assert err.value.field == "init_from"
    code = main(["train", "dra-finetune", *DIGITS, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: init_from:") and len(err.splitlines()) == 1


def test_presets_resolve_with_the_paper_settings():
    ft = build_config("dra-finetune")
    assert (ft.epochs, ft.data.batch_size, ft.optim.momentum, ft.optim.weight_decay) == (60, 128, 0.9, 2e-4)
    assert ft.model["name"] == "resnet18" and ft.objective["name"] == "replay"
    assert ft.attack["p"] == pytest.approx(1 / 3) and ft.attack["steps"] == 5
    assert ft.strategy["eps_start"] == pytest.approx(2 / 255)
    assert ft.strategy["eps_end"] == pytest.approx(0.5 / 255)
    assert (ft.strategy["decay_epochs"], ft.strategy["clean_epochs"]) == (50, 10)
    mn = build_config("dra-finetune-mnist")
    assert (mn.epochs, mn.attack["steps"], mn.strategy["eps"]) == (50, 20, 0.1)
    assert mn.attack["p"] == pytest.approx(2 / 3) and mn.model["name"] == "cnn2c2f"
    std = build_config("standard")
    assert std.strategy["name"] == "none" and std.model["name"] == "resnet18"
    assert build_config("pgd-at+dra").attack["name"] == "dra"
    assert build_config("pgd-at+dra").objective["name"] == "pgd_at"
    assert build_config("trades+dra").attack["name"] == "dra"
    assert build_config("trades+dra").objective["name"] == "trades"
    small = build_config("trades-small")
    assert small.objective == {"name": "trades", "beta": 0.05}


def test_cnn2c2f_is_tradess_mnist_net():
    mnist = DataSpec("mnist", 10, 1, (28, 28), (0.13,), (0.31,))
    model = build_model({"name": "cnn2c2f"}, mnist)
    assert model.fc1.in_features == 320 and model.feature_dim == 50
    assert sum(p.numel() for p in model.parameters()) == 21840  # TRADES's Net
    assert model.conv1.padding == (0, 0)
    digits = build_model({"name": "cnn2c2f", "width": 4}, DataSpec("d", 10, 1, (8, 8), (0.3,), (0.4,)))
    assert digits(torch.rand(2, 1, 8, 8)).shape == (2, 10)


# --------------------------------------------------------------------------------------
# calibration


def labelled_by_model(model, n=200, shape=(3, 4, 4), seed=1):
    x, _ = data(n=n, shape=shape, lo=0.1, hi=0.9, seed=seed)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


def test_bisect_eps_finds_the_target_of_a_monotone_function():
    found = bisect_eps(lambda e: 1.0 - e, 0.3, 0.0, 1.0, tol=1e-3, max_iter=30)
    assert found["matched"] and found["eps"] == pytest.approx(0.7, abs=2e-3)
    never = bisect_eps(lambda e: 0.9, 0.3, 0.0, 1.0, tol=1e-3, max_iter=30)
    assert not never["bracketed"] and not never["matched"]


def test_calibration_finds_the_pgd_eps_with_the_same_accuracy():
    model = Linear(48, 5, seed=2)
    x, y = labelled_by_model(model)
    res = calibrate_dra(model, x, y, dra_eps=4 / 255, p=1 / 3, steps=5, tol=0.02, max_iter=20)
    assert res["clean_acc"] == 1.0
    assert 0.1 < res["dra"]["acc"] < 0.9  # a non-trivial target
    assert res["matched"] and abs(res["pgd"]["acc"] - res["dra"]["acc"]) <= 0.02
    eps = res["pgd"]["eps"]
    again = attack_correct(model, x, y, "pgd-20", eps=eps, step_size=eps / 20, seed=0)
    assert again.float().mean().item() == pytest.approx(res["pgd"]["acc"])
    direct = dra_correct(model, x, y, eps=4 / 255, p=1 / 3, steps=5).float().mean().item()
    assert direct == pytest.approx(res["dra"]["acc"])
    both = calibrate_dra(model, x, y, dra_eps=None, target_acc=0.5, tol=0.03, max_iter=20)
    assert both["matched"] and abs(both["dra"]["acc"] - 0.5) <= 0.03
    assert abs(both["pgd"]["acc"] - 0.5) <= 0.03 and both["pgd_per_dra"] > 0


# --------------------------------------------------------------------------------------
# end to end on digits


@pytest.mark.slow
def test_dra_finetune_and_pgd_at_dra_train_on_digits(phase1, tmp_path):
    ft = tmp_path / "ft"
    over = [*DIGITS, "epochs=2", "strategy.decay_epochs=1", "strategy.clean_epochs=1",
            "strategy.eps_start=0.1", "strategy.eps_end=0.1", f"init_from={phase1}"]
    s = train(build_config("dra-finetune", over), ft, preset="dra-finetune", **QUIET)
    assert s["finished"] and 0 <= s["last"]["robust_acc"] <= s["last"]["clean_acc"] <= 1
    rows = (ft / "strategy.csv").read_text().strip().splitlines()
    assert rows[0] == "epoch,mean_eps,clean_only" and rows[2].endswith(",0.0,1.0")
    losses = [float(r.split(",")[2]) for r in (ft / "metrics.csv").read_text().splitlines()[1:]]
    assert losses[0] > losses[1]  # CE(x) + CE(x_dra) while attacking, CE(x) alone in the tail
    at = train(build_config("pgd-at+dra", [*DIGITS, "epochs=1", "strategy.eps=0.1"]),
               tmp_path / "at", preset="pgd-at+dra", **QUIET)
    assert at["finished"] and math.isfinite(at["last"]["clean_acc"])
    code = main(["calibrate-dra", str(ft), "--checkpoint", "last", "--n", "48", "--dra-eps", "0.1",
                 "--tol", "0.05", "--max-pgd-eps", "0.5", "--out", str(tmp_path / "cal.json")])
    assert code == 0
    cal = json.loads((tmp_path / "cal.json").read_text())
    assert cal["n_examples"] == 48 and cal["dra"]["eps"] == 0.1 and "history" in cal["pgd"]
    assert 0 <= cal["pgd"]["acc"] <= cal["clean_acc"]
