"""Every config field against hostile values (issue 16, items 8-10): each value is refused with
one ConfigError naming the field, or accepted only where this file lists it as legitimate.

The bulk runs through :func:`adaptrain.config.build_config` (no data, no model); a sample runs
through ``adaptrain train ... --dry-run``, which must print one ``error: <field>:`` line, exit 2
and create nothing. Run this file as a script to print the outcome counts.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from adaptrain.config import COMPONENT_SECTIONS, Config, build_config, preset_names
from adaptrain.errors import ConfigError

HOSTILE = ("nan", "inf", "-inf", "1e309", "-1", "0", "1e12", "abc", "[1, 2]", "{a: 1}", "8/0")
NESTED = "<nested>"  # the override ``<field>.x=1``: a key below the field
VALUES = (*HOSTILE, NESTED)
ANY_TEXT = {"nan", "inf", "-inf", "1e309", "-1", "0", "1e12", "abc", "8/0"}

# (component, field) -> the hostile values that are legitimate settings of that field; the
# component is "" for the fields of the Config dataclasses. Everything else must be refused.
LEGITIMATE: dict[tuple[str, str], set[str]] = {
    ("", "description"): ANY_TEXT,  # free text
    ("", "seed"): {"0"},
    ("", "init_from"): {"abc", "8/0"},  # relative paths; existence is checked when loading
    ("", "data.root"): {"abc", "8/0"},
    ("", "data.extra"): {"abc", "8/0"},  # a path; the files are checked when training starts
    ("", "data.val_size"): {"0"},  # 0: select on the test split
    ("", "data.split_seed"): {"0"},
    ("", "optim.momentum"): {"0"},  # plain SGD
    ("", "optim.weight_decay"): {"0"},
    ("", "optim.milestones"): {"0", "[1, 2]"},  # epochs; a lone number is a one-entry list
    ("", "awp.gamma"): {"0"},  # AWP off
    ("", "awp.warmup"): {"0"},
    ("", "ema.decay"): {"0"},  # EMA off
    ("", "ema.warmup"): {"0"},
    ("", "eval.eps"): {"0"},  # clean accuracy under the attack's name
    ("cnn2c2f", "model.dropout"): {"0"},
    ("wrn", "model.dropout"): {"0"},
    ("fixed", "strategy.eps"): {"0"},
    ("fixed", "strategy.step_size"): {"0"},
    ("fat", "strategy.eps"): {"0"},
    ("fat", "strategy.step_size"): {"0"},
    ("fat", "strategy.tau_epochs"): {"[1, 2]"},
    ("dra_schedule", "strategy.eps_start"): {"0"},
    ("dra_schedule", "strategy.eps_end"): {"0"},
    ("dra_schedule", "strategy.clean_epochs"): {"0"},
    ("ecas", "strategy.eps_min"): {"0"},
    ("ecas", "strategy.eps_fixed"): {"0"},  # unused by the preset's cyclic schedule, in range
    ("ecas", "strategy.h_low"): {"0"},  # the low-entropy rule never fires
    ("las", "strategy.eps_options"): {"0", "[1, 2]"},
    ("las", "strategy.step_options"): {"0", "[1, 2]"},
    ("las", "strategy.iters_options"): {"[1, 2]"},
    ("las", "strategy.beta_options"): {"0", "[1, 2]"},
    ("las", "strategy.policy_momentum"): {"0"},
    ("las", "strategy.policy_weight_decay"): {"0"},
    ("las", "strategy.reward_alpha"): {"0"},
    ("las", "strategy.reward_beta"): {"0"},
    ("las", "strategy.reward_subset"): {"0"},  # 0: the whole batch
    ("las", "strategy.reward_eps"): {"0"},
    ("las", "strategy.reward_step"): {"0"},
    ("las", "strategy.baseline_momentum"): {"0"},
    ("las", "strategy.entropy_coef"): {"0"},
    ("las", "strategy.clip_grad"): {"0"},  # 0: no clipping
    ("saat", "strategy.rho"): {"inf", "1e309", "-1", "0", "1e12"},  # inf: always eps_max; <= 0: clean
    ("sa_pgd", "attack.eps_0"): {"0"},
    ("n_fgsm", "attack.k"): {"0"},  # no noise: FGSM from x
    ("pgd_at", "objective.label_smoothing"): {"0"},
    ("mart", "objective.beta"): {"0"},
    ("trades", "objective.beta"): {"0"},
    ("replay", "objective.beta"): {"0"},
    ("uiat", "objective.lam"): {"0"},
    ("uiat", "objective.beta"): {"0"},
    ("uiat", "objective.eps_inv"): {"0"},
    ("uiat", "objective.momentum"): {"0"},
    ("uiat", "objective.momentum_start"): {"0"},
    ("uiat", "objective.one_off_epoch"): {"0"},
    ("gradalign", "regularizer.lam"): {"0"},
}

# cross-field rules: a value in range on its own that contradicts a partner field may be
# refused naming the partner (e.g. h_high 0 below the default h_low)
PARTNERS: dict[tuple[str, str], set[str]] = {
    ("fat", "strategy.tau"): {"strategy.tau_epochs"},
    ("ecas", "strategy.eps_max"): {"strategy.eps_min"},
    ("ecas", "strategy.h_high"): {"strategy.h_low"},
}


@dataclass(frozen=True)
class Case:
    """One hostile override of ``field`` on ``preset`` (+ ``base``, selecting ``component``)."""

    component: str
    preset: str
    base: tuple[str, ...]
    field: str
    value: str

    @property
    def override(self) -> str:
        return f"{self.field}.x=1" if self.value == NESTED else f"{self.field}={self.value}"

    def names(self, field: str) -> bool:
        """Whether an error about ``field`` is about this case's field (or a listed partner)."""
        return (field == self.field or field.startswith(self.field + ".")
                or field in PARTNERS.get((self.component, self.field), set()))


def dataclass_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of every scalar field of the Config dataclasses (not component sections)."""
    out = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += dataclass_fields(type(default), name + ".")
        elif not (not prefix and f.name in COMPONENT_SECTIONS):
            out.append(name)
    return out


def registries() -> dict[str, object]:
    from adaptrain.attacks import ATTACKS
    from adaptrain.models import MODELS
    from adaptrain.objectives import OBJECTIVES
    from adaptrain.regularizers import REGULARIZERS
    from adaptrain.strategies import STRATEGIES

    return {"model": MODELS, "strategy": STRATEGIES, "attack": ATTACKS, "objective": OBJECTIVES,
            "regularizer": REGULARIZERS}


@cache
def homes() -> dict[tuple[str, str], tuple[str, tuple[str, ...]]]:
    """(section, component) -> (preset, overrides) of a valid config using that component: the
    first preset that does (quickstart first), else quickstart with ``<section>.name=``."""
    built = {p: build_config(p) for p in ("quickstart", *preset_names())}
    out: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}
    for section, registry in registries().items():
        for name in registry.names():
            users = [p for p, cfg in built.items() if getattr(cfg, section)["name"] == name]
            out[section, name] = (users[0], ()) if users else ("quickstart", (f"{section}.name={name}",))
    return out


@cache
def cases() -> tuple[Case, ...]:
    out = [Case("", "quickstart", (), f, v) for f in dataclass_fields(Config) for v in VALUES]
    for section, registry in registries().items():
        out += [Case("", "quickstart", (), f"{section}.name", v) for v in VALUES]
        for name in registry.names():
            preset, base = homes()[section, name]
            for param in registry.get(name).params():
                out += [Case(name, preset, base, f"{section}.{param}", v) for v in VALUES]
    return tuple(out)


def outcome(case: Case) -> str:
    """refused | accepted | misnamed:<field> | traceback:<exception type>."""
    try:
        build_config(case.preset, [*case.base, case.override])
    except ConfigError as exc:
        return "refused" if case.names(exc.field) else f"misnamed:{exc.field}"
    except Exception as exc:  # noqa: BLE001 - what the fuzz is looking for
        return f"traceback:{type(exc).__name__}"
    return "accepted"


def allowed(case: Case) -> bool:
    return case.value in LEGITIMATE.get((case.component, case.field), set())


def classify() -> dict[Case, str]:
    """Every case's outcome, with an acceptance not listed in LEGITIMATE marked 'silent'."""
    out = {}
    for case in cases():
        result = outcome(case)
        out[case] = "silent" if result == "accepted" and not allowed(case) else result
    return out


# ---------------------------------------------------------------------------------------
# the defects of issue 16 one by one


def refusal(preset: str, *overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        build_config(preset, list(overrides))
    return err.value


@pytest.mark.parametrize("override", ["strategy.eps=8/0", "eval.select=8/0", "eval.eps=1/0",
                                      "optim.milestones=[10, 8/0]", "epochs=4/0"])
def test_a_fraction_with_a_zero_denominator_names_its_field(override):
    field = override.partition("=")[0]
    assert refusal("quickstart", override).field == field


@pytest.mark.parametrize("override", ["model.name.x=1", "model.name=[1, 2]", "strategy.name={a: 1}",
                                      "attack.name=3", "objective.name=true"])
def test_a_component_name_must_be_a_name(override):
    err = refusal("quickstart", override)
    assert err.field == override.split("=")[0].removesuffix(".x")


@pytest.mark.parametrize("override", ["epochs=1e309", "data.batch_size=1e309", "strategy.steps=1e309",
                                      "optim.lr=1e309", "strategy.eps=1e309", "optim.lr=nan",
                                      "optim.momentum=inf", "eval.eps=.nan", "strategy.eps=-.inf"])
def test_overflowing_and_non_finite_numbers_are_refused(override):
    assert refusal("quickstart", override).field == override.partition("=")[0]


def test_infinity_is_accepted_only_where_declared():
    assert build_config("saat-down", ["strategy.rho=.inf"]).strategy["rho"] == math.inf
    assert refusal("saat-down", "strategy.rho=nan").field == "strategy.rho"
    assert refusal("saat-down", "strategy.rho=-.inf").field == "strategy.rho"


@pytest.mark.parametrize("override", ["epochs.x=1", "optim.lr.y=2", "data.subset.z=3",
                                      "strategy.eps.x=1", "eval.attack.k=1", "device.cuda=1",
                                      "optim.milestones.x=1", "strategy.backbone.x=1"])
def test_a_key_below_a_scalar_field_is_refused(override):
    preset = "las-pgd-at" if "backbone" in override else "quickstart"
    assert refusal(preset, override).field.startswith(override.partition("=")[0].rsplit(".", 1)[0])


@pytest.mark.parametrize("value", ["true", "false", "on", "3", "1.5"])
def test_init_from_takes_a_path(value):
    err = refusal("quickstart", f"init_from={value}")
    assert err.field == "init_from"
    assert "run directory or checkpoint" in err.message
    assert "does not exist" not in err.message


def test_init_from_accepts_a_relative_path_without_checking_it():
    assert build_config("quickstart", ["init_from=runs/base"]).init_from == "runs/base"


@pytest.mark.parametrize(("preset", "override", "field"), [
    ("quickstart", "strategy.steps=0", "strategy.steps"),  # a strategy constructor's check
    ("uiat", "objective.momentum=1", "objective.momentum"),
    ("gradalign", "regularizer.lam=-1", "regularizer.lam"),
    ("n-fgsm", "attack.k=-1", "attack.k"),
    ("ecas-pgd-at", "strategy.n_large=99", "strategy.n_large"),
    ("dra-finetune", "epochs=20", "strategy.decay_epochs"),  # needs the run's epochs
    ("trades", "model.depth=7", "model.depth"),
    ("las-pgd-at", "strategy.backbone.width=0", "strategy.backbone.width"),
    ("saat-down", "attack.name=pgd", "attack.name"),  # SAAT plans SA-PGD
])
def test_component_checks_fire_before_any_data_is_loaded(preset, override, field):
    """cifar10 is not on this machine: the bad field is reported, not the missing data."""
    assert refusal(preset, override, "data.root=/nonexistent/adaptrain-data").field == field


def test_checks_that_need_the_data_wait_for_it():
    """ECAS's default thresholds depend on the number of classes of an image folder, which is
    known only once it is loaded: a lone h_low is accepted here and checked at data loading."""
    cfg = build_config("ecas-pgd-at", ["data.name=imagefolder", "data.root=/nonexistent",
                                       "strategy.h_low=3"])
    assert cfg.strategy["h_low"] == 3


def test_budgets_are_bounded_in_their_own_units():
    assert refusal("quickstart", "strategy.eps=1.01").field == "strategy.eps"
    assert build_config("quickstart", ["strategy.eps=1"]).strategy["eps"] == 1
    assert build_config("quickstart", ["attack.norm=l2", "strategy.eps=2"]).strategy["eps"] == 2
    assert refusal("ecas-pgd-at", "strategy.eps_max=256").field == "strategy.eps_max"
    assert build_config("ecas-pgd-at", ["strategy.eps_max=255"]).strategy["eps_max"] == 255
    assert refusal("las-pgd-at", "strategy.eps_options=[8, 300]").field == "strategy.eps_options"
    assert refusal("las-pgd-at", "strategy.step_options=[1, 256]").field == "strategy.step_options"
    assert refusal("saat-up", "attack.warm_eps=2").field == "attack.warm_eps"
    assert refusal("uiat", "objective.eps_inv=2").field == "objective.eps_inv"
    assert refusal("quickstart", "eval.step_size=1.5").field == "eval.step_size"


@pytest.mark.parametrize(("preset", "field", "last_ok", "first_bad"), [
    ("quickstart", "epochs", "100000", "100001"),
    ("quickstart", "seed", "4294967295", "4294967296"),
    ("quickstart", "data.batch_size", "65536", "65537"),
    ("quickstart", "optim.momentum", "0.999", "1"),
    ("quickstart", "optim.lr", "100", "101"),
    ("quickstart", "strategy.steps", "10000", "10001"),
    ("quickstart", "eval.every", "100000", "100001"),
    ("quickstart", "model.width", "1024", "1025"),
    ("pgd-at", "attack.restarts", "100", "101"),
    ("trades", "objective.beta", "1000", "1001"),
    ("awp", "awp.gamma", "1", "1.01"),
])
def test_bounds_hold_at_their_edges(preset, field, last_ok, first_bad):
    build_config(preset, [f"{field}={last_ok}"])
    assert refusal(preset, f"{field}={first_bad}").field == field


def test_the_bounds_are_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    for field in ("epochs", "optim.lr", "optim.momentum", "strategy.eps", "strategy.steps",
                  "eval.eps", "data.batch_size", "attack.restarts", "model.width"):
        assert f"`{field}`" in doc, field


def test_pickle_refusal_says_what_is_wrong_and_what_to_do(tmp_path):
    import pickle

    from adaptrain import checkpoint
    from adaptrain.errors import CheckpointError

    bad = tmp_path / "state.pt"
    bad.write_bytes(pickle.dumps({"x": Path("/")}))  # a class, not plain data
    with pytest.raises(CheckpointError) as err:
        checkpoint.safe_torch_load(bad)
    message = err.value.message
    assert "pickled Python objects" in message and "safetensors" in message
    assert "2.6" not in message and "weights_only" not in message and "\n" not in message


# ---------------------------------------------------------------------------------------
# the fuzz


def test_every_model_is_checked_without_being_built():
    """Validation runs a model's registered validator (building a WRN-34-10 takes a second)."""
    models = registries()["model"]
    assert all(models.get(name).validator is not None for name in models.names())


def test_every_component_has_a_home_config():
    for (section, name), (preset, base) in homes().items():
        assert getattr(build_config(preset, list(base)), section)["name"] == name


def test_every_field_refuses_hostile_values_or_accepts_only_listed_ones():
    results = classify()
    bad = {f"{c.component or 'config'}: {c.override} -> {r}" for c, r in results.items()
           if r.startswith(("traceback", "misnamed", "silent"))}
    assert not bad, "\n".join(sorted(bad))
    accepted = {(c.component, c.field, c.value) for c, r in results.items() if r == "accepted"}
    listed = {(comp, f, v) for (comp, f), values in LEGITIMATE.items() for v in values}
    assert accepted == listed, f"listed but refused: {sorted(listed - accepted)}"


def cli_sample() -> list[Case]:
    """~30 quickstart cases: the issue's reproductions, some acceptances, a spread of the rest."""
    pick = [("strategy.eps", "8/0"), ("eval.select", "8/0"), ("model.name", NESTED),
            ("epochs", "1e309"), ("optim.lr", "1e309"), ("epochs", NESTED), ("optim.lr", NESTED),
            ("optim.momentum", "inf"), ("strategy.step_size", "1e12"), ("eval.eps", "nan"),
            ("init_from", "abc"), ("seed", "0"), ("description", "abc"), ("optim.weight_decay", "0")]
    mine = [c for c in cases() if c.preset == "quickstart" and not c.base]
    chosen = [c for c in mine if (c.field, c.value) in pick]
    stride = len(mine) // (30 - len(chosen)) + 1  # a deterministic spread over the fields
    chosen += [c for c in mine[::stride] if c not in chosen][: 30 - len(chosen)]
    return chosen


@pytest.mark.parametrize("case", cli_sample(), ids=lambda c: c.override)
def test_the_cli_refuses_in_one_line_and_creates_nothing(case, tmp_path, capsys):
    from adaptrain.cli import main

    out = tmp_path / "run"
    code = main(["train", "quickstart", case.override, "--out", str(out), "--dry-run"])
    captured = capsys.readouterr()
    assert not out.exists()
    if allowed(case):
        assert code == 0, captured.err
        assert "seed:" in captured.out
        return
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, captured.err
    assert lines[0].startswith("error: "), lines[0]
    named = lines[0].removeprefix("error: ").split(":", 1)[0]
    assert case.names(named), lines[0]


if __name__ == "__main__":
    counts = Counter(r.split(":")[0] for r in classify().values())
    print(f"{len(cases())} cases: {dict(counts)}")
    sys.exit(0)
