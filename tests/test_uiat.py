"""(U)IAT: inverse attacks (instance-wise and class-universal), the objective's momentum and
one-off schedule, the commit contract, checkpointed state, and tiny end-to-end runs."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptrain import checkpoint
from adaptrain.attacks import AttackPlan, pgd
from adaptrain.attacks.engine import frozen_model
from adaptrain.attacks.inverse import instance_inverse, inverse_loss, universal_inverse
from adaptrain.config import build_config
from adaptrain.context import Batch, RunContext, StepInfo
from adaptrain.data import load_arrays
from adaptrain.errors import ConfigError
from adaptrain.models import build_model
from adaptrain.models.base import ImageClassifier
from adaptrain.objectives import OBJECTIVES
from adaptrain.objectives.uiat import kl_from_target
from adaptrain.profiling import count_passes
from adaptrain.train import train
from training_helpers import QUIET, assert_same_last_weights, interrupted_and_resumed

EPS_INV, ALPHA_INV = 4 / 255, 1 / 255

# ------------------------------------------------------------------------------- helpers


class TinyNet(ImageClassifier):
    """BatchNorm-free: features = relu(linear(flatten)), so eval and train mode agree."""

    def __init__(self, shape=(1, 4, 4), classes: int = 3, hidden: int = 6, seed: int = 0) -> None:
        super().__init__(mean=[0.5] * shape[0], std=[0.25] * shape[0])
        g = torch.Generator().manual_seed(seed)
        d = shape[0] * shape[1] * shape[2]
        self.body = nn.Linear(d, hidden)
        self.head = nn.Linear(hidden, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.feature_dim = hidden

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(z.flatten(1)))


class IdentityFeatures(ImageClassifier):
    """F(x) = normalised x; a zero head makes CE constant (log C) so only the regulariser moves."""

    def __init__(self, shape=(1, 4, 4), classes: int = 3) -> None:
        super().__init__(mean=[0.0] * shape[0], std=[1.0] * shape[0])
        d = shape[0] * shape[1] * shape[2]
        self.head = nn.Linear(d, classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        return z.flatten(1)


def make_ctx(num_train: int, classes: int = 3, shape=(1, 4, 4), epochs: int = 6,
             first_decay: int | None = 3, dataset: str = "digits") -> RunContext:
    return RunContext(num_train=num_train, num_classes=classes, input_shape=shape, epochs=epochs,
                      batches_per_epoch=2, device=torch.device("cpu"), seed=0, dataset=dataset,
                      first_decay_epoch=first_decay)


def make_batch(model: nn.Module, x, y, idx, epoch: int = 0) -> Batch:
    return Batch(model, x, y, idx, StepInfo(epoch, 0, 0, 0.1))


def synthetic(n: int = 12, shape=(1, 4, 4), classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g)
    y = torch.arange(n) % classes
    x_adv = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * 8 / 255).clamp(0, 1)
    return x, y, x_adv


def state_copy(obj) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in obj.state_dict().items()}


@pytest.fixture(scope="module")
def digits():
    arrays = load_arrays("digits", None)
    x = arrays.x_train.float() / 255
    return arrays.spec, x, arrays.y_train, arrays.x_test.float() / 255, arrays.y_test


@pytest.fixture(scope="module")
def trained(digits):
    """A small CNN trained (clean) for a few epochs on digits: accurate but not saturated."""
    spec, x, y, _, _ = digits
    torch.manual_seed(0)
    model = build_model({"name": "small_cnn", "width": 8}, spec)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(2):
        for rows in torch.randperm(x.shape[0], generator=g).split(128):
            opt.zero_grad()
            F.cross_entropy(model(x[rows]), y[rows]).backward()
            opt.step()
    model.eval()
    return model


def eval_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.features(x)


# ------------------------------------------------------------------------------- inverse attacks


def test_instance_inverse_lowers_the_loss_within_its_budget(trained, digits):
    _, x, y, _, _ = digits
    x, y = x[:256], y[:256]
    x_adv = pgd(trained, x, y, AttackPlan(eps=8 / 255, step_size=2 / 255, steps=5),
                generator=torch.Generator().manual_seed(0)).x_adv
    # beta = 0: plain CE descent
    res = instance_inverse(trained, x, y, loss_fn=inverse_loss(0.0), eps=EPS_INV,
                           step_size=ALPHA_INV, steps=5)
    ce_clean, ce_inv = eval_ce(trained, x, y), eval_ce(trained, res.x_inv, y)
    assert ce_inv.mean() < 0.9 * ce_clean.mean()
    assert (ce_inv <= ce_clean + 1e-6).float().mean() > 0.95
    assert torch.allclose(res.logits, trained(res.x_inv), atol=1e-5)
    # beta = 1: the full L_inv (Eq. 4) is what descends
    fc, fa = features(trained, x), features(trained, x_adv)
    loss_fn = inverse_loss(1.0, fc, fa)
    res = instance_inverse(trained, x, y, loss_fn=loss_fn, eps=EPS_INV, step_size=ALPHA_INV, steps=5)
    rows = torch.arange(x.shape[0])
    with torch.no_grad():
        before, _ = loss_fn(trained, x, y, rows)
        after, _ = loss_fn(trained, res.x_inv, y, rows)
    assert after.mean() < before.mean()
    assert eval_ce(trained, res.x_inv, y).mean() < ce_clean.mean()
    for r in (res,):
        assert (r.x_inv - x).abs().max() <= EPS_INV + 1e-6
        assert r.x_inv.min() >= 0 and r.x_inv.max() <= 1


def test_universal_perturbations_generalise_to_unseen_samples(trained, digits):
    spec, x, y, x_test, y_test = digits
    z = 0.001 * torch.randn((spec.num_classes, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    for rows in torch.randperm(x.shape[0], generator=g)[:640].split(64):
        z = universal_inverse(trained, x[rows], y[rows], z, loss_fn=inverse_loss(0.0),
                              eps=EPS_INV, step_size=ALPHA_INV).z
    assert z.abs().max() <= EPS_INV + 1e-7
    x_inv = (x_test + z[y_test]).clamp(0, 1)  # held-out samples: the shift is class-universal
    ce_clean, ce_inv = eval_ce(trained, x_test, y_test), eval_ce(trained, x_inv, y_test)
    assert ce_inv.mean() < 0.95 * ce_clean.mean()
    assert (ce_inv < ce_clean).float().mean() > 0.8


def test_only_classes_in_the_batch_move_and_z_stays_within_eps():
    model = TinyNet(classes=5).eval()
    x, _, _ = synthetic(10, classes=5)
    y = torch.tensor([1, 3, 1, 3, 3, 1, 1, 3, 3, 1])
    z = 0.001 * torch.randn((5, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    z0 = z.clone()
    res = universal_inverse(model, x, y, z, loss_fn=inverse_loss(0.0), eps=EPS_INV, step_size=ALPHA_INV)
    assert torch.equal(z, z0)  # the input is not modified in place
    for c in (0, 2, 4):
        assert torch.equal(res.z[c], z0[c])
    for c in (1, 3):
        assert not torch.equal(res.z[c], z0[c])
    for _ in range(10):
        res = universal_inverse(model, x, y, res.z, loss_fn=inverse_loss(0.0), eps=EPS_INV,
                                step_size=ALPHA_INV)
    assert res.z.abs().max() <= EPS_INV + 1e-7
    assert (res.z[[1, 3]].abs() >= EPS_INV - 1e-6).float().mean() > 0.5  # steps reach the bound
    assert torch.equal(res.z[[0, 2, 4]], z0[[0, 2, 4]])
    assert ((res.x_inv - x).abs() <= EPS_INV + 1e-6).all()


def test_universal_step_equals_a_per_class_loop_on_the_summed_loss():
    model = TinyNet(classes=4).eval()
    x, _, x_adv = synthetic(16, classes=4, seed=3)
    y = torch.tensor([0, 2, 2, 0, 3, 0, 2, 3, 0, 0, 2, 3, 3, 0, 2, 2])  # class 1 absent
    z = 0.001 * torch.randn((4, 1, 4, 4), generator=torch.Generator().manual_seed(5))
    fc, fa = features(model, x), features(model, x_adv)
    res = universal_inverse(model, x, y, z, loss_fn=inverse_loss(1.0, fc, fa), eps=EPS_INV,
                            step_size=ALPHA_INV)
    expected = z.clone()
    for c in (0, 2, 3):
        m = y == c
        zc = z[c].clone().requires_grad_(True)
        xc = (x[m] + zc).clamp(0, 1)
        feats = model.features(xc)
        loss = (F.cross_entropy(model.head(feats), y[m], reduction="sum")
                + ((feats - fc[m]).abs().sum(1) - (feats - fa[m]).abs().sum(1)).sum())
        (grad,) = torch.autograd.grad(loss, zc)
        expected[c] = (z[c] - ALPHA_INV * grad.sign()).clamp(-EPS_INV, EPS_INV)
    assert torch.allclose(res.z, expected, atol=1e-7)
    assert torch.allclose(res.x_inv, (x + z[y]).clamp(0, 1))  # x_inv uses z before the step


def test_feature_regulariser_rewards_moving_towards_clean_features():
    model = IdentityFeatures().eval()
    x, y, x_adv = synthetic(6)
    fc, fa = features(model, x), features(model, x_adv)
    loss_fn = inverse_loss(1.0, fc, fa)
    rows = torch.arange(6)
    gap = (fc - fa).abs().sum(1)
    values = []
    with torch.no_grad():
        for t in (0.0, 0.25, 0.5, 0.75, 1.0):  # x_adv -> x along a straight line
            loss, _ = loss_fn(model, x_adv + t * (x - x_adv), y, rows)
            values.append(loss)
    ce = torch.full((6,), torch.log(torch.tensor(3.0)).item())
    assert torch.allclose(values[0], ce + gap, atol=1e-5)  # at x_adv: +||F(x_adv) - F(x)||
    assert torch.allclose(values[-1], ce - gap, atol=1e-5)  # at x: -||F(x) - F(x_adv)||
    for a, b in zip(values, values[1:], strict=False):
        assert (b < a).all()
    mean_fn = inverse_loss(1.0, fc, fa, distance="mean")
    with torch.no_grad():
        assert torch.allclose(mean_fn(model, x, y, rows)[0], ce - gap / fc.shape[1], atol=1e-6)
    # descent from x moves the features further from F(x_adv): the sign of the step is right
    res = instance_inverse(model, x, y, loss_fn=loss_fn, eps=EPS_INV, step_size=ALPHA_INV, steps=3)
    assert ((features(model, res.x_inv) - fa).abs().sum(1) > gap).all()


@pytest.mark.parametrize("bn", ["eval", "batch"])
def test_inverse_attacks_leave_the_model_as_they_found_it(digits, bn):
    spec, x, y, _, _ = digits
    x, y = x[:32], y[:32]
    x_adv = (x + 8 / 255).clamp(0, 1)
    model = build_model({"name": "small_cnn", "width": 4}, spec).eval()
    fc, fa = features(model, x), features(model, x_adv)
    model.train()
    model.body[1].eval()  # a mixed-mode model: every module's own mode must come back
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    for p in model.parameters():
        p.grad = torch.randn_like(p) if p.requires_grad else None
    modes = [m.training for m in model.modules()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    flags = [p.requires_grad for p in model.parameters()]
    buffers = copy.deepcopy(model.state_dict())
    loss_fn = inverse_loss(1.0, fc, fa)
    instance_inverse(model, x, y, loss_fn=loss_fn, steps=3, bn=bn)
    universal_inverse(model, x, y, torch.zeros(10, 1, 8, 8), loss_fn=loss_fn, bn=bn)
    ctx = make_ctx(x.shape[0], classes=10, shape=(1, 8, 8))
    obj = OBJECTIVES.build({"name": "uiat", "target_bn": bn}, ctx=ctx)
    obj.targets(make_batch(model, x, y, torch.arange(32)), x_adv)  # clean + adversarial features too
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    for p, g in zip(model.parameters(), grads, strict=True):
        assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g))
    after = model.state_dict()
    assert all(torch.equal(buffers[k], after[k]) for k in buffers)  # BN running stats too


def test_batch_bn_targets_are_the_batch_statistics_predictions(digits):
    """target_bn=batch: p = f(x_inv) with BatchNorm on the batch's statistics (what the training
    forward sees), not on running statistics that lag behind early in training."""
    spec, x, y, _, _ = digits
    x, y = x[:32], y[:32]
    x_adv = (x + 8 / 255).clamp(0, 1)
    model = build_model({"name": "small_cnn", "width": 4}, spec).train()
    for m in model.modules():  # running statistics far from the batch's: the two modes disagree
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
    ctx = make_ctx(x.shape[0], classes=10, shape=(1, 8, 8))
    got = {}
    for bn in ("eval", "batch"):
        obj = OBJECTIVES.build({"name": "uiat", "target_bn": bn, "beta": 0.0}, ctx=ctx)
        t = obj.targets(make_batch(model, x, y, torch.arange(32)), x_adv)
        x_inv = (x + obj.z[y]).clamp(0, 1)  # the z the targets were computed with (before the step)
        with torch.no_grad():
            model.train(bn == "batch")
            want = F.softmax(model(x_inv), dim=1)
            model.train()
        assert torch.allclose(t.p, want, atol=1e-5)
        got[bn] = t.p
    assert not torch.allclose(got["eval"], got["batch"], atol=1e-2)
    with pytest.raises(ConfigError, match="objective.target_bn"):
        OBJECTIVES.build({"name": "uiat", "target_bn": "train"}, ctx=ctx)


class DropoutBNNet(nn.Module):
    """conv - BatchNorm - ReLU - Dropout(0.5) - linear: a mode-dependent layer of each kind."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
        self.body[1].running_mean.fill_(3.0)  # far from any batch's mean: the modes disagree

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_batch_mode_is_batchnorm_on_batch_statistics_and_everything_else_in_eval(digits):
    _, x, _, _, _ = digits
    x = x[:16]
    model = DropoutBNNet().train()
    model.body[3].eval()  # mixed modes: each module's own comes back
    modes = [m.training for m in model.modules()]
    buffers = copy.deepcopy(model.state_dict())
    with torch.no_grad(), frozen_model(model, "batch"):
        first, second = model(x), model(x)
    reference = copy.deepcopy(model).eval()
    reference.body[1].train()  # BatchNorm alone on the batch's statistics
    with torch.no_grad():
        want, running = reference(x), copy.deepcopy(model).eval()(x)
    assert torch.equal(first, second)  # no dropout: the same call gives the same logits
    torch.testing.assert_close(first, want, rtol=0, atol=1e-6)
    assert (first - running).abs().max() > 0.1  # batch statistics, not the running ones
    assert [m.training for m in model.modules()] == modes
    after = model.state_dict()
    assert all(torch.equal(buffers[k], after[k]) for k in buffers)  # running statistics restored


@pytest.mark.parametrize("one_off", [False, True], ids=["inverse", "one-off clean"])
def test_batch_mode_targets_of_a_dropout_model_are_deterministic(digits, one_off):
    # cnn2c2f has dropout and no BatchNorm: its batch-mode targets are its eval-mode predictions
    spec, x, y, _, _ = digits
    x, y = x[:32], y[:32]
    x_adv = (x + 8 / 255).clamp(0, 1)
    torch.manual_seed(0)
    model = build_model({"name": "cnn2c2f", "width": 4}, spec).train()
    ctx = make_ctx(32, classes=10, shape=(1, 8, 8))
    obj = OBJECTIVES.build({"name": "uiat", "one_off": one_off}, ctx=ctx)
    assert obj.target_bn == "batch" and obj.phase() == ("clean" if one_off else "inverse")
    p1 = obj.targets(make_batch(model, x, y, torch.arange(32)), x_adv).p
    p2 = obj.targets(make_batch(model, x, y, torch.arange(32)), x_adv).p  # nothing committed
    with torch.no_grad():
        inputs = x if one_off else (x + obj.z[y]).clamp(0, 1)
        want = F.softmax(model.eval()(inputs), dim=1)
    assert torch.equal(p1, p2)
    torch.testing.assert_close(p1, want, rtol=0, atol=1e-6)


def test_pass_counting_sees_direct_feature_calls_once_and_the_clean_pass_is_shared():
    model = TinyNet()
    x = torch.rand(5, 1, 4, 4, requires_grad=True)
    with count_passes(model) as c:
        model(x).sum().backward()  # features inside forward: one pass, not two
        model.head(model.features(x)).sum().backward()
        with torch.no_grad():
            model.features(x)
    assert (c.forward_rows, c.backward_rows) == (15, 10)
    assert "features" not in vars(model)  # the counting wrapper is gone
    batch = make_batch(model, x.detach(), torch.zeros(5, dtype=torch.int64), torch.arange(5))
    with count_passes(model) as c:
        logits, feats = batch.clean_logits(), batch.clean_features()
        batch.clean_logits()
    assert c.forward_rows == 5
    with torch.no_grad():
        assert torch.allclose(logits, model(x)) and torch.allclose(feats, model.features(x))


# ------------------------------------------------------------------------------- the objective


def test_defaults_follow_the_data_set_and_the_schedule():
    obj = OBJECTIVES.build({"name": "uiat"}, ctx=make_ctx(4, epochs=100, first_decay=25))
    assert obj.lam == 3.5 and obj.momentum_start == 10 and obj.one_off_epoch == 24
    obj = OBJECTIVES.build({"name": "uiat"}, ctx=make_ctx(4, epochs=30, first_decay=None,
                                                          dataset="svhn"))
    assert obj.lam == 3.0 and obj.momentum_start == 3 and obj.one_off_epoch == 14
    assert "z" in obj.state_keys
    assert "z" not in OBJECTIVES.build({"name": "uiat", "inverse": "instance"},
                                       ctx=make_ctx(4)).state_keys
    for field, value in (("momentum", 1.0), ("alpha_inv", 0), ("inverse_steps", 0), ("lam", -1)):
        with pytest.raises(ConfigError, match=f"objective.{field}"):
            OBJECTIVES.build({"name": "uiat", field: value}, ctx=make_ctx(4))


def test_momentum_recursion_per_sample_on_a_hand_driven_schedule():
    model = TinyNet()
    x, y, x_adv = synthetic(12)
    ctx = make_ctx(12)
    obj = OBJECTIVES.build({"name": "uiat", "momentum_start": 2, "momentum": 0.9}, ctx=ctx)
    halves = (torch.arange(6), torch.arange(6, 12))
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    for epoch in range(4):
        obj.start_epoch(epoch)
        for rows in halves:
            idx = perm[rows]  # loader indices are not batch positions
            z_before, p_before = obj.z.clone(), obj.p[idx].clone()
            with torch.no_grad():
                q = F.softmax(model((x[rows] + z_before[y[rows]]).clamp(0, 1)), dim=1)
            batch = make_batch(model, x[rows], y[rows], idx, epoch)
            loss, logits = obj.loss(model, batch, x_adv[rows], AttackPlan(0, 0, 0))
            expected = q if epoch < 2 else 0.9 * p_before + 0.1 * q
            assert torch.allclose(obj.p[idx], expected, atol=1e-6)
            assert not torch.equal(obj.z, z_before)
            want = (F.cross_entropy(logits, y[rows], reduction="none")
                    + 3.5 * kl_from_target(expected, logits))
            assert torch.allclose(loss, want, atol=1e-5)
    assert obj.p_valid.all()
    row = obj.end_epoch(3)
    assert row["uiat_frac_batches_inverse"] == 1.0 and row["uiat_z_linf_max"] <= EPS_INV + 1e-7
    assert {"uiat_kl", "uiat_ce_inv", "uiat_acc_inv", "uiat_ce_clean"} <= set(row)


def test_momentum_zero_takes_each_visits_inverse_prediction():
    # IAM off (Table 6 rows 1-3): p = f(x_inv) on every visit, nothing of the previous one
    model = TinyNet()
    x, y, x_adv = synthetic(6)
    obj = OBJECTIVES.build({"name": "uiat", "momentum_start": 0, "momentum": 0.0}, ctx=make_ctx(6))
    rows = torch.arange(6)
    for epoch in range(3):
        obj.start_epoch(epoch)
        with torch.no_grad():
            q = F.softmax(model((x + obj.z[y]).clamp(0, 1)), dim=1)
        obj.loss(model, make_batch(model, x, y, rows, epoch), x_adv, AttackPlan(0, 0, 0))
        assert obj.uses_momentum() and torch.equal(obj.p, q)


def test_one_off_switches_from_clean_to_inverse_to_stored_targets():
    model = TinyNet()
    x, y, x_adv = synthetic(12)
    obj = OBJECTIVES.build({"name": "uiat", "one_off": True}, ctx=make_ctx(12, first_decay=3))
    assert obj.one_off_epoch == 2
    halves = (torch.arange(6), torch.arange(6, 12))
    for epoch in range(5):
        obj.start_epoch(epoch)
        for rows in halves:
            z_before, p_before = obj.z.clone(), obj.p.clone()
            batch = make_batch(model, x[rows], y[rows], rows, epoch)
            with count_passes(model) as c:
                loss, logits = obj.loss(model, batch, x_adv[rows], AttackPlan(0, 0, 0))
            ce = F.cross_entropy(logits, y[rows], reduction="none")
            if epoch < 2:  # p = f(x): one clean pass, no inverse pass, nothing stored
                with torch.no_grad():
                    p = F.softmax(model(x[rows]), dim=1)
                assert c.forward_rows == 12 and c.backward_rows == 0
                assert torch.equal(obj.z, z_before) and not obj.p_valid.any()
            elif epoch == 2:  # inverse examples computed and stored once
                p = obj.p[rows]
                assert not torch.equal(obj.z, z_before)
                assert obj.p_valid[rows].all() and not torch.equal(obj.p, p_before)
            else:  # the stored targets, no inverse pass at all
                p = p_before[rows]
                assert c.forward_rows == 6 and c.backward_rows == 0  # the training forward only
                assert torch.equal(obj.z, z_before) and torch.equal(obj.p, p_before)
            assert torch.allclose(loss, ce + 3.5 * kl_from_target(p, logits), atol=1e-5)
        row = obj.end_epoch(epoch)
        assert row["uiat_frac_batches_inverse"] == (1.0 if epoch == 2 else 0.0)


def test_commit_false_changes_no_state_and_the_real_step_reuses_its_targets():
    model = TinyNet()
    x, y, x_adv = synthetic(6)
    for spec in ({"name": "uiat", "momentum_start": 0}, {"name": "uiat", "inverse": "instance"}):
        obj = OBJECTIVES.build(spec, ctx=make_ctx(6))
        obj.start_epoch(1)
        before, sums = state_copy(obj), obj._sums.clone()
        batch = make_batch(model, x, y, torch.arange(6))
        proxy = copy.deepcopy(model)  # AWP's proxy: other weights, same batch
        with torch.no_grad():
            proxy.head.bias[0] += 1.0  # a per-row constant would cancel in the softmax
        proxy_loss, _ = obj.loss(proxy, batch, x_adv, AttackPlan(0, 0, 0), commit=False)
        assert all(torch.equal(before[k], v) for k, v in obj.state_dict().items())
        assert torch.equal(obj._sums, sums)
        with count_passes(model) as c:
            loss, _ = obj.loss(model, batch, x_adv, AttackPlan(0, 0, 0))
        assert c.forward_rows == 6  # targets cached: only the training forward ran
        assert not torch.allclose(proxy_loss, loss)
        assert not torch.equal(obj.p, before["p"]) and obj.p_valid.all()
        after = state_copy(obj)
        obj.loss(model, batch, x_adv, AttackPlan(0, 0, 0))  # a second commit is a no-op
        assert all(torch.equal(after[k], v) for k, v in obj.state_dict().items())


def test_state_round_trips_through_state_dict():
    model = TinyNet()
    x, y, x_adv = synthetic(12)
    obj = OBJECTIVES.build({"name": "uiat"}, ctx=make_ctx(12))
    obj.loss(model, make_batch(model, x, y, torch.arange(12)), x_adv, AttackPlan(0, 0, 0))
    fresh = OBJECTIVES.build({"name": "uiat"}, ctx=make_ctx(12))
    assert not torch.equal(fresh.p, obj.p)
    fresh.load_state_dict(obj.state_dict())
    for k in ("p", "p_valid", "z"):
        assert torch.equal(getattr(fresh, k), getattr(obj, k))


# ------------------------------------------------------------------------------- end to end

TINY = ("data.name=digits", "data.val_size=0", "data.augment=none", "data.subset=128",
        "data.batch_size=64", "model.name=small_cnn", "model.width=4", "eval.n=32",
        "eval.attack=pgd-2")


# (inverse, beta, momentum) of each Table 6 row: UAG = universal, FR = beta > 0, IAM = momentum
TABLE6 = {"uiat-ablation-iat": ("instance", 0.0, 0.0), "uiat-ablation-uag": ("universal", 0.0, 0.0),
          "uiat-ablation-uag-fr": ("universal", 1.0, 0.0), "uiat-ablation-uag-iam": ("universal", 0.0, 0.9),
          "uiat-ablation-uag-fr-iam": ("universal", 1.0, 0.9)}


def test_table6_rows_differ_from_uiat_only_in_their_three_switches():
    def switches_and_rest(name: str) -> tuple[tuple, dict]:
        c = build_config(name).to_dict()
        c.pop("description")
        o = c["objective"]
        rest = {k: v for k, v in o.items() if k not in ("inverse", "beta", "momentum")}
        return (o["inverse"], o["beta"], o["momentum"]), {**c, "objective": rest}

    full, base = switches_and_rest("uiat")
    assert full == TABLE6["uiat-ablation-uag-fr-iam"]
    for name, want in TABLE6.items():
        assert switches_and_rest(name) == (want, base), name
    # ``iat`` is Section 3.3's IAT: UIAT with instance-wise inverse adversaries, FR and IAM kept
    assert switches_and_rest("iat") == (("instance", 1.0, 0.9), base)


def run(tmp: Path, preset: str, *overrides: str) -> dict:
    cfg = build_config(preset, [*TINY, *overrides])
    return train(cfg, tmp, preset=preset, **QUIET)


def metrics(tmp: Path) -> list[dict[str, str]]:
    import csv

    with open(tmp / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("preset, overrides", [
    ("iat", ("epochs=1", "strategy.steps=3")),
    ("uiat", ("epochs=1", "strategy.steps=3")),
    ("uiat-oneoff", ("epochs=3", "strategy.steps=3", "objective.one_off_epoch=1")),  # clean, T', stored
    ("uiat", ("epochs=1", "strategy.steps=3", "awp.gamma=0.01")),
    ("uiat", ("epochs=1", "strategy.name=none")),  # x_adv = x: steps 0
])
def test_tiny_training_runs(tmp_path, preset, overrides):
    s = run(tmp_path, preset, *overrides)
    rows = metrics(tmp_path)
    assert s["finished"] and len(rows) == s["epochs_completed"]
    for r in rows:
        assert math.isfinite(float(r["train_loss"])) and float(r["uiat_kl"]) >= 0
    if preset == "uiat-oneoff":
        assert [float(r["uiat_frac_batches_inverse"]) for r in rows] == [0.0, 1.0, 0.0]
    else:
        assert float(rows[0]["uiat_frac_batches_inverse"]) == 1.0
        assert math.isfinite(float(rows[0]["uiat_ce_inv"]))


@pytest.mark.slow
@pytest.mark.parametrize("preset, overrides", [
    ("uiat", ("objective.momentum_start=1",)),
    ("uiat-oneoff", ("objective.one_off_epoch=1",)),
])
def test_resumed_run_equals_uninterrupted(tmp_path, monkeypatch, preset, overrides):
    over = ("epochs=3", "strategy.steps=3", "eval.every=3", *overrides)
    interrupted_and_resumed(tmp_path, lambda: build_config(preset, [*TINY, *over]), monkeypatch, after=2)
    assert_same_last_weights(tmp_path / "full", tmp_path / "cut")
    sa = checkpoint.load_state(tmp_path / "full" / "checkpoints" / "last")["objective"]
    sb = checkpoint.load_state(tmp_path / "cut" / "checkpoints" / "last")["objective"]
    assert set(sa) == {"p", "p_valid", "z"}
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sa["p_valid"].all()
