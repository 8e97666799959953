"""What the epoch line and the evaluation report print: the adaptive strategy's state in a
few characters, budgets in the data set's own units, accuracy differences in points."""

from __future__ import annotations

from adaptrain.config import build_config
from adaptrain.data import DATASETS, eps_text
from adaptrain.evaluate.checks import pgd_aa_gap
from adaptrain.evaluate.results import to_markdown
from adaptrain.rundir import epoch_line
from adaptrain.strategies import STRATEGIES
from adaptrain.strategies.base import Strategy


def test_every_strategy_has_a_summary_and_the_constant_ones_say_nothing():
    for name in STRATEGIES.names():
        assert "summary" in vars(STRATEGIES.get(name).builder) or name in ("fixed", "none"), name
    assert Strategy.summary(object.__new__(Strategy), {"mean_eps": 8.0}, str) == ""


def test_adaptive_summaries_use_the_data_sets_units(tmp_path):
    from adaptrain.train import train

    lines: list[str] = []
    cfg = build_config("quickstart", ["epochs=1", "data.subset=64", "data.batch_size=32",
                                      "model.width=4", "eval.n=16", "device=cpu",
                                      "strategy.name=ecas", "strategy.eps_unit=0.01",
                                      "strategy.eps_min=5", "strategy.eps_max=15"])
    train(cfg, tmp_path / "run", progress=False, log=lines.append)
    tail = lines[-1].split("|")[-1].strip()  # the last epoch: no ETA, the summary last
    eps, up, down = tail.split()[1], tail.split()[3], tail.split()[5]
    assert tail.startswith("eps ") and "/" not in eps and 0.05 <= float(eps) <= 0.15, tail
    assert up.endswith("%") and down.endswith("%"), tail


def test_epoch_line_shows_summary_and_eta():
    row = {"epoch": 3, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "train_time_s": 2.0}
    assert epoch_line(row, 9, "pgd-10", "eps 7.3/255 up 12% down 30%", "ETA 12s").endswith(
        "2.0s  |  eps 7.3/255 up 12% down 30%  |  ETA 12s")
    assert epoch_line(row, 9, "pgd-10").endswith("2.0s")


def test_budgets_print_in_the_data_sets_own_units():
    assert eps_text(0.1, "digits") == "0.1"
    assert eps_text(8 / 255, "cifar10") == "8/255"
    assert eps_text(8 / 255, "imagefolder") == "8/255"
    assert DATASETS.get("digits").traits.eps_denominator is None
    doc = {"provenance": {"data": "digits"}, "n_examples": 10, "norm": "linf", "eps": 0.1,
           "step_size": 0.01, "mode": "cascade", "accuracy": {"clean": 0.9}, "worst_case": 0.9,
           "checks": []}
    assert "linf eps = 0.1, step 0.01," in to_markdown(doc)
    doc["provenance"]["data"] = "cifar10"
    doc["eps"], doc["step_size"] = 8 / 255, 2 / 255
    assert "linf eps = 8/255, step 2/255," in to_markdown(doc)
    doc["curve"] = {"attack": "pgd-20", "step": "eps/4", "eps": [0.0, 4 / 255, 8 / 255],
                    "accuracy": [0.9, 0.6, 0.4]}
    doc["rd"] = None
    assert "| eps | 0/255 | 4/255 | 8/255 |" in to_markdown(doc)
    doc["provenance"]["data"], doc["curve"]["eps"] = "digits", [0.0, 0.05, 0.1]
    assert "| eps | 0 | 0.05 | 0.1 |" in to_markdown(doc)  # not 12.75/255


def test_accuracy_differences_print_in_points():
    check = pgd_aa_gap(0.0111, "pgd-20", 0.10)
    assert "a further 1.11 points of accuracy" in check["detail"] and check["ok"]
    assert "(> 1.00 points)" in pgd_aa_gap(0.0111, "pgd-20", 0.01)["detail"]
