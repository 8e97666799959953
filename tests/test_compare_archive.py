"""compare.py --archive: a plan spread over sessions survives the loss of its output directory
(a new machine keeps the repository only). Finished, evaluated runs are copied without their
checkpoints into the archive; a later invocation restores them instead of retraining, and
refuses, naming the run, work that needs a checkpoint the archive does not keep."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def compare(plan_file: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), str(plan_file),
                           "--out", str(out), "--workers", "1", *extra],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_archived_runs_survive_the_loss_of_the_output_directory(tmp_path):
    plan = {"seeds": [0], "common": ["epochs=1", "data.val_size=60"],
            "eval": ["--attacks", "clean,pgd-20", "--n", "60"],
            "runs": [{"label": "clean", "preset": "quickstart-clean",
                      # a named second evaluation: the same attack on more test images
                      "extra_evals": [{"name": "n80", "args": ["--attacks", "clean", "--n", "80"]}]},
                     {"label": "ft", "preset": "dra-finetune-mnist", "after": "clean",
                      "overrides": ["init_from={out}/clean/seed{seed}"], "checkpoints": ["last"]}],
            "claims": [{"claim": "ft >= clean", "parts": [
                {"method": "ft", "baseline": "clean", "metric": "clean", "direction": "greater",
                 "checkpoint": "last", "baseline_checkpoint": "best"}]}]}
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan))
    out, archive = tmp_path / "out", tmp_path / "archive"

    compare(plan_file, out, "--archive", str(archive), "--only", "clean")
    kept = archive / "clean" / "seed0"
    assert json.loads((kept / "summary.json").read_text())["finished"]
    assert {"best.json", "last.json", "best-n80.json", "last-n80.json"} <= {
        f.name for f in (kept / "eval").iterdir()}
    assert json.loads((kept / "eval" / "best-n80.json").read_text())["n_examples"] == 80
    # one epoch: the best checkpoint is the last, so its evaluations are copied, not rerun
    assert ((kept / "eval" / "last-n80.json").read_bytes()
            == (kept / "eval" / "best-n80.json").read_bytes())
    assert (kept / "metrics.csv").is_file() and (kept / "config.yaml").is_file()
    assert not (kept / "checkpoints").exists()
    assert not [p for p in kept.rglob("*.lock")]  # the run's and each evaluation's lock
    log = (kept / "compare.log").read_text()  # what ran, with which code
    assert "adaptrain at " in log and " train quickstart-clean " in log and " eval " in log
    assert f"--n 80 --out {out / 'clean' / 'seed0' / 'eval' / 'best-n80.json'}" in log
    assert "--checkpoint last" not in log
    assert (out / "clean" / "seed0" / "checkpoints").is_dir()  # the output keeps them

    shutil.rmtree(out)  # the machine is gone; the archive (in the repository) is not
    summary = (kept / "summary.json").read_text()
    proc = compare(plan_file, out, "--archive", str(archive), "--dry-run", "--only", "clean")
    assert "restored clean seed 0" in proc.stdout
    assert "adaptrain.cli" not in proc.stdout  # nothing to train or evaluate again
    assert (out / "clean" / "seed0" / "summary.json").read_text() == summary

    # fine-tuning needs clean's weights, which the archive does not keep: refused by name
    proc = compare(plan_file, out, "--archive", str(archive))
    assert "SKIPPED ft seed 0: clean seed 0 has no checkpoints here" in proc.stdout
    assert not (out / "ft" / "seed0").exists() and not (archive / "ft").exists()

    # the analysis sees the restored evaluations in a fresh output directory as well
    fresh = tmp_path / "fresh"
    compare(plan_file, fresh, "--archive", str(archive), "--analyse", "--n-boot", "200")
    assert (fresh / "clean" / "seed0" / "eval" / "best.json").is_file()
    claims = json.loads((fresh / "analysis.json").read_text())["claims"]
    assert [c["verdict"] for c in claims] == ["not run"]  # ft was never trained


def test_an_unfinished_run_is_not_archived_and_a_newer_archive_replaces_the_older(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import compare as cmp
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    run = tmp_path / "out" / "a" / "seed0"
    (run / "checkpoints" / "last").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"finished": False}))
    dest = tmp_path / "archive" / "a" / "seed0"
    assert not cmp.archive_run(run, dest, {"label": "a"}, {"eval": []})
    assert not dest.exists()
    (run / "summary.json").write_text(json.dumps({"finished": True}))
    assert not cmp.archive_run(run, dest, {"label": "a"}, {"eval": []})  # evaluations missing
    (run / "eval").mkdir()
    for which in ("best", "last"):
        (run / "eval" / f"{which}.json").write_text("{}")
    assert cmp.archive_run(run, dest, {"label": "a"}, {"eval": []})
    (run / "eval" / "best.json").write_text('{"new": 1}')
    assert cmp.archive_run(run, dest, {"label": "a"}, {"eval": []})
    assert json.loads((dest / "eval" / "best.json").read_text()) == {"new": 1}
    extra = {"label": "a", "extra_evals": [{"name": "n10000", "args": ["--n", "10000"],
                                            "checkpoints": ["best"]}]}
    assert not cmp.archive_run(run, dest, extra, {"eval": []})  # its named evaluation is missing
    (run / "eval" / "best-n10000.json").write_text("{}")
    assert cmp.archive_run(run, dest, extra, {"eval": []})
    assert (dest / "eval" / "best-n10000.json").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["seed0"]  # no temporary left


PLANS = sorted((ROOT / "benchmarks" / "plans").glob("*.yaml"))


@pytest.mark.parametrize("plan_file", PLANS, ids=[p.stem for p in PLANS])
def test_every_run_of_every_committed_plan_is_a_valid_config(plan_file, tmp_path):
    """A typo in a plan is found here, not hours into a study (compare.py plans and bench plans)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import compare as cmp
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from adaptrain.config import build_config

    plan = cmp.load_plan(plan_file, tmp_path)
    rows = plan.get("runs", plan.get("rows"))
    if rows is None:  # a file included by others: only defaults, no runs of its own
        assert set(plan) <= {"common", "seeds", "eval", "checkpoints", "eval_seed"}, plan_file
        return
    for entry in rows:
        for seed in plan.get("seeds", [0]):
            over = [o.replace("{out}", str(tmp_path)).replace("{seed}", str(seed))
                    for o in [*plan.get("common", []), *entry.get("overrides", [])]]
            cfg = build_config(entry["preset"], [*over, f"seed={seed}"])
            assert cfg.seed == seed
    # a claim on a label no run has would read "not run" for ever instead of failing
    labels = {entry["label"] for entry in rows}
    for claim in plan.get("claims", []):
        for part in claim["parts"]:
            assert {part["method"], part["baseline"]} <= labels, (plan_file.name, part)


def test_a_run_killed_before_its_first_checkpoint_is_resumed_not_refused(tmp_path):
    """A run killed in its first epoch leaves config.yaml and summary.json, no checkpoint;
    ``adaptrain train --out`` refuses such a directory, so the driver must resume it (the
    resume starts from the first epoch). Found when a study run stopped at epoch 0."""
    plan = {"seeds": [0], "common": ["epochs=1"], "eval": ["--attacks", "clean", "--n", "40"],
            "runs": [{"label": "a", "preset": "quickstart-clean"}]}
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan))
    out = tmp_path / "out"
    run = out / "a" / "seed0"
    # what the kill left: the run's resolved config and its first summary
    run.mkdir(parents=True)
    cfg = subprocess.run([sys.executable, "-m", "adaptrain.cli", "config", "quickstart-clean",
                          "epochs=1", "seed=0"], check=True, capture_output=True, text=True).stdout
    (run / "config.yaml").write_text(cfg)
    (run / "summary.json").write_text(json.dumps({"finished": False, "epochs_completed": 0}))
    proc = compare(plan_file, out, "--dry-run")
    trains = [ln for ln in proc.stdout.splitlines() if " train " in ln]
    assert trains == [f"{sys.executable} -m adaptrain.cli train --resume {run} --quiet"]
    proc = compare(plan_file, out)
    assert "ok a seed 0" in proc.stdout, proc.stdout
    assert json.loads((run / "summary.json").read_text())["finished"]
