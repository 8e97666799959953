"""Small-scale method comparisons: train every (method, seed) of a plan with one shared protocol,
evaluate the best and last checkpoints with the same attacks, and tabulate mean +- std.

A plan is a YAML file:

    common: [data.name=imagefolder, "data.root={data_root}/cifar10-jpeg.tar.gz", epochs=15, ...]
    seeds: [0, 1]
    include: common.yaml      # optional: defaults for common / seeds / eval / checkpoints
    checkpoints: [best, last] # optional: which checkpoints to evaluate (default both)
    eval: [--attacks, "clean,pgd-20,cw-20,aa", --aa-version, custom, --aa-attacks, "apgd-ce,apgd-t",
           --n, "1000"]
    runs:
      - {label: pgd-at, preset: pgd-at}
      - {label: ecas, preset: ecas-ablation-cyclic-entropy, overrides: [strategy.steps=10]}
      - {label: dra, preset: dra-finetune, after: clean,      # waits for clean/seedN to finish
         overrides: ["init_from={out}/clean/seed{seed}"],     # {out}, {seed}: this plan's
         eval: [--attacks, "clean,pgd-20", --eps, 2/255], checkpoints: [last],  # per-run eval
         extra_evals: [{name: n10000, args: [--attacks, "clean,pgd-20", --eps, 2/255,
                                             --n, "10000"]}]}  # -> eval/last-n10000.json

Usage (from the repository root):

    python benchmarks/compare.py PLAN.yaml --out bench-out/NAME --workers 2 [--only a,b] [--dry-run]
        [--stage train|eval|all]

``--stage train`` trains (or resumes) the plan's runs and evaluates nothing, ``--stage eval``
evaluates finished runs only; a plan can so be spread over sessions. ``--analyse`` tests the
plan's ``claims`` on the evaluations that exist (paired bootstrap intervals, a verdict each:
benchmarks/analyse.py).

``{data_root}`` in a plan's strings is the data directory: ``--data-root DIR``, else the
environment variable ADAPTRAIN_DATA_ROOT, else ``../shared/data`` next to the repository.

Every run is a subprocess (``adaptrain train`` then ``adaptrain eval``) with
``OMP_NUM_THREADS=--threads``; finished runs and evaluations are skipped, so re-running the
command resumes an interrupted plan (an interrupted training resumes with ``--resume``).
When the best checkpoint is the last epoch's, the last checkpoint's evaluation is a copy of the
best one's (same weights). ``--archive DIR`` (e.g. a folder of the repository) copies every
finished, evaluated run there without its checkpoints and restores from it the runs OUT lacks:
a plan spread over sessions on machines that keep nothing but the repository loses no result.
A run that needs another's weights (``after:``) must then train with it in one OUT.
Results: OUT/NAME.md and OUT/NAME.json (``--name``, default ``results``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from adaptrain.claim import is_run
from analyse import analyse, eval_path


def adaptrain_cmd() -> list[str]:
    return [sys.executable, "-m", "adaptrain.cli"]


def run_dir(out: Path, label: str, seed: int) -> Path:
    return out / label / f"seed{seed}"


def finished(d: Path) -> bool:
    summary = d / "summary.json"
    return summary.is_file() and bool(json.loads(summary.read_text()).get("finished"))


def train_cmds(d: Path, entry: dict, seed: int, plan: dict, out: Path | None = None
               ) -> list[list[str]]:
    """The command that trains (or resumes) run ``d``, or none when it has finished; a directory
    that holds an unfinished run is resumed (from its first epoch when it has no checkpoint).
    ``{out}`` and ``{seed}`` in an entry's overrides become the plan's output directory and
    the run's seed (e.g. ``init_from={out}/clean/seed{seed}``)."""
    if finished(d):
        return []
    if is_run(d):  # interrupted, perhaps before its first checkpoint: `--out` would refuse it
        return [[*adaptrain_cmd(), "train", "--resume", str(d), "--quiet"]]
    own = [o.replace("{out}", str(out)).replace("{seed}", str(seed)) if out else o
           for o in entry.get("overrides", [])]
    over = [*plan.get("common", []), *own, f"seed={seed}"]
    return [[*adaptrain_cmd(), "train", entry["preset"], *over, "--out", str(d), "--quiet"]]


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run: a checkpoint, the eval arguments, and the file it writes,
    ``eval/<which>.json`` for the plan's evaluation, ``eval/<which>-<name>.json`` for a named
    extra one."""

    which: str  # best | last
    args: tuple[str, ...]
    name: str = ""

    def path(self, d: Path) -> Path:
        return eval_path(d, self.which, self.name)

    def cmd(self, d: Path, plan: dict) -> list[str]:
        out = ["--out", str(self.path(d))] if self.name else []  # the plan's: eval's own default
        return [*adaptrain_cmd(), "eval", str(d), "--checkpoint", self.which, "--quiet",
                "--seed", str(plan.get("eval_seed", 0)), *self.args, *out]


def evaluations(entry: dict, plan: dict) -> list[Evaluation]:
    """Every evaluation of a run: the plan's ``eval`` on its ``checkpoints`` (an entry's own
    replace them), then the entry's ``extra_evals``, each ``{name, args, checkpoints}``
    (checkpoints default to the entry's), e.g. the same attacks on more test images."""
    own = {**plan, **entry}
    evals = [Evaluation(w, tuple(own.get("eval", []))) for w in checkpoints(own)]
    for extra in entry.get("extra_evals", []):
        if not str(extra.get("name", "")).replace("-", "").isalnum() or "args" not in extra:
            raise SystemExit(f"run {entry['label']}: each of 'extra_evals' needs a name "
                             f"(letters, digits, -) and args, got {extra}")
        evals += [Evaluation(w, tuple(extra["args"]), str(extra["name"]))
                  for w in checkpoints({**own, **extra})]
    return evals


def missing_evals(d: Path, entry: dict, plan: dict) -> list[Evaluation]:
    """The evaluations of run ``d`` whose file does not exist yet."""
    return [e for e in evaluations(entry, plan) if not e.path(d).is_file()]


# what a run directory keeps that an archive does not: the weights (MBs per run) and the lock
ARCHIVE_SKIP = ("checkpoints", "*.lock", "tensorboard")


def code_version() -> str:
    """The commit of the code the subprocesses run (this checkout), "+changes" when its package
    or benchmarks differ from the commit; "unknown" outside a git checkout."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "src",
                                "benchmarks/compare.py"], capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty.strip() else "")


def archive_run(d: Path, dest: Path, entry: dict, plan: dict, log: Path | None = None) -> bool:
    """Copy a finished, fully evaluated run ``d`` to ``dest`` without its checkpoints, replacing
    an older copy; a reader sees the old copy or the new one (for an instant neither), never a
    half-copied one; the driver's log of the run goes with it (compare.log). False
    (nothing copied) while training or an evaluation is missing."""
    if not finished(d) or missing_evals(d, entry, plan):
        return False
    tmp, old = dest.with_name(dest.name + ".tmp"), dest.with_name(dest.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(d, tmp, ignore=shutil.ignore_patterns(*ARCHIVE_SKIP))
    if log is not None and log.is_file():  # the commands, their code version and output
        shutil.copyfile(log, tmp / "compare.log")
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return True


def restore_runs(archive: Path, out: Path, plan: dict) -> list[str]:
    """The archived runs of the plan that ``out`` lacks, copied into it (finished and
    evaluated, without checkpoints); a run ``out`` already has, finished or not, is left as is."""
    done = []
    for entry in plan["runs"]:
        for seed in plan["seeds"]:
            src, d = run_dir(archive, entry["label"], seed), run_dir(out, entry["label"], seed)
            if finished(src) and not d.exists():
                shutil.copytree(src, d)
                done.append(f"restored {entry['label']} seed {seed} from {archive}")
    return done


_done: dict[tuple[str, int], threading.Event] = {}


def job(out: Path, entry: dict, seed: int, plan: dict, threads: int, dry: bool,
        stage: str = "all", archive: Path | None = None) -> str:
    d = run_dir(out, entry["label"], seed)
    try:
        msg = _job(out, d, entry, seed, plan, threads, dry, stage)
        if (archive and not dry and d.is_dir()
                and archive_run(d, run_dir(archive, entry["label"], seed), entry, plan,
                                out / "logs" / f"{entry['label']}-seed{seed}.log")):
            msg += f" (archived in {archive})"
        return msg
    finally:
        _done.setdefault((entry["label"], seed), threading.Event()).set()


def _job(out: Path, d: Path, entry: dict, seed: int, plan: dict, threads: int, dry: bool,
         stage: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = out / "logs" / f"{entry['label']}-seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    dep = entry.get("after")
    cmds: list = train_cmds(d, entry, seed, plan, out) if stage != "eval" else []
    if dep and not dry and cmds:
        # the dependency is an earlier task of this invocation (or finished before it)
        if (dep, seed) in _done:
            _done[(dep, seed)].wait()
        if not finished(run_dir(out, dep, seed)):
            return f"SKIPPED {entry['label']} seed {seed}: {dep} seed {seed} has not finished"
        if not (run_dir(out, dep, seed) / "checkpoints").is_dir():
            return (f"SKIPPED {entry['label']} seed {seed}: {dep} seed {seed} has no checkpoints here "
                    f"(restored from an archive?): train both in one output directory")
    if stage == "eval" and not finished(d):
        return f"not evaluated {entry['label']} seed {seed}: training has not finished"
    if stage != "train":
        missing = missing_evals(d, entry, plan)
        if missing and not cmds and not (d / "checkpoints").is_dir():
            return (f"not evaluated {entry['label']} seed {seed}: no checkpoints here "
                    f"(restored from an archive?)")
        cmds += missing
    for task in cmds:
        cmd = task.cmd(d, plan) if isinstance(task, Evaluation) else task
        if dry:
            print(" ".join(cmd) + "\n", end="", flush=True)  # one write: the main thread prints too
            continue
        if isinstance(task, Evaluation) and task.which == "last":
            best = Evaluation("best", task.args, task.name)
            if best in evaluations(entry, plan) and same_weights(d, best.path(d)):
                shutil.copyfile(best.path(d), task.path(d))  # the best checkpoint is the last epoch's
                continue
        t0 = time.time()
        with open(log, "a") as fh:
            fh.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, adaptrain at {code_version()}\n"
                     f"$ {' '.join(cmd)}\n")
            fh.flush()
            proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            return f"FAILED ({proc.returncode}) {entry['label']} seed {seed}: see {log}"
        what = f"eval {task.path(d).stem}" if isinstance(task, Evaluation) else cmd[3]
        print(f"done {entry['label']} seed {seed}: {what} ({time.time() - t0:.0f} s)", flush=True)
    return f"ok {entry['label']} seed {seed}"


def checkpoints(plan: dict) -> list[str]:
    """Which checkpoints a plan evaluates (``checkpoints: [best, last]`` by default)."""
    which = list(plan.get("checkpoints", ["best", "last"]))
    if not which or set(which) - {"best", "last"}:
        raise SystemExit(f"plan field 'checkpoints' must be a non-empty list of best / last, got {which}")
    return which


def same_weights(d: Path, best_eval: Path) -> bool:
    """The best checkpoint is the last epoch's and its evaluation ``best_eval`` exists: the last
    checkpoint's is the same."""
    s = json.loads((d / "summary.json").read_text())
    return (s.get("best_epoch") is not None and s.get("best_epoch") == s.get("epochs_completed")
            and best_eval.is_file())


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    m = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{m:.2f}"
    return f"{m:.2f} ± {100 * statistics.stdev(values):.2f}"


def collect(out: Path, plan: dict) -> tuple[str, dict]:
    rows, data = [], {}
    attack_names: list[str] = []
    for entry in plan["runs"]:
        for seed in plan["seeds"]:
            for which in checkpoints({**plan, **entry}):
                f = run_dir(out, entry["label"], seed) / "eval" / f"{which}.json"
                if f.is_file():
                    acc = json.loads(f.read_text())["accuracy"]
                    attack_names += [k for k in acc if k not in attack_names and "/" not in k]
    for entry in plan["runs"]:
        label = entry["label"]
        data[label] = {}
        for which in checkpoints({**plan, **entry}):
            vals: dict[str, list[float]] = {}
            epochs, times = [], []
            for seed in plan["seeds"]:
                d = run_dir(out, label, seed)
                f = d / "eval" / f"{which}.json"
                if not f.is_file():
                    continue
                ev = json.loads(f.read_text())
                for k in [*attack_names, "worst_case", "rd"]:
                    v = ev["accuracy"].get(k) if k in attack_names else ev.get(k)
                    if v is not None:
                        vals.setdefault(k, []).append(v)
                s = json.loads((d / "summary.json").read_text())
                epochs.append((s.get(which) or {}).get("epoch"))
                times += [float(r["train_time_s"]) for r in _metrics(d) if r.get("train_time_s")]
            data[label][which] = {"values": vals, "epochs": epochs,
                                  "median_epoch_time_s": statistics.median(times) if times else None}
            cells = [mean_std(vals.get(k, [])) for k in [*attack_names, "worst_case"]]
            rd = vals.get("rd", [])
            rows.append("| " + " | ".join([label, which, str(len(vals.get("clean", []))),
                                           ",".join(str(e) for e in epochs), *cells,
                                           f"{statistics.fmean(rd):.4f}" if rd else "-"]) + " |")
    head = ["method", "ckpt", "seeds", "epochs", *attack_names, "worst case", "RD"]
    md = "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows])
    return md, data


def _metrics(d: Path) -> list[dict]:
    import csv

    f = d / "metrics.csv"
    if not f.is_file():
        return []
    with open(f, newline="") as fh:
        return list(csv.DictReader(fh))


DATA_ROOT_ENV = "ADAPTRAIN_DATA_ROOT"
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_root(flag: str | None) -> Path:
    """``--data-root``, else $ADAPTRAIN_DATA_ROOT, else ../shared/data beside the repository."""
    return Path(flag or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT).expanduser().resolve()


def fill(value, root: Path):
    """Every ``{data_root}`` in the plan's strings (nested lists / mappings too) -> ``root``."""
    if isinstance(value, str):
        return value.replace("{data_root}", str(root))
    if isinstance(value, list):
        return [fill(v, root) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, root) for k, v in value.items()}
    return value


def load_plan(path: Path, root: Path | None = None) -> dict:
    """A plan, with ``include: other.yaml`` (relative to it) supplying defaults for its keys;
    with ``root``, ``{data_root}`` filled in."""
    plan = yaml.safe_load(path.read_text())
    inc = plan.pop("include", None)
    if inc:
        base = load_plan(path.parent / inc)
        plan = {**base, **plan}
    return plan if root is None else fill(plan, root)


def plan_parser(description: str) -> argparse.ArgumentParser:
    """The options every plan runner shares (this script, ema.py)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("plan", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="OMP threads per worker")
    p.add_argument("--data-root", default=None,
                   help=f"fills {{data_root}} in the plan (default ${DATA_ROOT_ENV}, else ../shared/data "
                        "beside the repository)")
    p.add_argument("--collect", action="store_true", help="only tabulate what exists")
    return p


def main() -> None:
    p = plan_parser(__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma list of labels")
    p.add_argument("--seeds", default=None, help="comma list overriding the plan's seeds")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--stage", choices=["train", "eval", "all"], default="all",
                   help="train only, evaluate finished runs only, or both (default)")
    p.add_argument("--analyse", action="store_true",
                   help="only test the plan's claims on what exists (OUT/analysis.md, figures)")
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap replicates (--analyse)")
    p.add_argument("--fixed-seeds", action="store_true",
                   help="--analyse: resample test examples only, holding the seeds fixed")
    p.add_argument("--archive", type=Path, default=None,
                   help="copy every finished, evaluated run (without checkpoints) to this directory, "
                        "and restore from it the runs OUT lacks, so that losing OUT loses no result")
    p.add_argument("--name", default="results",
                   help="tables go to OUT/NAME.md and OUT/NAME.json (plans sharing OUT differ)")
    args = p.parse_args()
    plan = load_plan(args.plan, data_root(args.data_root))
    if args.seeds:
        plan["seeds"] = [int(v) for v in args.seeds.split(",")]
    if args.archive:
        args.out.mkdir(parents=True, exist_ok=True)
        for msg in restore_runs(args.archive, args.out, plan):
            print(msg, flush=True)
    if args.analyse:
        md, data = analyse(args.out, plan, n_boot=args.n_boot,
                           resample_seeds=not args.fixed_seeds)
        (args.out / "analysis.md").write_text(md + "\n")
        (args.out / "analysis.json").write_text(json.dumps(data, indent=2))
        print(md)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    entries = [e for e in plan["runs"] if not args.only or e["label"] in args.only.split(",")]
    if not args.collect:
        tasks = [(e, s) for s in plan["seeds"] for e in entries]
        for e, s in tasks:
            _done[(e["label"], s)] = threading.Event()
        # a dry run prints the commands in the plan's order: threads would interleave them
        workers = 1 if args.dry_run else args.workers
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for msg in pool.map(lambda t: job(args.out, t[0], t[1], plan, args.threads, args.dry_run,
                                              args.stage, args.archive), tasks):
                print(msg + "\n", end="", flush=True)
    if args.dry_run:
        return
    md, data = collect(args.out, plan)
    (args.out / f"{args.name}.md").write_text(md + "\n")
    (args.out / f"{args.name}.json").write_text(json.dumps(data, indent=2))
    print(md)


if __name__ == "__main__":
    main()
