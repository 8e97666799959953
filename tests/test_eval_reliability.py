"""`adaptrain eval` cannot lose, mix or misreport an evaluation (issue 16, the evaluation side).

* every hostile flag value is one line ``error: --flag: ...`` with exit code 2, before any model or
  data is loaded and before anything is written (a fuzz test over every flag);
* an unwritable ``--out`` is refused before the evaluation starts, not after it;
* a model with non-finite weights or buffers is refused as a diverged model, not as a BatchNorm
  problem;
* two evaluations of one destination cannot run at once (an exclusive lock);
* an evaluation killed inside an attack (mid-PGD, mid-APGD, mid-Square) resumes to exactly the
  result of an uninterrupted one.

The kill is simulated in-process (a subprocess costs ~9 s of imports): a BaseException raised at
the k-th loss evaluation / forward pass inside the attack, after which the state file is put back
to what was on disk at that moment, since under SIGKILL the evaluation's ``finally`` would not
have saved anything more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from adaptrain import checkpoint, fileio
from adaptrain.cli import main
from adaptrain.evaluate import EvalSettings, EvaluationError, evaluate, guards
from adaptrain.evaluate import aa as aa_mod
from adaptrain.evaluate import own as own_mod
from toy_models import Linear

# --------------------------------------------------------------------------------------------
# a tiny target on the embedded digits data, built once


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """An untrained quickstart model (small CNN on digits) saved as a bare checkpoint; evaluated
    with ``--config quickstart``, so every case costs milliseconds (refusals) or well under a
    second (accepted values)."""
    from adaptrain.config import build_config
    from adaptrain.data import load_arrays
    from adaptrain.models import build_model

    cfg = build_config("quickstart")
    spec = load_arrays(cfg.data.name, cfg.data.root, cfg.data.download).spec
    with torch.random.fork_rng():  # leave the global generator as it was
        torch.manual_seed(0)
        model = build_model(cfg.model, spec)
    path = tmp_path_factory.mktemp("eval-target") / "ck"
    checkpoint.save(path, model)
    return path


BASE = ("--config", "quickstart", "--n", "16", "--attacks", "clean,pgd-1", "--quiet")


def run_cli(capsys, argv: list[str]) -> tuple[int | str, str]:
    """(exit code, stderr) of ``adaptrain.cli.main``, or ("escaped: <exception>", stderr) when
    anything (SystemExit from argparse included) escapes it."""
    try:
        code: int | str = main(argv)
    except SystemExit as exc:
        code = f"escaped: SystemExit({exc.code})"
    except Exception as exc:  # noqa: BLE001 - the fuzz test counts every escaping exception
        code = f"escaped: {type(exc).__name__}: {str(exc)[:80]}"
    return code, capsys.readouterr().err.strip()


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --------------------------------------------------------------------------------------------
# 6. fuzz: every flag with hostile values

HOSTILE = ("nan", "inf", "-inf", "1e309", "-1e309", "-1", "0", "1e30", "99999999999999999999",
           "1.5", "abc", "8/0", "", "  ", "None", "[]")
EXTRA: dict[str, tuple[str, ...]] = {
    "--attacks": ("pgd-99999999999", "pgd-5-99999999", "pgd-0", "pgd-nan", "pgd-1e309", "clean,,",
                  "aa,nan", "cw", "pgd-2-0"),
    "--aa-version": ("Standard ", "custom2"),
    "--aa-attacks": ("apgd-ce,nan", ","),
    "--n": ("1e3", "2.0e9"),
    "--eps": ("2", "1.0001", "255/255.0001e5", "1/0", "-0/0"),
    "--step-size": ("2", "eps/0", "eps/-4", "eps*nan", "eps*inf", "eps/inf", "eps*0", "eps*1e309", "eps/"),
    "--eps-curve": ("0,nan", "0,2", "0,8/0", "0,-1/255", "0,inf", ",,", "0,,abc"),
    "--curve-attack": ("pgd-99999999999", "pgd-0"),
    "--curve-step": ("2", "eps/0", "eps*nan", "eps*0"),
    "--corruptions": ("gaussian_noise,nan", ","),
    "--severities": ("6", "1,2,x", "1,,", "-0.5"),
    "--seed": ("18446744073709551616", "2147483648"),
    "--batch-size": ("1e7",),
    "--device": ("banana", "cuda", "cuda:0", "cuda:-1", "cuda:x", "mps", "cpu:banana", "CUDA"),
    "--config": ("no-such-preset", "{file}"),
    "--out": ("out.txt", "{dir}", "{file}/x.json", "/proc/adaptrain-fuzz.json", ".json"),
}
# the only (flag, value) pairs that may be accepted: they mean something sensible
LEGIT = {("--seed", "0"), ("--eps", "0"), ("--eps-curve", ""), ("--eps-curve", "0"),
         ("--eps-curve", "  "), ("--corruptions", ""), ("--corruptions", "  "), ("--n", "1e3"),
         ("--severities", "0")}  # no curve, no corruptions, n = 1000, severity 0 = clean
FLAGS = ("--attacks", "--aa-version", "--aa-attacks", "--n", "--eps", "--step-size", "--norm",
         "--eps-curve", "--curve-attack", "--curve-step", "--corruptions", "--severities",
         "--corruption-table", "--checkpoint", "--config", "--split", "--seed", "--batch-size",
         "--device", "--out")


def fuzz_values(flag: str, work: Path) -> list[str]:
    """The hostile values tried for ``flag``; {file} / {dir} name a file / directory in ``work``."""
    values = [*HOSTILE, *EXTRA.get(flag, ())]
    return [v.format(file=work / "a-file", dir=work / "a-dir") for v in values]


def fuzz_outcome(capsys, target: Path, work: Path, flag: str, value: str, i: int) -> str:
    """'refused', 'accepted' or what went wrong: a clean refusal is exit 2 with one stderr line
    ``error: <flag>: ...`` and nothing written; an accepted value must produce the result file."""
    out = work / f"case{i}.json"
    before = listing(work)
    code, err = run_cli(capsys, ["eval", str(target), *BASE, "--out", str(out), f"{flag}={value}"])
    if isinstance(code, str):
        return code
    if "Traceback" in err:
        return f"traceback on stderr: {err[-200:]!r}"
    if code == 0:
        return "accepted"
    lines = err.splitlines()
    if code != 2 or len(lines) != 1 or not lines[0].startswith(f"error: {flag}:"):
        return f"bad refusal (exit {code}): {err!r}"
    if listing(work) != before:
        return f"refused but wrote {sorted(listing(work) - before)}"
    return "refused"


def fuzz_flag(capsys, target: Path, work: Path, flag: str) -> dict[str, str]:
    """Outcome per value for one flag (run from ``work`` so that relative paths land there)."""
    (work / "a-dir").mkdir(exist_ok=True)
    (work / "a-file").write_text("not a directory, not a config")
    return {v: fuzz_outcome(capsys, target, work, flag, v, i)
            for i, v in enumerate(fuzz_values(flag, work))}


@pytest.mark.parametrize("flag", FLAGS)
def test_fuzz_every_eval_flag_refuses_hostile_values_in_one_line(capsys, target, tmp_path,
                                                                  monkeypatch, flag):
    monkeypatch.chdir(tmp_path)
    outcomes = fuzz_flag(capsys, target, tmp_path, flag)
    wrong = {v: o for v, o in outcomes.items()
             if o != "refused" and not (o == "accepted" and (flag, v) in LEGIT)}
    assert not wrong, wrong
    refused_legit = [v for v, o in outcomes.items() if (flag, v) in LEGIT and o != "accepted"]
    assert not refused_legit, refused_legit


def test_a_missing_or_empty_target_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for t in ("", "nothing-here", str(tmp_path)):
        code, err = run_cli(capsys, ["eval", t, *BASE])
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (t, err)
    assert listing(tmp_path) == set()


# --------------------------------------------------------------------------------------------
# 1. bad flags named in the issue, refused before anything is loaded


@pytest.mark.parametrize(("argv", "flag", "mentions"), [
    (("--eps", "abc"), "--eps", "8/255"),
    (("--eps", "nan"), "--eps", "finite"),
    (("--eps", "inf"), "--eps", "finite"),
    (("--eps", "2"), "--eps", "<= 1"),
    (("--eps", "8/0"), "--eps", "zero"),
    (("--eps-curve", "0,8/0"), "--eps-curve", "zero"),
    (("--eps-curve", "0,nan"), "--eps-curve", "finite"),
    (("--step-size", "2"), "--step-size", "(0, 1]"),
    (("--step-size", "eps/0"), "--step-size", "zero"),
    (("--curve-step", "inf"), "--curve-step", "finite"),
    (("--device", "banana"), "--device", "cuda:N"),
    (("--n", "0"), "--n", ">= 1"),
    (("--n", "-1"), "--n", ">= 1"),
    (("--n", "1e309"), "--n", "integer"),
    (("--batch-size", "0"), "--batch-size", ">= 1"),
    (("--seed", "-1"), "--seed", ">= 0"),
    (("--seed", "1e309"), "--seed", "integer"),
    (("--severities", "1,9"), "--severities", "0..5"),
    (("--attacks", "pgd-99999999999"), "--attacks", "steps"),
    (("--attacks", ""), "--attacks", "at least one"),
])
def test_bad_flags_are_one_line_before_loading(capsys, tmp_path, monkeypatch, argv, flag, mentions):
    import adaptrain.cli.eval as eval_cli

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(eval_cli, "load_weights_into_model", no_loading)
    code, err = run_cli(capsys, ["eval", str(tmp_path / "nothing-here"), "--config", "quickstart",
                                 *argv])
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: {flag}:"), err
    assert mentions in err, err


def test_cuda_is_refused_naming_the_device_flag_when_unavailable(capsys, tmp_path):
    if torch.cuda.is_available():  # pragma: no cover - CPU-only CI
        pytest.skip("CUDA is available here")
    for dev in ("cuda", "cuda:1"):
        code, err = run_cli(capsys, ["eval", str(tmp_path), "--config", "quickstart", "--device", dev])
        assert code == 2 and err.startswith("error: --device:") and "CUDA" in err, err


# --------------------------------------------------------------------------------------------
# 2. --out unwritable: refused before the evaluation


@pytest.mark.parametrize("where", ["under-a-file", "proc", "a-directory"])
def test_unwritable_out_is_refused_before_the_evaluation(capsys, target, tmp_path, monkeypatch, where):
    import adaptrain.evaluate as evaluate_pkg

    blocker = tmp_path / "file"
    blocker.write_text("x")
    (tmp_path / "dir.json").mkdir()
    out = {"under-a-file": blocker / "sub" / "r.json", "proc": Path("/proc/adaptrain-test/r.json"),
           "a-directory": tmp_path / "dir.json"}[where]

    def no_evaluation(*a, **k):
        raise AssertionError("the evaluation started before --out was checked")

    monkeypatch.setattr(evaluate_pkg, "evaluate", no_evaluation)
    code, err = run_cli(capsys, ["eval", str(target), *BASE, "--out", str(out)])
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: --out:"), err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_a_read_only_out_folder_is_refused(capsys, target, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, err = run_cli(capsys, ["eval", str(target), *BASE, "--out", str(folder / "r.json")])
    finally:
        folder.chmod(0o755)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: --out:"), err
    assert list(folder.iterdir()) == []


def test_results_and_state_are_written_through_fileio(capsys, target, tmp_path, monkeypatch):
    written: list[str] = []
    real = fileio.write_file

    def recording(path, data):
        written.append(Path(path).name)
        real(path, data)

    monkeypatch.setattr(fileio, "write_file", recording)
    out = tmp_path / "r.json"
    code, err = run_cli(capsys, ["eval", str(target), *BASE, "--out", str(out)])
    assert code == 0, err
    assert {"r.json", "r.md", "r.state.json"} <= set(written), written
    assert not (tmp_path / "r.state.json").exists()
    assert json.loads(out.read_text())["n_examples"] == 16


# --------------------------------------------------------------------------------------------
# 3. a diverged model is named as such


def diverged(tensor_name: str) -> nn.Module:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 10))
    with torch.no_grad():
        dict(model.named_parameters(), **dict(model.named_buffers()))[tensor_name].fill_(float("nan"))
    return model.eval()


@pytest.mark.parametrize("tensor_name", ["1.running_var", "3.weight"])
def test_a_model_with_non_finite_weights_is_refused_as_diverged(tensor_name):
    model = diverged(tensor_name)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    with pytest.raises(EvaluationError) as info:
        evaluate(model, x, y, EvalSettings(attacks=["clean", "pgd-2"], batch_size=8), progress=False)
    msg = str(info.value)
    assert tensor_name in msg and "diverged" in msg and "BatchNorm statistics" not in msg


def test_the_buffer_check_is_nan_aware():
    model = diverged("1.running_var")
    before = guards.buffers_snapshot(model)
    guards.assert_buffers_unchanged(model, before)  # NaN == NaN here: nothing changed
    model[1].running_mean.add_(1.0)
    with pytest.raises(EvaluationError, match="train mode"):
        guards.assert_buffers_unchanged(model, before)


def test_cli_refuses_a_diverged_checkpoint_in_one_line(capsys, target, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    weights = load_file(str(target / checkpoint.MODEL_FILE))
    name = next(k for k in weights if k.endswith("running_var"))
    weights[name] = torch.full_like(weights[name], float("inf"))
    save_file(weights, str(bad / checkpoint.MODEL_FILE))
    out = tmp_path / "r.json"
    code, err = run_cli(capsys, ["eval", str(bad), *BASE, "--out", str(out)])
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: model:"), err
    assert name in err and "diverged" in err and "BatchNorm statistics" not in err
    assert not out.exists() and not out.with_suffix(".md").exists()


# --------------------------------------------------------------------------------------------
# 4. one evaluation per destination at a time


def lock_path(dest: Path) -> Path:
    return dest.with_name("." + dest.name + ".lock")


def test_a_second_evaluation_of_one_destination_is_refused(capsys, target, tmp_path):
    out = tmp_path / "r.json"
    holder = subprocess.Popen(  # a real second process holding the lock (no torch import: fast)
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+b'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
         str(lock_path(out))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = run_cli(capsys, ["eval", str(target), *BASE, "--out", str(out)])
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: --out:"), err
        assert "another adaptrain process" in err and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    code, err = run_cli(capsys, ["eval", str(target), *BASE, "--out", str(out)])
    assert code == 0 and out.is_file(), err


def test_the_lock_is_held_for_the_whole_evaluation(capsys, target, tmp_path, monkeypatch):
    import adaptrain.evaluate as evaluate_pkg

    out = tmp_path / "r.json"
    real = evaluate_pkg.evaluate
    seen: list[str] = []

    def probing(*args, **kwargs):
        try:
            with fileio.exclusive_lock(lock_path(out), what="--out", holder="probe"):
                seen.append("free")
        except Exception as exc:  # noqa: BLE001
            seen.append(type(exc).__name__)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_pkg, "evaluate", probing)
    code, err = run_cli(capsys, ["eval", str(target), *BASE, "--out", str(out)])
    assert code == 0, err
    assert seen == ["ConfigError"]
    with fileio.exclusive_lock(lock_path(out), what="--out", holder="probe"):
        pass  # released afterwards


# --------------------------------------------------------------------------------------------
# 5. an evaluation killed inside an attack resumes to the uninterrupted result


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing in the evaluation catches it."""


def teacher(n: int = 40, shape=(3, 4, 4), c: int = 10, seed: int = 0, dtype=torch.float64):
    """Images in [0.25, 0.75] labelled by a random linear teacher (100 % clean accuracy);
    float32 for AutoAttack, whose random starts are float32."""
    g = torch.Generator().manual_seed(seed)
    x = (0.25 + 0.5 * torch.rand(n, *shape, generator=g)).to(dtype)
    model = Linear(x[0].numel(), c, seed=seed + 1, dtype=dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model.eval(), x, y


class SigkillAt:
    """Raises :class:`Killed` at the ``at``-th counted event, after putting the state file back
    to what was on disk at that moment: the handlers that run while the exception unwinds (the
    evaluation's ``finally: save``) would not have run under SIGKILL."""

    def __init__(self, state_path: Path, at: int) -> None:
        self.state_path, self.at, self.count = state_path, at, 0

    def tick(self) -> None:
        self.count += 1
        if self.count == self.at:
            self.on_disk = self.state_path.read_bytes() if self.state_path.exists() else None
            raise Killed

    def restore(self) -> None:
        if self.on_disk is None:
            self.state_path.unlink(missing_ok=True)
        else:
            self.state_path.write_bytes(self.on_disk)


def kill_and_resume(tmp_path: Path, model: nn.Module, x, y, settings: EvalSettings, at: int,
                    arm: Callable[[SigkillAt], Callable[[], None]], save_every_s: float = 0.0,
                    resume: EvalSettings | None = None, log: Callable[[str], None] | None = None):
    """Run ``settings`` until the ``at``-th event that ``arm`` counts, keep what a SIGKILL would
    have left on disk, resume (with ``resume`` if given); -> (the state on disk after the kill,
    the resumed result)."""
    state = tmp_path / f"kill-{at}.state.json"
    killer = SigkillAt(state, at)
    disarm = arm(killer)
    with pytest.raises(Killed):
        evaluate(model, x, y, settings, state_path=state, progress=False, save_every_s=save_every_s)
    disarm()
    killer.restore()
    left = json.loads(state.read_text()) if state.exists() else {"jobs": {}}
    resumed = evaluate(model, x, y, resume or settings, state_path=state, progress=False,
                       save_every_s=save_every_s, log=log)
    return left, resumed


_UNINTERRUPTED: dict[str, dict] = {}


def uninterrupted(name: str, model: nn.Module, x, y, settings: EvalSettings) -> dict:
    """The uninterrupted result, computed once per test session for each named setting (the
    models and data are deterministic), to keep the kill tests to a few seconds."""
    if name not in _UNINTERRUPTED:
        _UNINTERRUPTED[name] = evaluate(model, x, y, settings, progress=False)
    return _UNINTERRUPTED[name]


def assert_same_result(a: dict, b: dict) -> None:
    assert a["accuracy"] == b["accuracy"]
    assert a["worst_case"] == b["worst_case"]
    assert a["per_example"].keys() == b["per_example"].keys()
    for k, v in a["per_example"].items():
        assert torch.equal(v, b["per_example"][k]), k
    assert [c["ok"] for c in a["checks"]] == [c["ok"] for c in b["checks"]]


def done(left: dict, job: str) -> int:
    res = left["jobs"].get(job, {}).get("results", "")
    return sum(ch != "." for ch in res)


PGD = {"attacks": ["pgd-6-2", "cw-5"], "eps": 6 / 255, "step": "eps/4", "batch_size": 6, "seed": 1}
# with these, pgd-6-2 runs 4 chunks of 6 examples and 14 loss evaluations per chunk (two
# restarts), cw-5 four chunks of 6 each: the kill points below land where their ids say


def count_loss_calls(monkeypatch) -> Callable[[SigkillAt], Callable[[], None]]:
    """Counts every loss evaluation inside the package's own attacks (one per PGD iterate)."""
    real = own_mod.make_loss

    def arm(killer: SigkillAt) -> Callable[[], None]:
        def make_loss(name):
            fn = real(name)

            def counted(*args, **kwargs):
                killer.tick()
                return fn(*args, **kwargs)
            return counted

        monkeypatch.setattr(own_mod, "make_loss", make_loss)
        return lambda: monkeypatch.setattr(own_mod, "make_loss", real)
    return arm


def count_chunks(monkeypatch) -> Callable[[SigkillAt], Callable[[], None]]:
    """Counts chunks of the package's own attacks: a kill before a chunk starts."""
    import adaptrain.evaluate.runner as runner

    real = runner.own_correct

    def arm(killer: SigkillAt) -> Callable[[], None]:
        def chunk(*args, **kwargs):
            killer.tick()
            return real(*args, **kwargs)

        monkeypatch.setattr(runner, "own_correct", chunk)
        return lambda: monkeypatch.setattr(runner, "own_correct", real)
    return arm


def test_a_kill_between_chunks_of_one_pgd_job_resumes_exactly(tmp_path, monkeypatch):
    model, x, y = teacher(n=24)
    settings = EvalSettings(**PGD)
    full = uninterrupted("pgd", model, x, y, settings)
    assert 0 < full["worst_case"] < full["accuracy"]["clean"]  # the attacks break some, not all
    left, resumed = kill_and_resume(tmp_path, model, x, y, settings, 3, count_chunks(monkeypatch))
    assert done(left, "pgd-6-2") == 12 and not left["jobs"]["pgd-6-2"].get("finished")
    assert_same_result(resumed, full)


@pytest.mark.parametrize(("at", "save_every_s", "pgd_done"), [
    (5, 0.0, 0),  # first chunk, first restart
    (20, 0.0, 6),  # second chunk
    (35, 0.0, 12),  # third chunk, second restart
    (60, 0.0, 24),  # in cw-5, after pgd-6-2 finished
    (35, 3600.0, 0),  # throttled saving: only finished jobs were on disk
], ids=["chunk1", "chunk2", "chunk3-restart2", "cw", "throttled"])
def test_a_kill_inside_a_pgd_chunk_resumes_exactly(tmp_path, monkeypatch, at, save_every_s, pgd_done):
    model, x, y = teacher(n=24)
    settings = EvalSettings(**PGD)
    full = uninterrupted("pgd", model, x, y, settings)
    left, resumed = kill_and_resume(tmp_path, model, x, y, settings, at, count_loss_calls(monkeypatch),
                                    save_every_s=save_every_s)
    assert done(left, "pgd-6-2") == pgd_done
    assert_same_result(resumed, full)


@pytest.fixture
def short_autoattack(monkeypatch) -> None:
    """The official AutoAttack with 10 APGD iterations, 3 target classes and 20 Square queries
    instead of 100, 9 and 5,000: the same code (per-call seeding, its own cascade, checks), in a
    second instead of minutes."""
    import pyautoattack

    real = pyautoattack.AutoAttack

    def shorten(apgd) -> None:  # as APGDAttack.__init__ derives them from n_iter
        apgd.n_iter = 10
        apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr = 2, 1, 1

    class Short(real):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            shorten(self.apgd)
            shorten(self.apgd_targeted)
            self.apgd_targeted.n_target_classes = 3
            self.square.n_queries = 20

    monkeypatch.setattr(pyautoattack, "AutoAttack", Short)


AA = {"attacks": ["pgd-3", "aa"], "aa_version": "custom", "aa_attacks": ("apgd-ce", "apgd-t"),
      "eps": 8 / 255, "step": "eps/4", "batch_size": 8, "seed": 2}
# with these (and the short AutoAttack), APGD-CE runs chunks of 8, 8, 2 examples with 11
# gradient steps each, APGD-T chunks of 8 and 4 with 33 (3 target classes)


class Tripwire(nn.Module):
    """The model, with a counter of forward passes made inside one AutoAttack sub-attack."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.sub: str | None = None
        self.killer: SigkillAt | None = None
        self.watch = ""
        self.grad_only = True  # count APGD's gradient steps only (not its checks or final pass)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.killer is not None and self.sub == self.watch and (x.requires_grad or not self.grad_only):
            self.killer.tick()
        return self.inner(x)


def count_aa_forwards(monkeypatch, model: Tripwire, watch: str) -> Callable[[SigkillAt], Callable[[], None]]:
    """Counts forward passes inside AutoAttack sub-attack ``watch`` (APGD: one per iterate)."""
    real = aa_mod.aa_correct

    def arm(killer: SigkillAt) -> Callable[[], None]:
        def tracked(net, x, y, sub, **kwargs):
            model.sub = sub
            try:
                return real(net, x, y, sub, **kwargs)
            finally:
                model.sub = None

        model.killer, model.watch = killer, watch
        monkeypatch.setattr(aa_mod, "aa_correct", tracked)

        def disarm() -> None:
            model.killer = None
            monkeypatch.setattr(aa_mod, "aa_correct", real)
        return disarm
    return arm


@pytest.mark.parametrize(("watch", "at", "job_done"), [
    ("apgd-ce", 5, 0),  # first chunk
    ("apgd-ce", 16, 8),  # second chunk
    ("apgd-t", 50, 8),  # second chunk, second target class
])
def test_a_kill_inside_apgd_of_autoattack_resumes_exactly(tmp_path, monkeypatch, short_autoattack,
                                                          watch, at, job_done):
    inner, x, y = teacher(n=24, dtype=torch.float32)
    model = Tripwire(inner)
    settings = EvalSettings(**AA)
    full = uninterrupted("aa", model, x, y, settings)
    assert 0 < full["worst_case"] < full["accuracy"]["pgd-3"]  # AutoAttack breaks more than PGD
    left, resumed = kill_and_resume(tmp_path, model, x, y, settings, at,
                                    count_aa_forwards(monkeypatch, model, watch))
    job = f"aa/{watch}"
    assert left["jobs"]["pgd-3"].get("finished") and not left["jobs"].get(job, {}).get("finished")
    assert done(left, job) == job_done
    assert_same_result(resumed, full)


def mlp_teacher(n: int = 24) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small random tanh network labelling its own inputs: non-linear enough for Square's
    random search to depend on its random draws (a linear model's does not)."""
    g = torch.Generator().manual_seed(0)
    x = 0.25 + 0.5 * torch.rand(n, 3, 4, 4, generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = nn.Sequential(nn.Flatten(), nn.Linear(48, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                              nn.Linear(64, 10)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
        y = model(x).argmax(1)
    return model, x, y


SQUARE = {"attacks": ["aa"], "aa_version": "custom", "aa_attacks": ("square",), "eps": 5 / 255,
          "step": "eps/4", "seed": 2}


@pytest.mark.parametrize(("at", "resume_batch"), [(60, 8), (40, 7)])
def test_a_kill_inside_square_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch,
                                                                 short_autoattack, at, resume_batch):
    """Square draws its random squares per call, i.e. per chunk, so its results depend on how the
    examples are chunked: a resume with the same batch size re-forms the same chunks (exact);
    one with another batch size must start the job over, or it mixes two chunkings into a result
    that neither uninterrupted run gives (what happened before the batch size was keyed)."""
    inner, x, y = mlp_teacher()
    model = Tripwire(inner)
    model.grad_only = False
    by_batch = {bs: uninterrupted(f"square-{bs}", model, x, y, EvalSettings(**SQUARE, batch_size=bs))
                for bs in (8, 7)}
    assert not torch.equal(by_batch[8]["per_example"]["aa/square"], by_batch[7]["per_example"]["aa/square"])
    logged: list[str] = []
    left, resumed = kill_and_resume(tmp_path, model, x, y, EvalSettings(**SQUARE, batch_size=8), at,
                                    count_aa_forwards(monkeypatch, model, "square"),
                                    resume=EvalSettings(**SQUARE, batch_size=resume_batch),
                                    log=logged.append)
    assert 0 < done(left, "aa/square") < 24
    assert_same_result(resumed, by_batch[resume_batch])
    assert any("batch size" in m for m in logged) == (resume_batch != 8), logged


@pytest.mark.parametrize("content", ["[1, 2]", "{not json", '{"key": "x", "n": 3, "jobs": []}'])
def test_a_malformed_or_foreign_state_file_is_ignored_with_a_line(tmp_path, content):
    model, x, y = teacher(n=8)
    settings = EvalSettings(attacks=["pgd-2"], eps=6 / 255, step="eps/4", batch_size=8)
    state = tmp_path / "s.state.json"
    state.write_text(content)
    logged: list[str] = []
    r = evaluate(model, x, y, settings, state_path=state, progress=False, log=logged.append)
    assert r["accuracy"] == evaluate(model, x, y, settings, progress=False)["accuracy"]
    assert any(m.startswith("ignoring") for m in logged), logged


def test_a_malformed_state_with_the_right_key_is_ignored(tmp_path):
    model, x, y = teacher(n=8)
    settings = EvalSettings(attacks=["pgd-2"], eps=6 / 255, step="eps/4", batch_size=8)
    state = tmp_path / "s.state.json"
    evaluate(model, x, y, settings, state_path=state, progress=False)
    saved = json.loads(state.read_text())
    saved["jobs"]["pgd-2"]["results"] = "01x"  # wrong length and character
    state.write_text(json.dumps(saved))
    logged: list[str] = []
    r = evaluate(model, x, y, settings, state_path=state, progress=False, log=logged.append)
    assert r["accuracy"] == evaluate(model, x, y, settings, progress=False)["accuracy"]
    assert any(m.startswith("ignoring") for m in logged), logged
