"""How many CPU threads torch should use: the CPUs this process may really run on.

``os.cpu_count()`` counts the machine's cores, not the ones a container or ``taskset`` lets
this process use, so torch's default can oversubscribe a shared or limited machine. Here the
count is the CPU affinity mask (``os.sched_getaffinity``; ``os.cpu_count`` where that does not
exist), further limited by a cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``; a quota of q microseconds per period p allows ceil(q / p) CPUs).
``default_threads(sharers)`` splits those CPUs between processes that run side by side, and an
``OMP_NUM_THREADS`` the user set always wins. ``resolve_threads`` turns a setting (an int,
``"auto"`` or None) into a count, ``apply_threads`` gives it to torch.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import torch

CGROUP_ROOT = Path("/sys/fs/cgroup")
_interop_tried = False  # torch sizes its inter-op pool once per process


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _positive_int(text: str | None) -> int | None:
    """``text`` as an int > 0, or None (missing, garbage, 0, negative, 'max')."""
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value > 0 else None


def cgroup_cpu_limit(root: Path | str | None = None) -> int | None:
    """CPUs allowed by the cgroup CPU quota under ``root`` (default /sys/fs/cgroup), or None
    when there is no quota (files missing or unreadable, quota 'max' or -1, garbage values)."""
    base = CGROUP_ROOT if root is None else Path(root)
    v2 = _read(base / "cpu.max")
    if v2 is not None:
        parts = v2.split()
        quota = _positive_int(parts[0]) if parts else None
        period = _positive_int(parts[1]) if len(parts) > 1 else 100_000  # the kernel's default
        if quota is not None and period is not None:
            return max(1, math.ceil(quota / period))
        return None
    for v1 in (base / "cpu", base / "cpu,cpuacct", base):
        quota = _positive_int(_read(v1 / "cpu.cfs_quota_us"))
        period = _positive_int(_read(v1 / "cpu.cfs_period_us"))
        if quota is not None and period is not None:
            return max(1, math.ceil(quota / period))
    return None


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where there is no mask)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        try:
            n = len(getaffinity(0))
            if n > 0:
                return n
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


def available_cpus(cgroup_root: Path | str | None = None) -> int:
    """CPUs this process may use: its affinity mask, limited by the cgroup CPU quota."""
    n = affinity_cpus()
    limit = cgroup_cpu_limit(cgroup_root)
    return max(1, min(n, limit) if limit is not None else n)


def omp_threads() -> int | None:
    """``OMP_NUM_THREADS`` when it is set to a positive integer, else None."""
    return _positive_int(os.environ.get("OMP_NUM_THREADS"))


def default_threads(sharers: int = 1, cgroup_root: Path | str | None = None) -> int:
    """Threads for one of ``sharers`` processes running side by side: the available CPUs
    divided between them (at least 1). A positive ``OMP_NUM_THREADS`` wins."""
    omp = omp_threads()
    if omp is not None:
        return omp
    return max(1, available_cpus(cgroup_root) // max(1, int(sharers)))


def resolve_threads(setting: int | str | None, sharers: int = 1,
                    cgroup_root: Path | str | None = None) -> int:
    """A thread setting as a count: ``"auto"`` or None is :func:`default_threads`; an int (or
    its text) must be >= 1. Raises ValueError for anything else."""
    if setting is None or (isinstance(setting, str) and setting.strip().lower() == "auto"):
        return default_threads(sharers, cgroup_root)
    if isinstance(setting, bool):
        raise ValueError(f"threads must be 'auto' or an integer >= 1, got {setting!r}")
    try:
        n = int(setting) if isinstance(setting, int) else int(str(setting).strip())
    except ValueError:
        raise ValueError(f"threads must be 'auto' or an integer >= 1, got {setting!r}") from None
    if n < 1:
        raise ValueError(f"threads must be 'auto' or an integer >= 1, got {setting!r}")
    return n


def apply_threads(n: int) -> int:
    """``torch.set_num_threads(n)``; the inter-op pool is sized too when torch still allows
    it (only before its first parallel work: afterwards the RuntimeError is ignored).
    Returns ``torch.get_num_threads()``."""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    global _interop_tried
    torch.set_num_threads(int(n))
    if not _interop_tried:
        _interop_tried = True
        # already set, or parallel work has started: torch refuses with a RuntimeError
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(int(n))
    return torch.get_num_threads()
