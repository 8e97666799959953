"""Sharded evaluation (issue 21): ``torchrun -m adaptrain eval`` on 2 CPU ranks gives the
single-process result example for example, rank 0 alone writes and prints, and an interrupted
sharded evaluation resumes (here on one process) to the same per-example results.

The per-example results are read from the resumable state file (kept by ``--keep-state``); a
small launcher interrupts the sharded evaluation after a number of recorded chunks, on every
rank at once, as Ctrl-C would. The per-epoch validation path (``evaluate_attacks(world=...)``)
is checked on two forked ranks joined over gloo.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adaptrain import checkpoint
from adaptrain.cli import main
from adaptrain.config import build_config
from adaptrain.data import load_arrays
from adaptrain.models import build_model

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = "clean,pgd-3,fgsm,cw-3"
# 64 examples in chunks of 24 (the corruption jobs keep exactly these chunks: 24, 24 | 16 and
# an idle rank); the own attacks' chunks are resized to balance the ranks
FLAGS = ["--attacks", ATTACKS, "--n", "64", "--batch-size", "24", "--eps", "0.1",
         "--step-size", "0.03", "--corruptions", "gaussian_noise", "--severities", "2",
         "--keep-state", "--quiet"]

LAUNCHER = """
import os, sys
from adaptrain.cli import main
from adaptrain.evaluate import state
stop = int(os.environ.get("STOP_AFTER_RECORDS", "0"))
if stop:
    record, seen = state.EvalState.record, [0]
    def interrupted(self, *args, **kwargs):
        if seen[0] == stop:
            raise KeyboardInterrupt
        seen[0] += 1
        record(self, *args, **kwargs)
    state.EvalState.record = interrupted
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory holding a small CNN trained clean for a few epochs on digits (so the
    attacks have correct examples to break), without the training loop."""
    out = tmp_path_factory.mktemp("dist-eval") / "run"
    cfg = build_config("quickstart", ["model.width=4"])
    arrays = load_arrays(cfg.data.name, cfg.data.root, cfg.data.download)
    torch.manual_seed(0)
    model = build_model(cfg.model, arrays.spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = arrays.x_train.float() / 255, arrays.y_train
    model.train()
    for _ in range(3):
        for i in range(0, len(y), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    model.eval()
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(cfg.dump())
    checkpoint.save(out / "checkpoints" / "best", model)
    return out


def _per_example(state_file: Path) -> dict[str, str]:
    return {k: v["results"] for k, v in json.loads(state_file.read_text())["jobs"].items()}


@pytest.fixture(scope="module")
def single(run_dir, tmp_path_factory) -> tuple[dict, dict[str, str]]:
    """The single-process evaluation: (its JSON, per-example results of every job)."""
    out = tmp_path_factory.mktemp("single") / "eval.json"
    assert main(["eval", str(run_dir), *FLAGS, "--out", str(out)]) == 0
    return json.loads(out.read_text()), _per_example(out.with_name("eval.state.json"))


def _torchrun(tmp_path: Path, run_dir: Path, out: Path, **env: str):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "--", str(launcher), "eval", str(run_dir), *FLAGS, "--out", str(out)]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300)


def test_sharded_eval_gives_the_single_process_results_example_for_example(run_dir, single, tmp_path):
    ref_doc, ref = single
    out = tmp_path / "sharded.json"
    proc = _torchrun(tmp_path, run_dir, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert _per_example(out.with_name("sharded.state.json")) == ref
    assert set(ref) == {"clean", "pgd-3", "fgsm", "cw-3", "corruption/gaussian_noise/2"}
    assert doc["accuracy"] == ref_doc["accuracy"] and doc["worst_case"] == ref_doc["worst_case"]
    assert doc["corruptions"] == ref_doc["corruptions"] and doc["checks"] == ref_doc["checks"]
    assert 0 < doc["accuracy"]["cw-3"] < doc["accuracy"]["clean"]  # the attacks had work to do
    assert doc["provenance"]["world_size"] == 2 and ref_doc["provenance"]["world_size"] == 1
    assert doc["provenance"]["aa_sharding"] is None  # AutoAttack did not run
    # rank 0 alone prints: the table once
    assert proc.stdout.count("| **worst case** |") == 1, proc.stdout


def test_interrupted_sharded_eval_resumes_on_one_process(run_dir, single, tmp_path, capsys):
    _, ref = single
    out = tmp_path / "resumed.json"
    # every rank stops at the same point: after clean's 4 chunks and one chunk of pgd-3
    proc = _torchrun(tmp_path, run_dir, out, STOP_AFTER_RECORDS="5")
    assert proc.returncode != 0 and "resume" in proc.stderr
    assert not out.exists()
    partial = _per_example(out.with_name("resumed.state.json"))
    done = {k: sum(c != "." for c in v) for k, v in partial.items()}
    assert done["clean"] == 64 and 0 < done["pgd-3"] < sum(c != "." for c in ref["pgd-3"])
    for job, results in partial.items():  # what was saved is the single process's result
        assert all(c == r for c, r in zip(results, ref[job], strict=True) if c != "."), job

    assert main(["eval", str(run_dir), *FLAGS, "--out", str(out)]) == 0
    assert "resuming the evaluation" in capsys.readouterr().out
    assert _per_example(out.with_name("resumed.state.json")) == ref


def _validation_rank(rank: int, init: str, model, x, y, queue) -> None:
    import torch.distributed as dist

    from adaptrain.distributed import World
    from adaptrain.evaluate import evaluate_attacks

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        res = evaluate_attacks(model, x, y, ["clean", "pgd-3", "cw-3", "fgsm"], eps=0.1,
                               step_size=0.03, batch_size=16, world=World(rank, 2, rank, 2))
        queue.put((rank, {k: v.tolist() for k, v in res.items()}))
    finally:
        dist.destroy_process_group()


def test_per_epoch_validation_shards_and_gathers(run_dir, tmp_path):
    from adaptrain.evaluate import evaluate_attacks
    from adaptrain.runs import load_model

    model, cfg, arrays, _ = load_model(str(run_dir), device="cpu")
    x, y = arrays.x_test[:50], arrays.y_test[:50]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = evaluate_attacks(model, x, y, ["clean", "pgd-3", "cw-3", "fgsm"], eps=0.1,
                               step_size=0.03, batch_size=16)
    finally:
        torch.set_num_threads(threads)
    ctx = multiprocessing.get_context("fork")  # the children inherit the imports: no 8 s start
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_validation_rank, args=(r, init, model, x, y, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    expected = {k: v.tolist() for k, v in ref.items()}
    assert got[0] == expected and got[1] == expected
    assert 0 < sum(expected["pgd-3"]) < sum(expected["clean"])
