"""Run ``adaptrain`` command lines one after another in one process, so that one ``torchrun``
launch (2 gloo ranks on CPU) serves several runs: ``python tests/dist_driver.py JOBS.json``.

JOBS.json: a list of argument lists for ``adaptrain``. Faults for the tests, from the
environment: ``DRIVER_KILL_AT=N`` SIGKILLs rank 1 at its N-th training step in torchrun's
first attempt (restart count 0); ``DRIVER_FAIL_RANK1=1`` raises inside rank 1's training
step. Not part of the package: test scaffolding only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import adaptrain.train as train_mod
from adaptrain.cli import main


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


if __name__ == "__main__":
    install_faults()
    for argv in json.loads(Path(sys.argv[1]).read_text()):
        code = main(argv)
        if code:
            sys.exit(code)
