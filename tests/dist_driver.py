"""Run ``adaptrain`` command lines one after another in one process, so that one ``torchrun``
launch (2 gloo ranks on CPU) serves several runs: ``python tests/dist_driver.py JOBS.json``.

JOBS.json: a list of argument lists for ``adaptrain``. Faults for the tests, from the
environment: ``DRIVER_KILL_AT=N`` SIGKILLs rank 1 at its N-th training step in torchrun's
first attempt (restart count 0); ``DRIVER_FAIL_RANK1=1`` raises inside rank 1's training
step. ``DRIVER_DUMP_BUFFERS=DIR`` saves each rank's buffers as the end of an epoch syncs them:
what ``World.broadcast_`` received (``rank{r}-pre{i}.pt``) and what the divergence check then
saw, per network (``rank{r}-post{i}.pt``). Not part of the package: test scaffolding only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

import adaptrain.train as train_mod
from adaptrain.cli import main
from adaptrain.distributed import World


def install_faults() -> None:
    rank = int(os.environ.get("RANK", "0"))
    first_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0
    kill_at = int(os.environ.get("DRIVER_KILL_AT", "0"))
    fail = os.environ.get("DRIVER_FAIL_RANK1") == "1"
    if rank != 1 or not (kill_at and first_attempt or fail):
        return
    original, steps = train_mod.batch_mean, [0]

    def faulty(loss_vec, batch):
        steps[0] += 1
        if kill_at and steps[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if fail and steps[0] == 2:
            raise RuntimeError("injected failure on rank 1")
        return original(loss_vec, batch)

    train_mod.batch_mean = faulty


def install_buffer_dump(folder: Path) -> None:
    rank = os.environ.get("RANK", "0")
    broadcast, check = World.broadcast_, train_mod.first_nonfinite
    calls = {"pre": 0, "post": 0}

    def save(kind: str, tensors: list[torch.Tensor]) -> None:
        torch.save([t.detach().clone() for t in tensors], folder / f"rank{rank}-{kind}{calls[kind]}.pt")
        calls[kind] += 1

    def recording_broadcast(self, *tensors):
        save("pre", list(tensors))
        return broadcast(self, *tensors)

    def recording_check(net):
        save("post", list(net.buffers()))
        return check(net)

    World.broadcast_ = recording_broadcast
    train_mod.first_nonfinite = recording_check


if __name__ == "__main__":
    install_faults()
    if folder := os.environ.get("DRIVER_DUMP_BUFFERS"):
        install_buffer_dump(Path(folder))
    for argv in json.loads(Path(sys.argv[1]).read_text()):
        code = main(argv)
        if code:
            sys.exit(code)
