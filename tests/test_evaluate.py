"""Evaluation: AutoAttack <= PGD <= clean, worst case, cascade == independent, gradient-masking
checks, robustness disparity, resume, guards on the model and inputs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from adaptrain.evaluate import EvalSettings, EvaluationError, evaluate, robustness_disparity
from adaptrain.evaluate import own as own_mod
from toy_models import Linear


class Quantised(nn.Module):
    """A non-differentiable input quantisation in front of a model: zero input gradients, so
    gradient attacks fail while the model is no more robust (gradient masking)."""

    def __init__(self, inner: nn.Module, levels: int = 8) -> None:
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * self.levels) / self.levels)


def teacher_data(n: int = 48, shape=(3, 8, 8), c: int = 10, seed: int = 0, dtype=torch.float64):
    """Images in [0.25, 0.75] labelled by a random linear teacher (which is then 100% accurate)."""
    g = torch.Generator().manual_seed(seed)
    x = (0.25 + 0.5 * torch.rand(n, *shape, generator=g)).to(dtype)
    model = Linear(x[0].numel(), c, seed=seed + 1, dtype=dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def run(model, x, y, **kw):
    kw.setdefault("batch_size", 16)
    return evaluate(model, x, y, EvalSettings(**kw), progress=False)


def test_undefended_model_is_broken_at_8_255_and_robust_le_clean():
    model, x, y = teacher_data(shape=(3, 16, 16))
    r = run(model, x, y, attacks=["pgd-10", "cw-10", "fgsm"], eps=8 / 255, step="eps/4")
    acc = r["accuracy"]
    assert acc["clean"] == 1.0
    assert acc["pgd-10"] <= 0.05 and r["worst_case"] <= acc["pgd-10"]
    assert all(c["ok"] is not False for c in r["checks"]), r["checks"]


def test_cascade_and_independent_agree_on_the_worst_case():
    model, x, y = teacher_data(n=64, shape=(3, 4, 4))
    # a budget at which the attacks break some examples but not all
    kw = {"attacks": ["fgsm", "pgd-5", "cw-5-2", "pgd-10-3"], "eps": 2.5 / 255, "step": "eps/4",
          "seed": 3}
    cas = run(model, x, y, cascade=True, **kw)
    ind = run(model, x, y, cascade=False, batch_size=7, **kw)
    assert 0 < ind["worst_case"] < ind["accuracy"]["clean"]
    assert cas["worst_case"] == pytest.approx(ind["worst_case"])
    worst = ind["per_example"]["clean"].clone()
    for name in kw["attacks"]:
        worst &= ind["per_example"][name]
        assert ind["worst_case"] <= ind["accuracy"][name] + 1e-12
    assert ind["worst_case"] == pytest.approx(worst.float().mean().item())
    # in the cascade, accuracy after each attack never rises
    seq = [cas["accuracy"][k] for k in ["clean", *kw["attacks"]]]
    assert all(b <= a for a, b in zip(seq, seq[1:], strict=False))


def test_pgd_restarts_and_more_steps_are_never_weaker_per_example():
    model, x, y = teacher_data(n=64, shape=(3, 4, 4))
    r = run(model, x, y, attacks=["pgd-5", "pgd-5-4"], eps=2.5 / 255, step="eps/4", cascade=False)
    one, four = r["per_example"]["pgd-5"], r["per_example"]["pgd-5-4"]
    assert not (four & ~one).any()  # restart 0 is the same keyed draw, later ones only add breaks


def test_autoattack_le_pgd_le_clean_on_a_tiny_model():
    model, x, y = teacher_data(n=48, shape=(3, 4, 4), dtype=torch.float32)  # AA runs in fp32
    r = run(model, x, y, attacks=["pgd-10", "aa"], eps=2.5 / 255, step="eps/4", cascade=False,
            aa_version="custom", aa_attacks=("apgd-ce", "apgd-t"))
    acc = r["accuracy"]
    assert acc["clean"] == 1.0
    assert 0 < acc["aa"] <= acc["pgd-10"] < acc["clean"]
    assert r["worst_case"] <= min(acc["aa"], acc["pgd-10"])
    assert {"aa/apgd-ce", "aa/apgd-t"} <= set(acc)
    assert acc["aa/apgd-t"] <= acc["aa/apgd-ce"]  # the sub-attacks cascade
    flags = next(c for c in r["checks"] if c["name"] == "AutoAttack flags")
    assert flags["ok"] is True, flags
    assert set(r["timing_s"]) >= {"clean", "pgd-10", "aa/apgd-ce", "aa/apgd-t"}


@pytest.mark.slow
def test_gradient_masking_trips_the_sanity_checks():
    inner, x, y = teacher_data(n=16, shape=(3, 8, 8), dtype=torch.float32)  # AA runs in fp32
    masked = Quantised(inner)
    r = run(masked, x, y, attacks=["pgd-10", "aa"], eps=8 / 255, step=2 / 255,
            aa_version="custom", aa_attacks=("apgd-ce", "apgd-t", "square"))
    failed = {c["name"] for c in r["checks"] if c["ok"] is False}
    assert "no zero input gradients" in failed
    assert r["accuracy"]["pgd-10"] > 0.5  # gradient attacks are blind here ...
    assert "Square (black-box) not stronger than white-box" in failed  # ... the black box is not
    assert "AutoAttack flags" in failed  # APGD-T's own zero-gradient flag


def test_every_examples_outcome_is_kept_and_agrees_with_the_accuracies():
    model, x, y = teacher_data(n=40, shape=(3, 4, 4), dtype=torch.float32)  # AA runs in fp32
    y[:5] = (y[:5] + 1) % 10  # some clean mistakes, so that the clean string is not all ones
    r = run(model, x, y, attacks=["pgd-5", "aa"], eps=2.5 / 255, step="eps/4", cascade=False,
            aa_version="custom", aa_attacks=["apgd-ce"], curve=[0, 1 / 255, 2.5 / 255])
    doc = json.loads(json.dumps(r["correct"]))  # survives JSON as it is
    as_bool = {k: torch.tensor([c == "1" for c in v]) for k, v in doc.items()}
    assert set(as_bool) == {*r["accuracy"], "worst_case"}
    assert all(len(v) == 40 for v in doc.values())
    assert not as_bool["clean"][:5].any()
    for name, acc in r["accuracy"].items():
        assert as_bool[name].float().mean().item() == pytest.approx(acc)
        assert not (as_bool[name] & ~as_bool["clean"]).any()  # robust implies clean-correct
    assert torch.equal(as_bool["worst_case"], as_bool["pgd-5"] & as_bool["aa"])
    assert 0 < as_bool["worst_case"].sum() < as_bool["clean"].sum()
    c = r["curve"]
    assert c["correct"][0] == doc["clean"]
    per_eps = [torch.tensor([ch == "1" for ch in v]).float() for v in c["correct"]]
    assert [v.mean().item() for v in per_eps] == pytest.approx(c["accuracy"])
    # RD is a mean over examples: (clean_i - correct_i(eps)) / (eps in 1/255), averaged
    rd_i = torch.stack([(per_eps[0] - v) / (e * 255) for v, e in zip(per_eps[1:], c["eps"][1:],
                                                                       strict=True)]).mean(0)
    assert rd_i.mean().item() == pytest.approx(r["rd"])


def test_robustness_disparity_on_a_synthetic_curve():
    eps = [0, 2 / 255, 4 / 255, 8 / 255]
    acc = [0.80, 0.70, 0.60, 0.40]
    expected = ((0.80 - 0.70) / 2 + (0.80 - 0.60) / 4 + (0.80 - 0.40) / 8) / 3
    assert robustness_disparity(eps, acc) == pytest.approx(expected)


def test_eps_curve_rd_and_monotonicity_check():
    model, x, y = teacher_data(n=32, shape=(3, 4, 4))
    r = run(model, x, y, attacks=["pgd-5"], eps=2 / 255, curve=[0, 1 / 255, 2 / 255, 4 / 255])
    c = r["curve"]
    assert c["accuracy"][0] == r["accuracy"]["clean"]
    assert r["rd"] == pytest.approx(robustness_disparity(c["eps"], c["accuracy"]))
    mono = next(ch for ch in r["checks"] if ch["name"] == "accuracy non-increasing in eps")
    assert mono["ok"] is (all(b <= a for a, b in zip(c["accuracy"], c["accuracy"][1:], strict=False)))
    from adaptrain.evaluate.checks import monotone_in_eps

    assert monotone_in_eps({"eps": [0, 0.1], "accuracy": [0.5, 0.6]})["ok"] is False
    # budgets as the data set writes them: digits' 0.1 is not "25.5/255"
    assert "0->0.1: 0.5000->0.6000" in monotone_in_eps({"eps": [0, 0.1], "accuracy": [0.5, 0.6]})["detail"]
    assert "4/255->8/255" in monotone_in_eps({"eps": [4 / 255, 8 / 255], "accuracy": [0.3, 0.4]})["detail"]


def test_a_resumed_evaluation_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    model, x, y = teacher_data(n=40, shape=(3, 4, 4))
    kw = {"attacks": ["pgd-5", "cw-5"], "eps": 2.5 / 255, "step": "eps/4", "batch_size": 8,
          "curve": [0, 2 / 255]}
    full = evaluate(model, x, y, EvalSettings(**kw), progress=False)

    real = own_mod.own_correct
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    import adaptrain.evaluate.runner as runner

    monkeypatch.setattr(runner, "own_correct", flaky)
    state = tmp_path / "e.state.json"
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, x, y, EvalSettings(**kw), state_path=state, progress=False)
    assert state.is_file()
    saved = json.loads(state.read_text())
    done_before = sum(v["results"].count("0") + v["results"].count("1") for v in saved["jobs"].values())
    calls["n"] = 100  # no more interruptions
    counted = {"chunks": 0}

    def counting(*args, **kwargs):
        counted["chunks"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "own_correct", counting)
    resumed = evaluate(model, x, y, EvalSettings(**kw), state_path=state, progress=False)
    for key in ("accuracy", "worst_case", "curve", "rd"):
        assert resumed[key] == full[key]
    assert done_before > 40  # clean and the first attack's chunks were kept ...
    monkeypatch.setattr(runner, "own_correct", real)
    fresh = {"chunks": 0}

    def count_fresh(*args, **kwargs):
        fresh["chunks"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "own_correct", count_fresh)
    evaluate(model, x, y, EvalSettings(**kw), progress=False)
    assert counted["chunks"] < fresh["chunks"]  # ... and not recomputed


def test_probability_outputs_are_refused_and_out_of_range_inputs_warned():
    model, x, y = teacher_data(n=8, shape=(3, 4, 4))
    with pytest.raises(EvaluationError, match="probabilities"):
        run(nn.Sequential(model, nn.Softmax(dim=1)), x, y, attacks=["pgd-2"])
    with pytest.warns(UserWarning, match="outside"):
        r = run(model, (x - 0.5) * 4, y, attacks=[])
    assert r["warnings"]


def test_evaluation_restores_mode_and_leaves_batchnorm_statistics_alone():
    from adaptrain.data import DataSpec
    from adaptrain.models import build_model

    spec = DataSpec("t", 10, 3, (8, 8), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    model = build_model({"name": "small_cnn", "width": 4}, spec)
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 3, 8, 8))
    stats = [b.clone() for b in model.buffers()]
    x, y = torch.rand(12, 3, 8, 8), torch.randint(0, 10, (12,))
    run(model, x, y, attacks=["pgd-3", "fgsm"], eps=8 / 255)
    assert model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers(), strict=True))


def test_bf16_option_warns_about_gradient_masking(capsys):
    model, x, y = teacher_data(n=8, shape=(3, 4, 4), dtype=torch.float32)
    r = evaluate(model, x, y, EvalSettings(attacks=["pgd-2"], bf16=True), progress=False, log=print)
    assert "gradient masking" in capsys.readouterr().out
    assert any("bf16" in w for w in r["warnings"])


def test_corruption_accuracy_per_severity_and_severity_zero_is_clean():
    model, x, y = teacher_data(n=24, shape=(3, 8, 8))
    r = run(model, x, y, attacks=[], corruptions=["gaussian_noise", "contrast"], severities=[0, 5],
            batch_size=10)
    co = r["corruptions"]
    assert co["accuracy"]["gaussian_noise"]["0"] == r["accuracy"]["clean"]
    assert co["accuracy"]["contrast"]["0"] == r["accuracy"]["clean"]
    assert co["accuracy"]["contrast"]["5"] < r["accuracy"]["clean"]  # contrast 5 flattens the image
    assert co["mean"]["contrast"] == pytest.approx(sum(co["accuracy"]["contrast"].values()) / 2)
    assert co["mean_all"] == pytest.approx(sum(co["mean"].values()) / 2)
    again = run(model, x, y, attacks=[], corruptions=["gaussian_noise"], severities=[5], batch_size=10)
    assert again["corruptions"]["accuracy"]["gaussian_noise"]["5"] == co["accuracy"]["gaussian_noise"]["5"]
