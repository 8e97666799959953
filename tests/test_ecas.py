"""ECAS: budget schedules, Algorithm 1's assignment rule, draws, per-sample budgets in the real
attack, calibration, state round trips, and every objective (with and without AWP)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from adaptrain import checkpoint
from adaptrain import train as train_mod
from adaptrain.attacks import ATTACKS
from adaptrain.config import build_config, preset_names
from adaptrain.context import Batch, Cached, CacheKey, RunContext, StepInfo
from adaptrain.data import load_arrays
from adaptrain.errors import ConfigError
from adaptrain.models import build_model
from adaptrain.objectives import OBJECTIVES
from adaptrain.profiling import count_passes
from adaptrain.strategies import STRATEGIES
from adaptrain.strategies.budget_schedules import SCHEDULES, scheduled_budget
from adaptrain.strategies.ecas import ECAS, Schedule, default_thresholds, entropy
from adaptrain.threat import norm as lp
from adaptrain.train import train
from training_helpers import QUIET, assert_same_last_weights, interrupted_and_resumed

TINY = ("data.subset=128", "model.width=4", "eval.n=32")
CPU = torch.device("cpu")
DIGITS = load_arrays("digits", None)


def ctx(dataset: str = "cifar10", num_classes: int = 10, epochs: int = 20, seed: int = 0) -> RunContext:
    return RunContext(num_train=1000, num_classes=num_classes, input_shape=(3, 4, 4), epochs=epochs,
                      batches_per_epoch=4, device=CPU, seed=seed, dataset=dataset)


def ecas(context: RunContext | None = None, **fields) -> ECAS:
    return STRATEGIES.build({"name": "ecas", **fields}, ctx=context or ctx())


def logit_batch(logits: torch.Tensor, epoch: int = 0, i: int = 0) -> Batch:
    """A batch whose clean logits are given (no model needed)."""
    B = logits.shape[0]
    return Batch(model=None, x=torch.zeros(B, 1, 1, 1), y=torch.zeros(B, dtype=torch.int64),
                 idx=torch.arange(B), step=StepInfo(epoch, i, 0, 0.1),
                 cache={CacheKey(Cached.CLEAN_LOGITS): logits})


def budgets_of(strategy: ECAS, batch: Batch) -> torch.Tensor:
    """The per-sample budgets of one plan, in units (integers)."""
    plan = strategy.plan(batch)
    return torch.round(plan.eps / strategy.eps_unit).to(torch.int64)


def peaked(a: float, n: int, c: int = 10) -> torch.Tensor:
    """n rows of logits [a, 0, ..., 0]."""
    row = torch.zeros(c)
    row[0] = a
    return row.repeat(n, 1)


def exact_entropy(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits.double(), dim=1)
    return -(p * p.log()).sum(dim=1)


# ---------------------------------------------------------------------- schedules


def test_schedule_names_match_the_config_literal():
    assert Schedule.__args__ == SCHEDULES


def test_cyclic_walks_the_list_one_step_per_epoch_and_wraps():
    got = [scheduled_budget("cyclic", list(range(3, 13)), epoch=e, batch_count=0, epochs=110)
           for e in range(23)]
    assert got == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 3, 4, 5]
    # the ECAS-TRADES list 5..9: cycle of five epochs
    got = [scheduled_budget("cyclic", [5, 6, 7, 8, 9], epoch=e, batch_count=99, epochs=110)
           for e in range(12)]
    assert got == [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]


def test_linear_climbs_in_equal_stairs_and_ends_at_eps_max():
    got = [scheduled_budget("linear", list(range(3, 13)), epoch=e, batch_count=0, epochs=20)
           for e in range(21)]
    assert got == [3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 12]
    got = [scheduled_budget("linear", [3, 4, 5], epoch=e, batch_count=0, epochs=7) for e in range(7)]
    assert got == [3, 3, 3, 4, 4, 5, 5]


def test_fixed_and_cyclic_batch_through_the_strategy_across_epoch_boundaries():
    flat = peaked(2.0, 4)  # mid entropy: keeps the scheduled budget even with entropy on
    s = ecas(eps_min=3, eps_max=7, schedule="cyclic-batch", entropy=False)
    seen = []
    for epoch in range(3):
        s.start_epoch(epoch)
        for i in range(3):  # three batches per epoch: the walk continues over epoch ends
            b = budgets_of(s, logit_batch(flat, epoch, i))
            assert (b == b[0]).all()
            seen.append(int(b[0]))
    assert seen == [3, 4, 5, 6, 7, 3, 4, 5, 6]
    f = ecas(schedule="fixed", eps_fixed=8, entropy=False)
    assert all((budgets_of(f, logit_batch(flat, e)) == 8).all() for e in range(5))
    plan = f.plan(logit_batch(flat, 0))
    assert torch.allclose(plan.eps, torch.full((4,), 8 / 255))
    assert torch.allclose(plan.step_size, torch.full((4,), 2 / 255))  # the PGD-AT baseline


@pytest.mark.parametrize("schedule", ["cyclic", "cyclic-batch", "linear"])
def test_resume_in_the_middle_of_a_cycle_continues_exactly(tmp_path, schedule):
    g = torch.Generator().manual_seed(0)
    # entropies spread over all three regions, so the draws are exercised too
    logits = [torch.randn(16, 10, generator=g) * torch.linspace(0, 6, 16)[:, None] for _ in range(3)]

    def run(strategy: ECAS, epochs: range) -> list[torch.Tensor]:
        out = []
        for epoch in epochs:
            strategy.start_epoch(epoch)
            for i, lg in enumerate(logits):
                out.append(budgets_of(strategy, logit_batch(lg, epoch, i)))
            strategy.end_epoch(epoch)
        return out

    fields = {"schedule": schedule, "eps_min": 3, "eps_max": 12}
    whole = run(ecas(**fields), range(0, 9))
    first = ecas(**fields)
    part = run(first, range(0, 4))  # 12 batches: mid-cycle for every schedule
    checkpoint.save(tmp_path / "last", nn.Linear(1, 1), {"strategy": first.state_dict()})
    second = ecas(**fields)
    second.load_state_dict(checkpoint.load_state(tmp_path / "last")["strategy"])
    part += run(second, range(4, 9))
    assert len(part) == len(whole)
    assert all(torch.equal(a, b) for a, b in zip(whole, part, strict=True))
    # the cut must matter: a fresh strategy started at epoch 4 would not continue the same way
    fresh = run(ecas(**fields), range(4, 9))
    assert not all(torch.equal(a, b) for a, b in zip(whole[12:], fresh, strict=True))


# ---------------------------------------------------------------------- Algorithm 1


def test_default_thresholds_per_data_set():
    assert default_thresholds("cifar10", 10) == (2.274, 1.3)
    assert default_thresholds("cifar100", 100) == (4.582, 3.35)
    hi, lo = default_thresholds("imagefolder", 200)
    assert hi == pytest.approx(0.988 * math.log(200)) and lo == pytest.approx(0.565 * math.log(200))
    s = ecas(ctx("digits", 10))
    assert s.h_high == pytest.approx(0.988 * math.log(10)) and s.h_low == pytest.approx(0.565 * math.log(10))


def test_entropy_matches_the_definition():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(32, 7, generator=g) * 3
    assert torch.allclose(entropy(logits).double(), exact_entropy(logits), atol=1e-5)


def test_assignment_rule_shrinks_grows_or_keeps_the_scheduled_budget():
    # logits [a, 0, ..., 0] over 10 classes: a = 0 is uniform (H = ln 10 = 2.303 > 2.274),
    # a = 2 gives H = 1.89 (between the thresholds), a = 8 gives H = 0.03 (< 1.3)
    high, mid, low = peaked(0.0, 5), peaked(2.0, 5), peaked(8.0, 5)
    h = exact_entropy(torch.cat([high, mid, low]))
    assert (h[:5] > 2.274).all() and ((h[5:10] > 1.3) & (h[5:10] < 2.274)).all() and (h[10:] < 1.3).all()
    s = ecas(eps_min=3, eps_max=12)  # CIFAR-10 thresholds 2.274 / 1.3
    epoch = 4  # cyclic: scheduled budget 7
    b = budgets_of(s, logit_batch(torch.cat([high, mid, low]), epoch))
    assert (b[:5] == 3).all()  # uncertain samples shrink to the smallest budget
    assert (b[5:10] == 7).all()  # the others keep the cyclic budget
    assert set(b[10:].tolist()) <= {10, 11, 12}  # confident samples grow to one of the three largest
    row = s.end_epoch(epoch)
    assert row["eps_epoch"] == 7 and row["eps_share_3"] == pytest.approx(5 / 15)
    assert row["eps_share_7"] == pytest.approx(5 / 15)
    assert row["frac_up"] == pytest.approx(5 / 15) and row["frac_down"] == pytest.approx(5 / 15)
    assert row["frac_high_entropy"] == pytest.approx(5 / 15)
    assert row["frac_low_entropy"] == pytest.approx(5 / 15)
    assert row["mean_entropy"] == pytest.approx(float(h.mean()), abs=1e-5)


def test_entropy_off_ignores_the_logits():
    s = ecas(entropy=False)
    b = budgets_of(s, logit_batch(torch.cat([peaked(0.0, 3), peaked(9.0, 3)]), epoch=2))
    assert (b == 5).all()
    row = s.end_epoch(2)
    assert row["frac_up"] == row["frac_down"] == 0 and "mean_entropy" not in row


def test_per_sample_draw_covers_exactly_the_three_largest():
    s = ecas(eps_min=3, eps_max=12, draw="sample")
    b = budgets_of(s, logit_batch(peaked(9.0, 3000), epoch=0))
    values, counts = torch.unique(b, return_counts=True)
    assert values.tolist() == [10, 11, 12]
    assert (counts > 800).all()  # roughly uniform (expected 1000 each)
    s2 = ecas(eps_min=5, eps_max=9, n_large=2)
    assert torch.unique(budgets_of(s2, logit_batch(peaked(9.0, 500)))).tolist() == [8, 9]


def test_batch_draw_gives_one_budget_per_batch_and_all_three_over_batches():
    s = ecas(eps_min=6, eps_max=15, draw="batch")
    per_batch = []
    for i in range(60):
        b = budgets_of(s, logit_batch(peaked(9.0, 8), 0, i))
        assert (b == b[0]).all()
        per_batch.append(int(b[0]))
    assert set(per_batch) == {13, 14, 15}


def test_same_seed_same_budgets_other_seed_other_budgets():
    lg = peaked(9.0, 200)
    a = budgets_of(ecas(ctx(seed=3)), logit_batch(lg))
    b = budgets_of(ecas(ctx(seed=3)), logit_batch(lg))
    c = budgets_of(ecas(ctx(seed=4)), logit_batch(lg))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("rule", ["ratio", "epoch"])
def test_step_rules(rule):
    s = ecas(step_rule=rule)
    lg = torch.cat([peaked(0.0, 2), peaked(2.0, 2), peaked(9.0, 2)])
    plan = s.plan(logit_batch(lg, epoch=3))  # scheduled budget 6
    if rule == "ratio":
        assert torch.allclose(plan.step_size, plan.eps / 4)
    else:
        assert plan.step_size == pytest.approx(2 * 6 / 255 / 10)
    assert plan.steps == 10


# ---------------------------------------------------------------------- the real attack


class Linear(nn.Module):
    def __init__(self, d: int, c: int, scale: torch.Tensor) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(d, c)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(c, d, generator=g))
            self.fc.bias.zero_()
        self.register_buffer("scale", scale)  # per-row logit scale: spreads the entropies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x.flatten(1))
        return z * self.scale[: z.shape[0], None] if z.shape[0] == self.scale.shape[0] else z


@pytest.mark.parametrize("objective", ["pgd_at", "trades", "mart"])
def test_each_sample_is_attacked_within_its_own_budget(objective):
    B, d = 24, 48
    g = torch.Generator().manual_seed(2)
    x = 0.3 + 0.4 * torch.rand(B, 3, 4, 4, generator=g)  # away from the box edges
    y = torch.randint(0, 10, (B,), generator=g)
    model = Linear(d, 10, torch.linspace(0.05, 0.5, B))
    with torch.no_grad():
        h = entropy(model(x))
    hi, lo = float(h.quantile(0.7)), float(h.quantile(0.3))
    s = ecas(eps_min=3, eps_max=12, h_high=hi, h_low=lo)
    batch = Batch(model, x, y, torch.arange(B), StepInfo(5, 0, 0, 0.1))  # scheduled budget 8
    obj = OBJECTIVES.build({"name": objective}, ctx=ctx())
    plan = obj.prepare(batch, s.plan(batch))
    eps = plan.eps
    assert {3, 8}.issubset(set(torch.round(eps * 255).long().tolist()))
    assert (torch.round(eps * 255).long() >= 10).any()
    res = ATTACKS.build({"name": "pgd"})(model, x, y, plan, generator=torch.Generator().manual_seed(0))
    linf = lp(res.x_adv - x, "linf")
    assert (linf <= eps + 1e-6).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    if objective == "pgd_at":
        # CE of a linear model has a constant gradient sign: 10 steps of eps_i / 4 reach eps_i
        assert torch.allclose(linf, eps, atol=1e-6)


def test_plan_leaves_the_model_as_it_found_it():
    model, batch = digits_model_and_batch(16)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ecas(ctx("digits")).plan(batch)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats too
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------------- calibration


def digits_model_and_batch(n: int = 32):
    """An untrained small CNN for digits and a batch of n training digits."""
    torch.manual_seed(0)
    model = build_model({"name": "small_cnn", "width": 4}, DIGITS.spec)
    x = DIGITS.x_train[:n].float() / 255
    return model, Batch(model, x, DIGITS.y_train[:n], torch.arange(n), StepInfo(0, 0, 0, 0.1))


def test_calibrate_measures_both_thresholds_once_and_keeps_them_in_the_state(tmp_path):
    model, batch = digits_model_and_batch()
    trained = build_model({"name": "small_cnn", "width": 4}, DIGITS.spec)
    trained.load_state_dict(model.state_dict())
    with torch.no_grad():
        trained.head.weight.mul_(40.0)  # a confident ("trained") model: low clean entropy
    checkpoint.save(tmp_path / "ref", trained)
    s = ecas(ctx("digits"), thresholds="calibrate", calibrate_from=str(tmp_path / "ref"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s.plan(batch)
    with torch.no_grad():
        model.eval()
        want_high = float(exact_entropy(model(batch.x)).mean())
        trained.eval()
        want_low = float(exact_entropy(trained(batch.x)).mean())
    model.train()
    assert s.h_high == pytest.approx(want_high, abs=1e-5)
    assert s.h_low == pytest.approx(want_low, abs=1e-5) and s.h_low < s.h_high
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # measured once: later batches (even with the reference gone) keep the values
    state = s.state_dict()
    (tmp_path / "ref" / checkpoint.MODEL_FILE).unlink()
    s.plan(Batch(model, batch.x.flip(0), batch.y, batch.idx, StepInfo(0, 1, 1, 0.1)))
    assert (s.h_high, s.h_low) == (pytest.approx(want_high, abs=1e-5), pytest.approx(want_low, abs=1e-5))
    checkpoint.save(tmp_path / "ref", trained)
    resumed = ecas(ctx("digits"), thresholds="calibrate", calibrate_from=str(tmp_path / "ref"))
    resumed.load_state_dict(state)
    assert resumed.calibrated and resumed.h_high == s.h_high and resumed.h_low == s.h_low


def test_calibrate_refuses_a_reference_that_is_not_more_confident(tmp_path):
    model, batch = digits_model_and_batch()
    flat = build_model({"name": "small_cnn", "width": 4}, DIGITS.spec)
    with torch.no_grad():
        flat.head.weight.zero_()
        flat.head.bias.zero_()  # uniform predictions: maximal entropy
    checkpoint.save(tmp_path / "ref", flat)
    s = ecas(ctx("digits"), thresholds="calibrate", calibrate_from=str(tmp_path / "ref"))
    with pytest.raises(ConfigError) as err:
        s.plan(batch)
    assert err.value.field == "strategy.calibrate_from" and "not below" in err.value.message


@pytest.mark.parametrize(("fields", "field"), [
    ({"eps_min": 5, "eps_max": 4}, "strategy.eps_max"),
    ({"eps_min": -1}, "strategy.eps_min"),
    ({"eps_max": 300}, "strategy.eps_max"),
    ({"schedule": "fixed", "eps_fixed": 20}, "strategy.eps_fixed"),
    ({"n_large": 11}, "strategy.n_large"),
    ({"h_high": 1.0, "h_low": 2.0}, "strategy.h_low"),
    ({"thresholds": "calibrate"}, "strategy.calibrate_from"),
    ({"thresholds": "calibrate", "calibrate_from": "/nonexistent/run"}, "strategy.calibrate_from"),
    ({"thresholds": "calibrate", "calibrate_from": "x", "h_high": 2.0}, "strategy.h_high"),
    ({"calibrate_from": "/some/run"}, "strategy.calibrate_from"),
    ({"steps": 0}, "strategy.steps"),
    ({"schedule": "sawtooth"}, "strategy.schedule"),
])
def test_bad_fields_name_themselves(fields, field):
    with pytest.raises(ConfigError) as err:
        ecas(**fields)
    assert err.value.field == field


# ---------------------------------------------------------------------- in the training loop


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize(("objective", "gamma"), [
    ("pgd_at", 0.0), ("trades", 0.0), ("mart", 0.0), ("pgd_at", 0.01), ("trades", 0.01), ("mart", 0.01),
])
def test_one_tiny_epoch_with_every_objective_and_awp(tmp_path, objective, gamma):
    cfg = build_config("quickstart", ["epochs=1", *TINY, "strategy.name=ecas", f"objective.name={objective}",
                                      f"awp.gamma={gamma}", "strategy.h_high=2.2", "strategy.h_low=2.0"])
    summary = train(cfg, tmp_path, **QUIET)
    assert summary["finished"] and summary["last"]["robust_acc"] <= summary["last"]["clean_acc"]
    (row,) = read_csv(tmp_path / "strategy.csv")
    shares = {k: float(v) for k, v in row.items() if k.startswith("eps_share_")}
    assert sorted(shares) == sorted(f"eps_share_{k}" for k in range(3, 13))
    assert sum(shares.values()) == pytest.approx(1.0)
    assert float(row["eps_epoch"]) == 3 and math.isfinite(float(row["mean_entropy"]))
    assert float(row["frac_down"]) == 0.0  # scheduled 3 is already the smallest budget


@pytest.mark.parametrize(("objective", "extra"), [("pgd_at", 1), ("mart", 1), ("trades", 0)])
def test_ecas_costs_one_clean_forward_per_batch_and_none_with_trades(tmp_path, objective, extra):
    rows = {}
    for name in ("fixed", "ecas"):
        cfg = build_config("quickstart", ["epochs=1", *TINY, f"strategy.name={name}",
                                          f"objective.name={objective}"])
        run = train_mod.setup(cfg, tmp_path / name)
        with count_passes(run.model) as c:
            train_mod.train_epoch(run, 0, False)
        rows[name] = (c.forward_rows, c.backward_rows)
    n = 128  # data.subset images, one pass over them
    assert rows["ecas"][0] - rows["fixed"][0] == extra * n
    assert rows["ecas"][1] == rows["fixed"][1]


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch):
    over = ["epochs=4", *TINY, "data.batch_size=32", "strategy.name=ecas", "strategy.eps_min=2",
            "strategy.eps_max=8", "strategy.schedule=cyclic-batch",
            # every entropy is below ln 10 < 2.31: all budgets are drawn from the generator,
            # while eps_epoch records the cyclic-batch walk
            "strategy.h_high=2.31", "strategy.h_low=2.31"]
    interrupted_and_resumed(tmp_path, lambda: build_config("quickstart", over), monkeypatch, after=2)
    assert_same_last_weights(tmp_path / "full", tmp_path / "cut")
    full, cut = read_csv(tmp_path / "full" / "strategy.csv"), read_csv(tmp_path / "cut" / "strategy.csv")
    assert full == cut and len(full) == 4
    # 4 batches per epoch over a list of 7 budgets: the epochs' mean scheduled budgets differ
    assert len({r["eps_epoch"] for r in full}) > 1
    assert all(float(r["frac_low_entropy"]) == 1.0 for r in full)
    assert all(float(r[f"eps_share_{k}"]) > 0 for r in full for k in (6, 7, 8))


# ---------------------------------------------------------------------- presets


ECAS_PRESETS = ["ecas-pgd-at", "ecas-trades", "ecas-awp", "ecas-pgd-at-c100", "ecas-trades-c100",
                "ecas-awp-c100"]
ABLATION = ["ecas-ablation-fixed", "ecas-ablation-linear", "ecas-ablation-cyclic-batch",
            "ecas-ablation-cyclic", "ecas-ablation-cyclic-entropy"]


def test_presets_exist_with_the_papers_ranges():
    names = set(preset_names())
    assert set(ECAS_PRESETS + ABLATION) <= names
    ranges = {"ecas-pgd-at": (3, 12), "ecas-trades": (5, 9), "ecas-awp": (6, 15)}
    for name, (lo, hi) in ranges.items():
        for suffix, data in (("", "cifar10"), ("-c100", "cifar100")):
            cfg = build_config(name + suffix)
            assert cfg.data.name == data and cfg.strategy["name"] == "ecas"
            assert (cfg.strategy["eps_min"], cfg.strategy["eps_max"]) == (lo, hi)
            assert cfg.strategy["schedule"] == "cyclic" and cfg.strategy["entropy"] is True
            assert (cfg.awp.gamma > 0) == (name == "ecas-awp")
    assert build_config("ecas-trades").objective["name"] == "trades"
    c100 = build_config("ecas-awp-c100").strategy
    assert (c100["h_high"], c100["h_low"]) == (4.582, 3.35)


def test_ablation_rows_differ_only_in_the_schedule_and_entropy_switch():
    cfgs = {n: build_config(n).to_dict() for n in ABLATION}
    for c in cfgs.values():
        c.pop("description")
    base = cfgs["ecas-ablation-cyclic-entropy"]
    switches = {n: (c["strategy"]["schedule"], c["strategy"]["entropy"]) for n, c in cfgs.items()}
    assert switches == {"ecas-ablation-fixed": ("fixed", False), "ecas-ablation-linear": ("linear", False),
                        "ecas-ablation-cyclic-batch": ("cyclic-batch", False),
                        "ecas-ablation-cyclic": ("cyclic", False),
                        "ecas-ablation-cyclic-entropy": ("cyclic", True)}
    def without_switch(c: dict) -> dict:
        strategy = {k: v for k, v in c["strategy"].items() if k not in ("schedule", "entropy")}
        return {**c, "strategy": strategy}

    assert all(without_switch(c) == without_switch(base) for c in cfgs.values())
