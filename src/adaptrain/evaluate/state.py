"""Resumable evaluation state: per job (an attack at a budget, a corruption at a severity),
which examples are done and whether each is still correctly classified.

Stored as JSON (no pickle) next to the result file; a job's results are one character per
example ('.' not done, '0' broken / wrong, '1' correct). The ``key`` fingerprints everything
that determines the results (weights, data, settings); a state with another key, or one that
is malformed, is ignored (``stale`` says so, for the caller to tell the user). Writes go through
:func:`adaptrain.fileio.write_file` (atomic) and are throttled: at most one every
``save_every_s`` seconds, plus one per finished job and one when a job is interrupted. A state
on disk therefore always holds whole chunks, in order, so a resumed job re-forms exactly the
chunks the interrupted one would have run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .. import fileio


class EvalState:
    def __init__(self, path: Path | None, key: str, n: int, save_every_s: float = 5.0) -> None:
        self.path = path
        self.key = key
        self.n = n
        self.save_every_s = save_every_s
        self.jobs: dict[str, dict[str, Any]] = {}
        self.resumed = False
        self.stale = False  # a state file was there but is for something else (or unreadable)
        self._last_save = time.monotonic()
        if path is not None and path.is_file():
            jobs = self._read(path)
            if jobs is None:
                self.stale = True
            else:
                self.jobs = jobs
                self.resumed = bool(jobs)

    def _read(self, path: Path) -> dict[str, dict[str, Any]] | None:
        """The saved jobs if the file is a well-formed state for this key, else None."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("key") != self.key or data.get("n") != self.n:
            return None
        jobs = data.get("jobs")
        if not isinstance(jobs, dict) or not all(self._valid_job(j) for j in jobs.values()):
            return None
        return jobs

    def _valid_job(self, job: Any) -> bool:
        if not isinstance(job, dict):
            return False
        res, flags = job.get("results"), job.get("flags")
        return (isinstance(res, str) and len(res) == self.n and set(res) <= set(".01")
                and isinstance(job.get("seconds"), (int, float)) and isinstance(flags, list)
                and all(isinstance(f, str) for f in flags))

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
        fileio.write_file(self.path, json.dumps({"key": self.key, "n": self.n, "jobs": self.jobs}))

    def remove(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()
