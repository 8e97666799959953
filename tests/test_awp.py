"""AWP: layer-wise size and direction of the perturbation, what is never perturbed, BatchNorm
statistics, exact restore around the optimiser step, objectives, warm-up, presets."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptrain import awp as awp_mod
from adaptrain.attacks import AttackPlan
from adaptrain.awp import AWP
from adaptrain.config import build_config
from adaptrain.context import Batch, RunContext, StepInfo
from adaptrain.data import DataSpec
from adaptrain.models import build_model
from adaptrain.objectives import OBJECTIVES
from adaptrain.train import train
from training_helpers import QUIET

SPEC = DataSpec("t", 5, 3, (8, 8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    model = build_model({"name": "small_cnn", "width": 4}, SPEC)
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.rand(16, 3, 8, 8))
    return model


def batch_xy(n: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def cfg(gamma: float = 0.01, proxy_lr: float = 0.01):
    return SimpleNamespace(gamma=gamma, proxy_lr=proxy_lr, warmup=0)


def ce_of(x, y):
    return lambda m: F.cross_entropy(m(x), y)


def test_each_weight_moves_by_gamma_times_its_norm_along_the_ascent_direction():
    model = bn_model()
    x, y = batch_xy()
    # the ascent direction: the gradient of the loss at w, in train mode, on a copy
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x), y).backward()
    grads = {n: p.grad.clone() for n, p in ref.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    awp = AWP(model, cfg(gamma=0.01))
    awp.perturb(ce_of(x, y))
    perturbed = 0
    for name, p in model.named_parameters():
        v = p.detach() - before[name]
        if p.ndim >= 2:
            rel = v.norm() / before[name].norm()
            assert rel.item() == pytest.approx(0.01, rel=1e-5), name
            cos = F.cosine_similarity(v.flatten(), grads[name].flatten(), dim=0)
            assert cos.item() == pytest.approx(1.0, abs=1e-4), name  # ascent, not descent
            perturbed += 1
        else:  # biases and BatchNorm weights / biases are never perturbed
            assert torch.equal(p.detach(), before[name]), name
    assert perturbed == 6  # 4 convolutions + 2 linear layers
    assert any(p.ndim < 2 for p in model.parameters())


def test_the_proxy_leaves_the_models_batchnorm_statistics_mode_and_grads_alone():
    model = bn_model()
    x, y = batch_xy()
    stats = {n: b.clone() for n, b in model.named_buffers()}
    awp = AWP(model, cfg())
    awp.perturb(ce_of(x, y))
    for name, b in model.named_buffers():
        assert torch.equal(b, stats[name]), name
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    # the proxy's own statistics did move (it ran in train mode on the batch)
    assert any(not torch.equal(b, stats[n]) for n, b in awp.proxy.named_buffers()
               if n.endswith("running_mean"))


def test_restore_gives_the_weights_before_plus_exactly_the_optimisers_update():
    model = bn_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    awp = AWP(model, cfg(gamma=0.02))
    for seed in range(3):  # a few steps, so that momentum buffers are non-trivial
        x, y = batch_xy(seed=seed)
        w_before = {n: p.detach().clone() for n, p in model.named_parameters()}
        awp.perturb(ce_of(x, y))
        w_pert = {n: p.detach().clone() for n, p in model.named_parameters()}
        # the optimiser's update at the perturbed weights, computed independently on a twin
        twin = copy.deepcopy(model)
        twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        for m, o in ((model, opt), (twin, twin_opt)):
            o.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            o.step()
        awp.restore()
        twin_w = dict(twin.named_parameters())
        for name, p in model.named_parameters():
            update = twin_w[name].detach() - w_pert[name]
            assert update.abs().max() > 0, name  # the optimiser did move every weight
            assert torch.allclose(p.detach(), w_before[name] + update, rtol=0, atol=1e-6), name
            if p.ndim < 2:  # never perturbed: bit-identical to the twin's step
                assert torch.equal(p.detach(), twin_w[name].detach()), name


def test_restore_without_perturb_is_a_no_op_and_double_perturb_is_refused():
    model = bn_model()
    x, y = batch_xy()
    w = [p.detach().clone() for p in model.parameters()]
    awp = AWP(model, cfg())
    awp.restore()
    assert all(torch.equal(a, b) for a, b in zip(w, model.parameters(), strict=True))
    awp.perturb(ce_of(x, y))
    with pytest.raises(RuntimeError):
        awp.perturb(ce_of(x, y))
    awp.restore()
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(w, model.parameters(), strict=True))


class MLP(nn.Module):
    """No BatchNorm, so a loss can be compared at w and at w + v without side effects."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("objective", ["pgd_at", "trades", "mart"])
def test_awp_ascends_each_objectives_own_loss(objective):
    model = MLP()
    x, y = batch_xy()
    x_adv = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    ctx = RunContext(16, 5, (3, 8, 8), 1, 1, torch.device("cpu"), 0)
    obj = OBJECTIVES.build({"name": objective}, ctx=ctx)
    batch = Batch(model, x, y, torch.arange(16), StepInfo(0, 0, 0, 0.1))
    plan = obj.prepare(batch, AttackPlan(eps=8 / 255, step_size=2 / 255, steps=1))

    def loss_of(m: nn.Module) -> torch.Tensor:
        return obj.loss(m, batch, x_adv, plan, commit=False)[0].mean()

    with torch.no_grad():
        base = loss_of(model).item()
    awp = AWP(model, cfg(gamma=0.005, proxy_lr=0.1))
    awp.perturb(loss_of)
    with torch.no_grad():
        assert loss_of(model).item() > base + 1e-6  # the worst case of the weight neighbourhood
    awp.restore()
    with torch.no_grad():
        assert loss_of(model).item() == pytest.approx(base, abs=1e-5)



TINY = ["data.subset=128", "model.width=4", "eval.n=32", "data.batch_size=64"]


@pytest.mark.slow
@pytest.mark.parametrize(("epochs", "warmup", "calls"), [(2, 1, 2), (1, 3, 0)])
def test_warmup_epochs_run_without_awp(tmp_path, monkeypatch, epochs, warmup, calls):
    seen = []
    real = awp_mod.AWP.perturb

    def counting(self, loss_of):
        seen.append(1)
        return real(self, loss_of)

    monkeypatch.setattr(awp_mod.AWP, "perturb", counting)
    c = build_config("quickstart", [*TINY, f"epochs={epochs}", "awp.gamma=0.01",
                                    f"awp.warmup={warmup}", "strategy.steps=2",
                                    f"eval.every={epochs}"])
    train(c, tmp_path, **QUIET)
    assert len(seen) == calls  # 2 batches per epoch, none during the warm-up epochs


def test_awp_presets():
    at = build_config("awp")
    assert (at.awp.gamma, at.awp.warmup, at.awp.proxy_lr) == (0.01, 0, 0.01)
    assert at.optim.schedule == "piecewise" and at.model["name"] == "preact_resnet18"
    tr = build_config("trades-awp")
    assert (tr.awp.gamma, tr.awp.warmup, tr.awp.proxy_lr) == (0.005, 10, 0.1)
    assert tr.objective["name"] == "trades" and tr.epochs == 200
    assert tr.strategy["step_size"] == pytest.approx(2 / 255)
    # any preset switches AWP on with one override
    assert build_config("n-fgsm", ["awp.gamma=0.01"]).awp.gamma == 0.01
