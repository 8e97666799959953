"""Resumable evaluation state: per job (an attack at a budget, a corruption at a severity),
which examples are done and whether each is still correctly classified.

Stored as JSON (no pickle) next to the result file; a job's results are one character per
example ('.' not done, '0' broken / wrong, '1' correct). The ``key`` fingerprints everything
that determines the results (weights, data, settings); a state with another key is ignored.
Writes are atomic and throttled (at most one every few seconds, plus one per finished job).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch


class EvalState:
    def __init__(self, path: Path | None, key: str, n: int, save_every_s: float = 5.0) -> None:
        self.path = path
        self.key = key
        self.n = n
        self.save_every_s = save_every_s
        self.jobs: dict[str, dict[str, Any]] = {}
        self.resumed = False
        self._last_save = 0.0
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = {}
            if data.get("key") == key and data.get("n") == n:
                self.jobs = data.get("jobs", {})
                self.resumed = bool(self.jobs)

    def job(self, name: str) -> dict[str, Any]:
        if name not in self.jobs:
            self.jobs[name] = {"results": "." * self.n, "seconds": 0.0, "flags": []}
        return self.jobs[name]

    def done_mask(self, name: str) -> torch.Tensor:
        res = self.job(name)["results"]
        return torch.tensor([c != "." for c in res], dtype=torch.bool)

    def correct(self, name: str) -> torch.Tensor:
        """(N,) bool; examples not done count as correct (not yet broken)."""
        res = self.job(name)["results"]
        return torch.tensor([c != "0" for c in res], dtype=torch.bool)

    def record(self, name: str, idx: torch.Tensor, correct: torch.Tensor, seconds: float,
               flags: list[str] = ()) -> None:
        job = self.job(name)
        chars = list(job["results"])
        for i, c in zip(idx.tolist(), correct.tolist(), strict=True):
            chars[i] = "1" if c else "0"
        job["results"] = "".join(chars)
        job["seconds"] += seconds
        for f in flags:
            if f not in job["flags"]:
                job["flags"].append(f)
        self.save()

    def finish(self, name: str) -> None:
        self.job(name)["finished"] = True
        self.save(force=True)

    def finished(self, name: str) -> bool:
        return bool(self.jobs.get(name, {}).get("finished"))

    def save(self, force: bool = False) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._last_save < self.save_every_s:
            return
        self._last_save = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"key": self.key, "n": self.n, "jobs": self.jobs}))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()
