"""``adaptrain eval --model``: any model under the run's evaluation, threat defaults, refusals.

One tiny clean run on digits is trained once; its weights are then evaluated as an external
model (a builder in a module of the current directory), as a torch state dict, and as a
RobustBench model through a stand-in ``robustbench`` package (the real one downloads its
weights; this one only has the model zoo's layout: ``model_dicts[dataset][threat][name]``).
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from adaptrain import checkpoint
from adaptrain.cli import main
from adaptrain.config import build_config
from adaptrain.train import train
from training_helpers import QUIET

# An "external" module: adaptrain's small CNN stands in for any architecture, plus models
# that break the contract in each way the probe must catch.
MODELS_PY = '''
import torch
from torch import nn
from adaptrain.data import load_arrays
from adaptrain.models import build_model

SPEC = load_arrays("digits", None).spec


def small(width=16):
    return build_model({"name": "small_cnn", "width": width}, SPEC)


class Wrapped(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.model = small(width)


class ExpectsNormalised(Wrapped):  # trained-on-normalised-inputs model without normalisation
    def forward(self, z):
        return self.model(z * self.model.std + self.model.mean)


class Probabilities(Wrapped):
    def forward(self, x):
        return self.model(x).softmax(1)


class FiveClasses(Wrapped):
    def forward(self, x):
        return self.model(x)[:, :5]


def broken():
    raise RuntimeError("no GPU here")
'''

FAKE_ENUMS = '''
from enum import Enum


class BenchmarkDataset(Enum):
    cifar_10 = "cifar10"
    digits = "digits"


class ThreatModel(Enum):
    Linf = "Linf"
    L2 = "L2"
'''

FAKE_ZOO = '''
from adaptrain.data import load_arrays
from adaptrain.models import build_model
from .enums import BenchmarkDataset, ThreatModel


class Tiny2026Test:  # a class, as RobustBench's zoo entries are
    def __new__(cls):
        return build_model({"name": "small_cnn", "width": 16}, load_arrays("digits", None).spec)


model_dicts = {
    BenchmarkDataset.digits: {ThreatModel.Linf: {"Tiny2026Test": {"model": Tiny2026Test, "gdrive_id": "x"}},
                              ThreatModel.L2: {}},
    BenchmarkDataset.cifar_10: {ThreatModel.Linf: {}, ThreatModel.L2: {}},
}
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A clean small CNN on digits (3 epochs: ~90 % clean accuracy, a meaningful probe)."""
    run = tmp_path_factory.mktemp("ext") / "run"
    train(build_config("quickstart-clean", ["epochs=3"]), run, **QUIET)
    return run


@pytest.fixture
def here(tmp_path, monkeypatch, trained) -> Path:
    """tmp_path as the current directory holding the external module; sys.path restored."""
    (tmp_path / "extmodels.py").write_text(MODELS_PY)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "extmodels", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def weights_of(run: Path) -> Path:
    return run / "checkpoints" / "best" / "model.safetensors"


def ev(capsys, *argv: str) -> tuple[int, str, dict | None]:
    code = main(["eval", *argv, "--quiet"])
    err = capsys.readouterr().err.strip()
    out = next((argv[i + 1] for i, a in enumerate(argv) if a == "--out"), None)
    doc = json.loads(Path(out).read_text()) if code == 0 and out else None
    return code, err, doc


COMMON = ("--attacks", "clean,pgd-5", "--n", "120", "--step-size", "0.01")


def external(weights: Path, *extra: str, model: str = "extmodels:small") -> tuple[str, ...]:
    return ("--model", model, "--model-kwargs", '{"width": 16}', "--weights", str(weights),
            "--data", "digits", *extra)


def test_an_external_model_gets_the_runs_evaluation(capsys, here, trained):
    code, err, run_doc = ev(capsys, str(trained), *COMMON, "--out", "run.json")
    assert code == 0, err
    code, err, doc = ev(capsys, *external(weights_of(trained)), *COMMON, "--out", "ext.json")
    assert code == 0, err
    # same weights, data, threat (digits' default 0.1 = the quickstart's eval.eps): same numbers
    assert doc["eps"] == run_doc["eps"] == 0.1 and doc["norm"] == "linf"
    assert doc["accuracy"] == run_doc["accuracy"] and doc["worst_case"] == run_doc["worst_case"]
    assert doc["accuracy"]["clean"] > 0.5  # the probe below needs a model that has learnt
    assert [c["name"] for c in doc["checks"]] == [c["name"] for c in run_doc["checks"]]
    prov = doc["provenance"]
    assert prov["target"] == "extmodels:small" and prov["model_kwargs"] == {"width": 16}
    assert prov["checkpoint"] == str(weights_of(trained)) and len(prov["weights_sha256"]) == 64
    assert prov["data"] == "digits" and prov["split"] == "test" and prov["n"] == 120
    assert prov["threat_from"] == "default for digits"
    assert Path("ext.md").read_text().startswith("Evaluation of `extmodels:small`")


def test_a_torch_state_dict_with_a_wrapper_prefix_gives_the_same_result(capsys, here, trained):
    weights = checkpoint.load_weights(weights_of(trained))
    torch.save({"state_dict": {"module." + k: v for k, v in weights.items()}}, here / "w.pt")
    code, err, a = ev(capsys, *external(weights_of(trained)), *COMMON, "--out", "a.json")
    assert code == 0, err
    code, err, b = ev(capsys, *external(here / "w.pt"), *COMMON, "--out", "b.json")
    assert code == 0, err
    assert a["accuracy"] == b["accuracy"]


def test_eps_and_norm_flags_override_the_data_sets_default(capsys, here, trained):
    code, err, doc = ev(capsys, *external(weights_of(trained)), "--attacks", "clean,pgd-5",
                        "--n", "60", "--eps", "0.05", "--out", "e.json")
    assert code == 0, err
    assert doc["eps"] == 0.05 and doc["step_size"] == pytest.approx(0.05 / 4)
    assert doc["provenance"]["threat_from"] == "--eps"


def test_default_destination_is_next_to_the_weights(capsys, here, trained, tmp_path):
    w = tmp_path / "copy.safetensors"
    w.write_bytes(weights_of(trained).read_bytes())
    assert main(["eval", *external(w), "--attacks", "clean", "--n", "20", "--quiet"]) == 0
    assert json.loads((tmp_path / "copy.safetensors.eval.json").read_text())["n_examples"] == 20


def malicious(path: Path) -> Path:
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch /tmp/adaptrain-pwned-external",))

    path.write_bytes(pickle.dumps({"w": Boom()}))
    return path


@pytest.mark.parametrize(("case", "flag", "mentions"), [
    ("no-module", "--model", "cannot import"),
    ("no-attr", "--model", "has no"),
    ("not-a-spec", "--model", "pkg.module:builder"),
    ("builder-fails", "--model", "no GPU here"),
    ("bad-json", "--model-kwargs", "JSON"),
    ("bad-kwarg", "--model-kwargs", "depth"),
    ("other-width", "--weights", "does not fit"),
    ("missing-weights", "--weights", "does not exist"),
    ("no-weights", "--weights", "give the weights"),
    ("pickle", "--weights", "refusing"),
    ("normalised", "--model", "[0, 1]"),
    ("probabilities", "--model", "probabilities"),
    ("five-classes", "--model", "expected logits"),
    ("no-data", "--data", "digits"),
    ("unknown-data", "--data", "allowed"),
    ("no-default-eps", "--eps", "no default l2 budget"),
    ("val-split", "--split", "test split"),
    ("weights-with-a-run", "--weights", "--model"),
    ("data-with-a-run", "--data", "goes with --model"),
    ("model-and-run", "--model", "not both"),
    ("nothing", "adaptrain eval", "--model"),
])
def test_external_mistakes_are_one_line_naming_the_option(capsys, here, trained, case, flag, mentions):
    w = str(weights_of(trained))
    base = ("--data", "digits", "--weights", w)
    argv = {
        "no-module": ("--model", "nosuchmodule:net", *base),
        "no-attr": ("--model", "extmodels:nothing", *base),
        "not-a-spec": ("--model", "extmodels.small", *base),
        "builder-fails": ("--model", "extmodels:broken", *base),
        "bad-json": ("--model", "extmodels:small", "--model-kwargs", "{width: 16}", *base),
        "bad-kwarg": ("--model", "extmodels:small", "--model-kwargs", '{"depth": 3}', *base),
        "other-width": ("--model", "extmodels:small", "--model-kwargs", '{"width": 8}', *base),
        "missing-weights": ("--model", "extmodels:small", "--data", "digits", "--weights", "nope.pt"),
        "no-weights": ("--model", "extmodels:small", "--data", "digits"),
        "pickle": ("--model", "extmodels:small", "--data", "digits", "--weights",
                   str(malicious(here / "evil.pt"))),
        "normalised": ("--model", "extmodels:ExpectsNormalised", *base),
        "probabilities": ("--model", "extmodels:Probabilities", *base),
        "five-classes": ("--model", "extmodels:FiveClasses", *base),
        "no-data": ("--model", "extmodels:small", "--weights", w),
        "unknown-data": ("--model", "extmodels:small", "--data", "imagenet21k", "--weights", w),
        "no-default-eps": ("--model", "extmodels:small", "--norm", "l2", *base),
        "val-split": ("--model", "extmodels:small", "--split", "val", *base),
        "weights-with-a-run": (str(trained), "--weights", w),
        "data-with-a-run": (str(trained), "--data", "digits"),
        "model-and-run": (str(trained), "--model", "extmodels:small", *base),
        "nothing": (),
    }[case]
    code, err, _ = ev(capsys, *argv, "--n", "20", "--attacks", "clean", "--out", "x.json")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {flag}:") and mentions in err, err
    assert not Path("x.json").exists()
    assert not os.path.exists("/tmp/adaptrain-pwned-external")


@pytest.fixture
def no_robustbench():
    """No ``robustbench`` module cached while the test runs; the process's own afterwards."""
    def ours() -> list[str]:
        return [m for m in sys.modules if m == "robustbench" or m.startswith("robustbench.")]

    saved = {m: sys.modules.pop(m) for m in ours()}
    yield
    for m in ours():
        del sys.modules[m]
    sys.modules.update(saved)


@pytest.fixture
def fake_robustbench(tmp_path, monkeypatch, no_robustbench) -> Path:
    """A stand-in ``robustbench`` package on sys.path (the real one is not imported)."""
    pkg = tmp_path / "fakes" / "robustbench"
    (pkg / "model_zoo").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model_zoo" / "enums.py").write_text(textwrap.dedent(FAKE_ENUMS))
    (pkg / "model_zoo" / "__init__.py").write_text(textwrap.dedent(FAKE_ZOO))
    monkeypatch.syspath_prepend(str(tmp_path / "fakes"))
    return tmp_path


def test_a_robustbench_model_on_disk_is_evaluated_from_its_layout(capsys, here, trained, fake_robustbench):
    # RobustBench's layout and its authors' habits: {"state_dict": {"module.<key>": ...}}
    weights = checkpoint.load_weights(weights_of(trained))
    where = here / "zoo" / "digits" / "Linf"
    where.mkdir(parents=True)
    torch.save({"state_dict": {"module." + k: v for k, v in weights.items()}, "epoch": 3},
               where / "Tiny2026Test.pt")
    code, err, rb = ev(capsys, "--model", "robustbench:Tiny2026Test", "--data", "digits",
                       "--model-dir", str(here / "zoo"), *COMMON, "--out", "rb.json")
    assert code == 0, err
    code, err, ext = ev(capsys, *external(weights_of(trained)), *COMMON, "--out", "ext.json")
    assert code == 0, err
    assert rb["accuracy"] == ext["accuracy"]
    assert rb["provenance"]["checkpoint"] == str(where / "Tiny2026Test.pt")
    # not on disk: nothing is downloaded, the error names where it was looked for
    code, err, _ = ev(capsys, "--model", "robustbench:Tiny2026Test", "--data", "digits",
                      "--model-dir", str(here / "empty"), "--out", "y.json")
    assert code == 2 and err.startswith("error: --model-dir:") and "Tiny2026Test.pt" in err
    code, err, _ = ev(capsys, "--model", "robustbench:Nobody2030", "--data", "digits",
                      "--model-dir", str(here / "zoo"), "--out", "y.json")
    assert code == 2 and err.startswith("error: --model:") and "Nobody2030" in err
    # a pickle payload at the layout's path is refused like any other weights file
    malicious(where / "Tiny2026Test.pt")
    code, err, _ = ev(capsys, "--model", "robustbench:Tiny2026Test", "--data", "digits",
                      "--model-dir", str(here / "zoo"), "--out", "y.json")
    assert code == 2 and "refusing" in err and len(err.splitlines()) == 1
    assert not os.path.exists("/tmp/adaptrain-pwned-external")


def test_robustbench_models_without_the_package_name_it(capsys, here, no_robustbench):
    sys.modules["robustbench"] = None  # import robustbench -> ImportError (removed afterwards)
    code, err, _ = ev(capsys, "--model", "robustbench:Carmon2019Unlabeled", "--data", "cifar10",
                      "--out", "y.json")
    assert code == 2 and err.startswith("error: --model:") and "needs the robustbench package" in err
