"""Kill a training run (SIGKILL) at a chosen write step or batch, in a forked child.

A child forked from the test process inherits torch and the package already imported, so a
run costs a fraction of a second instead of the ~9 s of imports of a new interpreter. Every
child runs with one thread (the forked process must not use the parent's OpenMP pool, and
the reference and resumed runs must do the same arithmetic). Kill points are the calls of
the package's write primitives (``adaptrain.fileio``: each file write, each rename, each
removal) and of ``train.training_loss`` (one per batch); the child SIGKILLs itself just
before the chosen call, so nothing after that point happens, as with a power cut.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import torch

from adaptrain import fileio
from adaptrain import train as train_mod
from adaptrain.cli import main

KILLED = -signal.SIGKILL


def _label(kind: str, path: Path, root: Path) -> str:
    rel = str(Path(path).resolve().relative_to(root.resolve())) if root in Path(path).resolve().parents \
        else Path(path).name
    return f"{kind} {re.sub(r'-[0-9a-f]{8}', '-*', rel)}"


def _instrument(root: Path, kill_at: int | None, log: list[str]) -> None:
    """Count write steps and batches; SIGKILL this process before step number ``kill_at``."""

    def step(label: str) -> None:
        if kill_at is not None and len(log) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        log.append(label)

    write_file, replace, remove_tree = fileio.write_file, fileio.replace, fileio.remove_tree
    training_loss = train_mod.training_loss

    def w(path, data):
        step(_label("write", path, root))
        write_file(path, data)

    def r(src, dst):
        step(_label("rename", src, root) + " -> " + _label("", dst, root).strip())
        replace(src, dst)

    def rm(path):
        step(_label("remove", path, root))
        remove_tree(path)

    def loss(run, model, batch, *args, **kwargs):
        if kwargs.get("commit", True):
            step(f"batch {batch.step.epoch + 1}.{batch.step.batch + 1}")
        return training_loss(run, model, batch, *args, **kwargs)

    fileio.write_file, fileio.replace, fileio.remove_tree = w, r, rm
    train_mod.training_loss = loss


def run_child(argv: list[str], root: Path, kill_at: int | None = None,
              events: Path | None = None, output: Path | None = None) -> int:
    """``adaptrain <argv>`` in a forked child; -> its exit code, or KILLED. With ``events``, the
    child writes the list of steps it went through there (JSON); with ``output``, what it
    prints (stdout and stderr)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 98
        try:
            if output is not None:
                sys.stdout = sys.stderr = open(output, "w", buffering=1)  # noqa: SIM115
            torch.set_num_threads(1)
            # and `threads: auto` must resolve to 1 too (OMP_NUM_THREADS wins over the CPUs)
            os.environ["OMP_NUM_THREADS"] = "1"
            log: list[str] = []
            _instrument(root, kill_at, log)
            code = main([*argv, "--quiet"])
            if events is not None:
                events.write_text(json.dumps(log))
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 99
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
