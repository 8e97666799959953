"""Does a run survive a kill at any write step, and do the reported failures (a)-(h) still happen?
Measured on the trees before and after the crash-safety and error-reporting fixes.

What it measures, for two source trees (``--before``, ``--after``; each is put first on
PYTHONPATH of every child process, so the same interpreter runs either):

1. **Kill-point sweep.** The run ``adaptrain train quickstart epochs=2 data.subset=128
   data.batch_size=32 model.width=8 optim.schedule=constant strategy.eps=0.05 eval.n=48
   eval.select=clean --quiet --out DIR`` goes once to the end while counting its write steps
   (this is also the reference run). Write steps are counted at a level both trees have:
   ``os.replace`` (every rename, pathlib's ``Path.replace`` included), ``shutil.rmtree``,
   ``torch.save``, the safetensors writer as ``adaptrain.checkpoint`` looks it up
   (``save_file`` before, ``safetensors_bytes`` after), ``adaptrain.fileio.write_file`` where
   it exists and ``pathlib.Path.write_text``; only calls on paths inside DIR count (and the
   in-memory serialisations). The 2nd batch of each epoch (``adaptrain.train.training_loss``)
   is a mid-epoch point. Then, for every step k, a fresh interpreter runs the same command and
   SIGKILLs itself just before step k; ``adaptrain train --resume DIR --quiet`` follows (what a
   user types; when the kill came before ``config.yaml`` existed and the resume is refused, the
   original command is run again), and the result is compared with the reference run:
   ``identical`` means last/ and best/ ``model.safetensors`` byte-equal, ``metrics.csv`` equal
   but for its ``*_time_s`` columns, ``summary.json`` equal but for ``wall_time_s``,
   ``config.yaml`` equal, no file or directory the reference lacks (``.last.*``, ``.best.*``,
   temporary files), and no epoch trained again whose complete checkpoint was on disk at the
   kill. Every child runs with one thread (OMP_NUM_THREADS=1, ``torch.set_num_threads(1)``),
   so runs are bit-reproducible.
2. **The single-command reproductions of the reported failures** (a)-(h), each run against both trees, with
   the exit code, the first line of stderr and whether the bad state happened.

Both trees run one after the other, never at once (about 40 minutes in all on 2 CPU cores:
each child pays ~9 s of imports). Measure checkouts of their own, so that commits landing
meanwhile cannot change the code between kill points. From the repository root:

    git worktree add --detach /tmp/old ae69dfe && git worktree add --detach /tmp/new HEAD
    python benchmarks/reliability.py --before /tmp/old/src --after /tmp/new/src \\
        --work /tmp/reliability --out docs/reliability-measured.md

``--reuse`` takes the per-tree results already saved as JSON in ``--work`` instead of
measuring again; ``--points 0,5`` limits the sweep to those kill points and ``--parts sweep``
or ``--parts cases`` measures one part (quick checks).
"""

from __future__ import annotations

import argparse
import csv
import difflib
import hashlib
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from itertools import zip_longest
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

SWEEP = ["train", "quickstart", "epochs=2", "data.subset=128", "data.batch_size=32", "model.width=8",
         "optim.schedule=constant", "strategy.eps=0.05", "eval.n=48", "eval.select=clean", "--quiet"]
SMALL = {"epochs": "1", "data.subset": "128", "model.width": "4", "eval.n": "32"}
MODEL, STATE = "model.safetensors", "state.pt"
HEX = re.compile(r"-[0-9a-f]{8}(?![0-9a-f])")
KILLED = -int(signal.SIGKILL)
TIMEOUT = 900

# Runs in each sweep child (python -c BOOT SPEC_JSON): counts write steps inside the run
# directory, SIGKILLs itself before step kill_at, and writes the steps and the epochs it
# trained to spec["events"] when it ends normally.
BOOT = r'''
import json, os, pathlib, re, shutil, signal, sys
spec = json.loads(sys.argv[1])
import torch
torch.set_num_threads(1)
import adaptrain.checkpoint as ck
import adaptrain.train as tr
from adaptrain.cli import main
try:
    import adaptrain.fileio as fio
except ImportError:
    fio = None
root = os.path.realpath(spec["root"])
kill_at = spec["kill_at"]
steps, epochs = [], []

def rel(p):
    if not isinstance(p, (str, os.PathLike)):
        return None
    r = os.path.relpath(os.path.realpath(p), root)
    if r.startswith(".."):
        return None
    return re.sub(r"-[0-9a-f]{8}(?![0-9a-f])", "-*", pathlib.Path(r).as_posix())

def step(label):
    if kill_at is not None and len(steps) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    steps.append([label, epochs[-1] if epochs else 0])

def wrap(owner, name, label_of):
    orig = getattr(owner, name)
    def wrapper(*a, **k):
        label = label_of(*a, **k)
        if label is not None:
            step(label)
        return orig(*a, **k)
    setattr(owner, name, wrapper)

def at(kind, p):
    r = rel(p)
    return None if r is None else f"{kind} {r}"

def rename(src, dst, *a, **k):
    s, d = rel(src), rel(dst)
    return None if s is None and d is None else f"rename {s} -> {d}"

def save(obj, f, *a, **k):
    return at("torch.save", f) if isinstance(f, (str, os.PathLike)) else "torch.save (in memory)"

wrap(os, "replace", rename)
wrap(shutil, "rmtree", lambda p, *a, **k: at("remove", p))
wrap(torch, "save", save)
wrap(pathlib.Path, "write_text", lambda self, *a, **k: at("write_text", self))
if hasattr(ck, "save_file"):
    wrap(ck, "save_file", lambda t, f, *a, **k: at("save_file", f))
if hasattr(ck, "safetensors_bytes"):
    wrap(ck, "safetensors_bytes", lambda *a, **k: "safetensors.save (in memory)")
if fio is not None and hasattr(fio, "write_file"):
    wrap(fio, "write_file", lambda p, *a, **k: at("write_file", p))
loss_fn = tr.training_loss

def loss(run, model, batch, *a, **k):
    if k.get("commit", True):
        e = batch.step.epoch + 1
        if not epochs or epochs[-1] != e:
            epochs.append(e)
        if batch.step.batch == 1:
            step(f"batch {e}.2")
    return loss_fn(run, model, batch, *a, **k)

tr.training_loss = loss
code = 1
try:
    code = main(spec["argv"])
finally:
    if spec.get("events"):
        with open(spec["events"], "w") as fh:
            json.dump({"steps": steps, "epochs": epochs}, fh)
sys.exit(code)
'''


@dataclass
class Proc:
    """A finished child: exit code (negative: killed by that signal), output, and for sweep
    children the write steps it went through ([label, epoch]) and the epochs it trained."""

    code: int
    stdout: str
    stderr: str
    steps: list[list[Any]] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)


def child_env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(src), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def boot(src: Path, argv: list[str], root: Path, kill_at: int | None, events: Path) -> Proc:
    """``adaptrain <argv>`` under the counting bootstrap (killed before step ``kill_at``)."""
    events.unlink(missing_ok=True)
    spec = {"argv": argv, "root": str(root), "kill_at": kill_at, "events": str(events)}
    p = subprocess.run([sys.executable, "-c", BOOT, json.dumps(spec)], env=child_env(src),
                       capture_output=True, text=True, timeout=TIMEOUT)
    ev = json.loads(events.read_text()) if events.is_file() else {"steps": [], "epochs": []}
    return Proc(p.returncode, p.stdout, p.stderr, ev["steps"], ev["epochs"])


def cli(src: Path, argv: list[str]) -> Proc:
    """``adaptrain <argv>`` exactly as a user runs it (``python -m adaptrain.cli``)."""
    p = subprocess.run([sys.executable, "-m", "adaptrain.cli", *argv], env=child_env(src),
                       capture_output=True, text=True, timeout=TIMEOUT)
    return Proc(p.returncode, p.stdout, p.stderr)


def said(p: Proc) -> str:
    """The first line of stderr (for a traceback: its last line, the exception)."""
    lines = [ln.strip() for ln in p.stderr.splitlines() if ln.strip()]
    if not lines:
        return "(nothing on stderr)"
    text = f"traceback: {lines[-1]}" if lines[0].startswith("Traceback") else lines[0]
    return text if len(text) <= 240 else text[:237] + "..."


def traceback_in(p: Proc) -> bool:
    return "Traceback (most recent call last)" in p.stderr


def clean_refusal(p: Proc) -> bool:
    """Exit 2 with one line ``error: ...`` on stderr."""
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    return p.code == 2 and len(lines) == 1 and lines[0].startswith("error:")


def exit_said(p: Proc) -> str:
    return f"exit {p.code}, `{said(p)}`"


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ---------------------------------------------------------------- comparing run directories


def state_epoch(ckpt: Path) -> int | None:
    try:
        return int(torch.load(ckpt / STATE, weights_only=True)["epoch"])
    except Exception:  # any unreadable state counts as no epoch
        return None


def committed_epoch(ckpts: Path) -> int:
    """The newest epoch with a complete checkpoint anywhere in ``ckpts`` (last/ or stranded
    as .last.*), 0 when none: what a resume can continue from."""
    if not ckpts.is_dir():
        return 0
    epochs = [state_epoch(p) for p in ckpts.iterdir()
              if (p.name == "last" or p.name.startswith(".last.")) and (p / MODEL).is_file()]
    return max([e for e in epochs if e is not None], default=0)


def listing(run: Path) -> set[str]:
    return {HEX.sub("-*", p.relative_to(run).as_posix()) for p in run.rglob("*")}


def csv_rows(path: Path) -> list[dict[str, str]]:
    rows = csv.DictReader(io.StringIO(path.read_text()))
    return [{k: v for k, v in r.items() if not k.endswith("_time_s")} for r in rows]


def differences(ref: Path, run: Path) -> list[str]:
    """What differs between the reference run directory and a killed-and-resumed one."""
    out = []
    for name in ("last", "best"):
        a, b = ref / "checkpoints" / name, run / "checkpoints" / name
        if not (b / MODEL).is_file():
            out.append(f"{name}/ missing")
        elif (a / MODEL).read_bytes() != (b / MODEL).read_bytes():
            want, got = state_epoch(a), state_epoch(b)
            out.append(f"{name}/ holds epoch {got}" if got != want else f"{name}/ weights differ")
    if not (run / "metrics.csv").is_file():
        out.append("metrics.csv missing")
    elif csv_rows(ref / "metrics.csv") != csv_rows(run / "metrics.csv"):
        out.append("metrics.csv differs")
    if not (run / "summary.json").is_file():
        out.append("summary.json missing")
    else:
        a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, run))
        keys = sorted(k for k in set(a) | set(b) if k != "wall_time_s" and a.get(k) != b.get(k))
        if keys:
            detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" if k == "preset" else k
                               for k in keys)
            out.append(f"summary.json differs ({detail})")
    if (ref / "config.yaml").read_bytes() != (run / "config.yaml").read_bytes():
        out.append("config.yaml differs")
    extra = sorted(listing(run) - listing(ref))
    extra = [p for p in extra if not any(p.startswith(q + "/") for q in extra)]  # top-most only
    if extra:
        out.append("leftovers: " + ", ".join(f"`{p}`" for p in extra))
    return out


# ---------------------------------------------------------------- 1. the kill-point sweep


@dataclass
class KillPoint:
    k: int
    label: str
    epoch: int  # the epoch being trained when the step came (0: before the first batch)
    outcome: str  # "identical" or what differs, "; "-separated
    identical: bool
    note: str = ""


def sweep(src: Path, work: Path, points: set[int] | None) -> list[KillPoint]:
    work.mkdir(parents=True, exist_ok=True)
    events = work / "events.json"
    ref = work / "reference"
    remove(ref)
    first = boot(src, [*SWEEP, "--out", str(ref)], ref, None, events)
    if first.code != 0:
        raise SystemExit(f"reference run failed ({src}): {said(first)}")
    print(f"{src}: {len(first.steps)} kill points", flush=True)
    results = []
    for k, (label, epoch) in enumerate(first.steps):
        if points is not None and k not in points:
            continue
        t0 = time.perf_counter()
        run = work / f"kill-{k:02d}"
        remove(run)
        killed = boot(src, [*SWEEP, "--out", str(run)], run, k, events)
        findings, note = [], ""
        if killed.code != KILLED:
            findings.append(f"not killed (exit {killed.code}: {said(killed)})")
        on_disk = committed_epoch(run / "checkpoints")
        had_config = (run / "config.yaml").is_file()
        res = boot(src, ["train", "--resume", str(run), "--quiet"], run, None, events)
        if res.code != 0 and not had_config:
            note = f"no config.yaml: `--resume` refused ({exit_said(res)}); the command re-run"
            res = boot(src, [*SWEEP, "--out", str(run)], run, None, events)
        if res.code != 0:
            findings.append(f"resume failed: {exit_said(res)}")
        else:
            redone = [e for e in res.epochs if e <= on_disk]
            if redone:
                findings.append(f"restarted from epoch {redone[0] - 1} (epoch {on_disk} was complete "
                                "on disk)")
            findings += differences(ref, run)
        outcome = "; ".join(findings).replace(str(run), "DIR") or "identical"
        note = note.replace(str(run), "DIR")
        results.append(KillPoint(k, label, epoch, outcome, not findings, note))
        print(f"  {k:2d} {label}: {outcome}{' (' + note + ')' if note else ''} "
              f"[{time.perf_counter() - t0:.0f} s]", flush=True)
        remove(run)
    return results


def align_key(p: KillPoint) -> str:
    """A label both trees share for the same moment of a run (for lining up the table)."""
    kind, _, rest = p.label.partition(" ")
    if kind == "rename":
        src, _, dst = rest.partition(" -> ")
        temp = ".part-" in src or src.endswith(".tmp")  # a file written aside, renamed into place
        key = f"rename-into {dst}" if temp else f"rename {src} -> {dst}"
    elif kind in ("save_file", "write_file", "write_text") or (kind == "torch.save" and "memory" not in rest):
        key = "write " + re.sub(r"\.tmp$", "", rest)
    elif "memory" in rest:
        key = "serialise"
    else:
        key = p.label
    return f"{p.epoch}|{key}"


Pair = tuple[KillPoint | None, KillPoint | None]


def aligned(before: list[KillPoint], after: list[KillPoint]) -> list[Pair]:
    """The two trees' kill points side by side, the same moment of the run on one row."""
    a, b = [align_key(p) for p in before], [align_key(p) for p in after]
    rows: list[Pair] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            rows += list(zip(before[i1:i2], after[j1:j2], strict=True))
        else:
            rows += list(zip_longest(before[i1:i2], after[j1:j2]))
    return rows


# ------------------------------------------------ 2. reproductions of the reported failures


@dataclass
class Case:
    key: str
    command: str
    result: str
    bad: bool


def small(*extra: str) -> list[str]:
    """The small quickstart config (1 epoch, 128 examples, width 4, eval.n=32) with ``extra``
    key=value overrides replacing or adding fields."""
    over = dict(SMALL)
    for e in extra:
        key, _, value = e.partition("=")
        over[key] = value
    return ["quickstart", *(f"{k}={v}" for k, v in over.items())]


def shown(argv: list[str], work: Path) -> str:
    return "adaptrain " + " ".join(argv).replace(str(work) + "/", "")


def digest(run: Path) -> dict[str, str]:
    return {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}


def first_nonfinite(model_file: Path) -> str | None:
    for k, t in load_file(str(model_file)).items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return k
    return None


def width_of(ckpt: Path) -> int | None:
    f = ckpt / MODEL
    return int(load_file(str(f))["body.0.weight"].shape[0]) if f.is_file() else None


# Which rate diverges depends on the data order: lr=50 did while an epoch drew two shuffles
# (the recorded table, before b71c920); with one shuffle per epoch it recovers and lr=100 on
# the split without a held-out set diverges the same way (tests/test_run_safety.py).
CASE_A_OVERRIDES = ["optim.lr=100", "data.val_size=0"]


def case_a(src: Path, work: Path) -> list[Case]:
    run = work / "a-lr100"
    argv = ["train", "quickstart", "epochs=3", "data.subset=256", "eval.n=100",
            *CASE_A_OVERRIDES, "--quiet", "--out", str(run)]
    p = cli(src, argv)
    bad_ckpts = []
    for d in sorted((run / "checkpoints").glob("*")) if (run / "checkpoints").is_dir() else []:
        if (d / MODEL).is_file() and (key := first_nonfinite(d / MODEL)):
            bad_ckpts.append(f"{d.name}/ ({key})")
    text = exit_said(p) + "; " + ("non-finite: " + ", ".join(bad_ckpts) if bad_ckpts
                                  else "no checkpoint holds NaN/inf")
    named, named_bad = named_checkpoint(p)
    return [Case(f"(a) {' '.join(CASE_A_OVERRIDES)} diverges", shown(argv, work), text + named,
                 p.code == 0 or bool(bad_ckpts) or named_bad)]


def named_checkpoint(p: Proc) -> tuple[str, bool]:
    """What became of the checkpoint a divergence error names: (text, True if it is missing
    or holds NaN/inf)."""
    m = re.search(r"checkpoint is (\S+)", p.stderr)
    if not m:
        return "", False
    named = Path(m.group(1).rstrip(".,;"))
    if not (named / MODEL).is_file():
        return f"; the error names `{named.name}/`, which does not exist", True
    if first_nonfinite(named / MODEL):
        return f"; the error names `{named.name}/`, which holds NaN/inf", True
    return f"; the named `{named.name}/` exists and is finite", False


def case_b(src: Path, work: Path, base: Path) -> list[Case]:
    run = work / "b-extend"
    shutil.copytree(base, run)
    argv = ["train", "--resume", str(run), "epochs=3", "--quiet"]
    p = cli(src, argv)
    summary = json.loads((run / "summary.json").read_text())
    done = summary.get("epochs_completed")
    text = f"{exit_said(p) if p.code else 'exit 0'}; summary says {done} epochs completed"
    if summary.get("preset") != "quickstart":
        text += f', preset {summary.get("preset")!r}'
    return [Case("(b) resume a finished 2-epoch run with epochs=3", shown(argv, work), text, done != 3)]


def case_c(src: Path, work: Path, base: Path) -> list[Case]:
    """Both spellings: ``--resume R epochs=V`` (the old parser read epochs=V as the preset)
    and the reported ``quickstart epochs=V --resume R`` (which reached the old override code)."""
    cases = []
    for form in ("after", "preset"):
        for value in ("0", "1.5", "abc", "1"):
            run = work / f"c-{form}-{value}"
            shutil.copytree(base, run)
            before = digest(run)
            argv = (["train", "--resume", str(run), f"epochs={value}", "--quiet"] if form == "after"
                    else ["train", "quickstart", f"epochs={value}", "--resume", str(run), "--quiet"])
            p = cli(src, argv)
            now = digest(run)
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            text = exit_said(p) if p.code else "exit 0, accepted"
            if changed:
                epochs = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("epochs")
                text += f"; run changed ({', '.join(changed)}; config.yaml epochs: {epochs!r})"
                ev = cli(src, ["eval", str(run), "--n", "16", "--attacks", "clean", "--quiet",
                               "--out", str(work / f"c-eval-{form}-{value}.json")])
                text += "; then `eval`: " + ("works" if ev.code == 0 else exit_said(ev))
                again = cli(src, ["train", "--resume", str(run), "--quiet"])
                text += "; then `--resume`: " + ("exit 0" if again.code == 0 else exit_said(again))
            else:
                text += "; run untouched"
            key = "--resume R epochs=" if form == "after" else "quickstart --resume R epochs="
            cases.append(Case(f"(c) {key}{value}", shown(argv, work), text,
                              not clean_refusal(p) or bool(changed)))
    return cases


def case_d(src: Path, work: Path) -> list[Case]:
    user = work / "d-user"
    user.mkdir()
    (user / "config.yaml").write_text("mine\n")
    argv = ["train", *small(), "--quiet", "--out", str(user)]
    p = cli(src, argv)
    intact = (user / "config.yaml").read_text() == "mine\n"
    text = f"{exit_said(p) if p.code else 'exit 0'}; U/config.yaml {'intact' if intact else 'overwritten'}"
    return [Case("(d) --out U holds the user's config.yaml", "mkdir U; echo mine > U/config.yaml; "
                 + shown(argv, work).replace("d-user", "U"), text, not intact or p.code == 0)]


def case_e(src: Path, work: Path) -> list[Case]:
    run = work / "e-shared"
    argvs = [["train", *small("epochs=2", f"model.width={w}"), "--quiet", "--out", str(run)] for w in (4, 8)]
    procs = [subprocess.Popen([sys.executable, "-m", "adaptrain.cli", *a], env=child_env(src),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argvs]
    outputs = [pr.communicate(timeout=TIMEOUT) for pr in procs]
    done = [Proc(pr.returncode, o, e) for pr, (o, e) in zip(procs, outputs, strict=True)]
    widths = {"config.yaml": None, "last/": width_of(run / "checkpoints" / "last"),
              "best/": width_of(run / "checkpoints" / "best")}
    if (run / "config.yaml").is_file():
        widths["config.yaml"] = (yaml.safe_load((run / "config.yaml").read_text())["model"]).get("width")
    found = {k: v for k, v in widths.items() if v is not None}
    mixed = len(set(found.values())) > 1
    text = "; ".join(f"width {w}: {exit_said(d) if d.code else 'exit 0'}"
                     for w, d in zip((4, 8), done, strict=True))
    text += "; directory: " + ", ".join(f"{k} width {v}" for k, v in found.items())
    text += " (**mixed**)" if mixed else " (one run)"
    both = all(d.code == 0 for d in done)
    return [Case("(e) two trainings into one --out at once (model.width=4 and =8)",
                 " & ".join(shown(a, work) for a in argvs), text, both or mixed)]


def case_f(src: Path, work: Path) -> list[Case]:
    cases = []
    for i, over in enumerate(("strategy.eps=8/0", "model.name.x=1", "epochs=1e309", "optim.lr=inf",
                              "strategy.eps=2")):
        run = work / f"f-{i}"
        argv = ["train", *small(over), "--quiet", "--out", str(run)]
        p = cli(src, argv)
        left = run.exists()
        verdict = "refused" if clean_refusal(p) else ("**traceback**" if traceback_in(p)
                                                      else "**accepted**" if p.code == 0 else "failed")
        named, named_bad = named_checkpoint(p)
        text = f"{exit_said(p)}: {verdict}" + named + ("; --out left behind" if left else "")
        cases.append(Case(f"(f) {over}", shown(argv, work), text, not clean_refusal(p) or left or named_bad))
    return cases


def case_g(src: Path, work: Path) -> list[Case]:
    run = work / "g-new"
    argv = ["train", *small("data.subset=999999"), "--quiet", "--out", str(run)]
    p = cli(src, argv)
    left = run.exists()
    text = f"{exit_said(p)}; --out {'**left behind**' if left else 'not created'}"
    return [Case("(g) a failed run into a new directory", shown(argv, work), text, left or p.code == 0)]


def case_h(src: Path, work: Path, base: Path) -> list[Case]:
    run = work / "h-run"
    shutil.copytree(base, run)
    cases = []
    for i, flags in enumerate((["--eps", "abc"], ["--device", "banana"], ["--eps", "nan"])):
        argv = ["eval", str(run), "--n", "32", "--quiet", "--out", str(work / f"h-{i}.json"), *flags]
        p = cli(src, argv)
        verdict = "refused" if clean_refusal(p) else ("**traceback**" if traceback_in(p)
                                                      else "**accepted**" if p.code == 0 else "failed")
        cases.append(Case(f"(h) eval {' '.join(flags)}", shown(argv, work), f"{exit_said(p)}: {verdict}",
                          not clean_refusal(p)))
    return cases


def cases(src: Path, work: Path) -> list[Case]:
    remove(work)
    work.mkdir(parents=True)
    base = work / "base"
    p = cli(src, ["train", *small("epochs=2"), "--quiet", "--out", str(base)])
    if p.code != 0:
        raise SystemExit(f"base run failed ({src}): {said(p)}")
    out: list[Case] = []
    steps: list[Callable[[], list[Case]]] = [
        lambda: case_a(src, work), lambda: case_b(src, work, base), lambda: case_c(src, work, base),
        lambda: case_d(src, work), lambda: case_e(src, work), lambda: case_f(src, work),
        lambda: case_g(src, work), lambda: case_h(src, work, base)]
    for fn in steps:
        for c in fn():
            c.result = c.result.replace(str(work) + "/", "")
            print(f"  {c.key}: {c.result}", flush=True)
            out.append(c)
    return out


# ---------------------------------------------------------------- report


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def phase(p: KillPoint) -> str:
    return "start" if p.epoch == 0 else f"epoch {p.epoch}"


def sweep_table(before: list[KillPoint], after: list[KillPoint]) -> str:
    lines = ["| k (before / after) | phase | kill point (just before) | before | after |",
             "| --- | --- | --- | --- | --- |"]
    for a, b in aligned(before, after):
        ks = f"{a.k if a else '–'} / {b.k if b else '–'}"
        if a and b and a.label == b.label:
            label = f"`{a.label}`"
        else:
            label = " / ".join(f"`{p.label}`" if p else "(no such step)" for p in (a, b))
        where = phase(a) if a else phase(b) if b else ""

        def out(p: KillPoint | None) -> str:
            if p is None:
                return "–"
            text = "**identical**" if p.identical else p.outcome
            return text + (f" ({p.note})" if p.note else "")

        lines.append(f"| {ks} | {where} | {cell(label)} | {cell(out(a))} | {cell(out(b))} |")
    return "\n".join(lines)


def cases_table(before: list[Case], after: list[Case]) -> str:
    lines = ["| case | before | after |", "| --- | --- | --- |"]
    def out(c: Case | None) -> str:
        return "–" if c is None else cell(("BAD: " if c.bad else "ok: ") + c.result)

    for a, b in zip_longest(before, after):
        key = a.key if a else b.key if b else ""
        lines.append(f"| {cell(key)} | {out(a)} | {out(b)} |")
    return "\n".join(lines)


def commands_list(cs: list[Case]) -> str:
    return "\n".join(f"- {c.key}: `{c.command}`" for c in cs)


def tree_id(src: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", ".")
    head = f"`{git('rev-parse', '--short', 'HEAD')}`"
    return head + (" with uncommitted changes under src" if dirty else "")


def counts(points: list[KillPoint]) -> str:
    same = sum(p.identical for p in points)
    text = f"{same} identical, {len(points) - same} not (of {len(points)})"
    only = re.compile(r"summary\.json differs \(preset: [^)]*\)")
    preset_only = sum(bool(only.fullmatch(p.outcome)) for p in points)
    if preset_only:
        text += f"; {preset_only} of those differ only in summary.json's `preset`"
    return text


def report(res: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    bk = [KillPoint(**p) for p in res["before"]["sweep"]]
    ak = [KillPoint(**p) for p in res["after"]["sweep"]]
    bc = [Case(**c) for c in res["before"]["cases"]]
    ac = [Case(**c) for c in res["after"]["cases"]]
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")),
               platform.processor())
    bad = (sum(c.bad for c in bc), sum(c.bad for c in ac))
    return f"""# Reliability measured before and after the crash-safety and error-reporting fixes

Measured {res['after']['date']} on a {os.cpu_count()}-core CPU ({cpu}), Python
{platform.python_version()}, torch {torch.__version__}, one thread per process. Before: the
code at {res['before']['tree']} (`{args.before}`); after: {res['after']['tree']}
(`{args.after}`); each a checkout of its own (`git worktree add --detach DIR COMMIT`), so that
commits landing during the run cannot change the code between kill points. Produced by

    python benchmarks/reliability.py --before {args.before} --after {args.after} \\
        --work {args.work} --out {args.out}

(see the script's docstring for exactly what is instrumented and compared).

## Kill-point sweep

The run, killed (SIGKILL) just before each write step or at the 2nd batch of an epoch:

    adaptrain {' '.join(SWEEP)} --out DIR

then resumed with `adaptrain train --resume DIR --quiet` (or, when the kill left no
`config.yaml` and the resume is refused, the command above again), and compared with the
same run left uninterrupted. **identical**: last/ and best/ `model.safetensors` byte-equal,
`metrics.csv` equal but for the `*_time_s` columns, `summary.json` equal but for
`wall_time_s`, `config.yaml` equal, no leftover file or directory, and no epoch trained again
whose complete checkpoint was on disk. Rows pair the same moment of the run in both trees;
a dash is a step that tree does not have. The step names are the instrumented calls:
`save_file` / `safetensors.save` is the safetensors writer, `write_file` adaptrain's atomic
file write (which then renames its `.NAME.part-*` file into place).

- before: {counts(bk)}
- after: {counts(ak)}

{sweep_table(bk, ak)}

## Reproductions of the reported failures

Each on a fresh directory; small configs (quickstart with `data.subset=128 model.width=4
eval.n=32`, 1 epoch, except where the case says otherwise). (b), (c) and (h) start from a
finished copy of `adaptrain train quickstart epochs=2 data.subset=128 model.width=4
eval.n=32 --out base`. (c) is run in both spellings: `--resume R epochs=V` (the old parser
took `epochs=V` for the preset, as in (b)) and the reported `quickstart epochs=V --resume R`
(which reached the old override code); where the command changed the run, an `eval` and a
plain `--resume` follow to see whether the run is still usable. BAD marks the reported
defect (for (c), (f) and (h): anything but exit 2 with one `error:` line, the run
untouched and no directory left behind). Bad states: before
{bad[0]} of {len(bc)}, after {bad[1]} of {len(ac)}.

{cases_table(bc, ac)}

Commands (paths relative to the scratch directory):

{commands_list(ac)}
"""


def measure(side: str, src: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Both parts for one tree; each part's result is saved as JSON in --work as soon as it is
    measured (and, with --reuse, read back instead of measured again)."""
    points = None if args.points is None else {int(k) for k in args.points.split(",")}
    res: dict[str, Any] = {"tree": tree_id(src), "date": datetime.now().strftime("%Y-%m-%d")}
    for part in ("sweep", "cases"):
        saved = args.work / f"{side}-{part}.json"
        if args.reuse and saved.is_file():
            res[part] = json.loads(saved.read_text())
            continue
        res[part] = []
        if part not in args.parts.split(","):
            continue
        print(f"== {side} ({src}): {part}", flush=True)
        t0 = time.perf_counter()
        if part == "sweep":
            res[part] = [asdict(p) for p in sweep(src, args.work / side / part, points)]
        else:
            res[part] = [asdict(c) for c in cases(src, args.work / side / part)]
        print(f"== {side}: {part} took {time.perf_counter() - t0:.0f} s", flush=True)
        saved.write_text(json.dumps(res[part], indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, default=Path("/tmp/old/src"), help="source tree before the fixes")
    ap.add_argument("--after", type=Path, default=Path("src"), help="source tree after the fixes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/reliability"), help="scratch directory")
    ap.add_argument("--out", type=Path, default=Path("docs/reliability-measured.md"))
    ap.add_argument("--reuse", action="store_true", help="use results saved in --work if there")
    ap.add_argument("--points", default=None, help="only these kill points, e.g. 0,5 (a quick check)")
    ap.add_argument("--parts", default="sweep,cases", help="what to measure (default sweep,cases)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    # one tree after the other: the children must not share the two cores
    res = {side: measure(side, getattr(args, side).resolve(), args) for side in ("before", "after")}
    text = report(res, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
