"""The thread policy: affinity, cgroup quota (v1 and v2), OMP_NUM_THREADS, sharers, garbage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from adaptrain import threads


@pytest.fixture
def cpus(monkeypatch):
    """Pretend the affinity mask holds ``n`` CPUs; no OMP_NUM_THREADS."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def set_cpus(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)

    return set_cpus


def v2(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def v1(root: Path, quota: str, period: str, sub: str = "cpu") -> Path:
    d = root / sub
    d.mkdir(parents=True, exist_ok=True)
    (d / "cpu.cfs_quota_us").write_text(quota)
    (d / "cpu.cfs_period_us").write_text(period)
    return root


def test_affinity_without_cgroup(cpus, tmp_path):
    cpus(6)
    assert threads.available_cpus(tmp_path / "none") == 6
    assert threads.default_threads(cgroup_root=tmp_path / "none") == 6


def test_no_affinity_falls_back_to_cpu_count(monkeypatch, tmp_path):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert threads.available_cpus(tmp_path) == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert threads.available_cpus(tmp_path) == 1


@pytest.mark.parametrize("text, expected", [
    ("200000 100000", 2),     # 2 CPUs
    ("150000 100000", 2),     # 1.5 CPUs: rounded up
    ("50000 100000", 1),      # half a CPU: at least 1
    ("400000 100000\n", 4),
    ("300000", 3),            # period omitted: the kernel's 100000
    ("max 100000", 8),        # no quota
    ("max", 8),
    ("", 8),
    ("garbage here", 8),
    ("-1 100000", 8),
    ("0 100000", 8),
    ("100000 0", 8),
    ("1e5 1e5", 8),
])
def test_cgroup_v2_quota(cpus, tmp_path, text, expected):
    cpus(8)
    root = v2(tmp_path, text)
    assert threads.available_cpus(root) == expected


def test_quota_never_raises_above_affinity(cpus, tmp_path):
    cpus(2)
    assert threads.available_cpus(v2(tmp_path, "800000 100000")) == 2


@pytest.mark.parametrize("quota, period, expected", [
    ("300000", "100000", 3),
    ("250000", "100000", 3),
    ("-1", "100000", 8),       # cgroup v1 writes -1 for "no quota"
    ("abc", "100000", 8),
    ("300000", "xyz", 8),
    ("", "", 8),
])
def test_cgroup_v1_quota(cpus, tmp_path, quota, period, expected):
    cpus(8)
    assert threads.available_cpus(v1(tmp_path, quota, period)) == expected


def test_cgroup_v1_combined_controller_directory(cpus, tmp_path):
    cpus(8)
    assert threads.available_cpus(v1(tmp_path, "200000", "100000", sub="cpu,cpuacct")) == 2


def test_binary_garbage_is_no_limit(cpus, tmp_path):
    cpus(4)
    (tmp_path / "cpu.max").write_bytes(b"\xff\xfe\x00garbage")
    assert threads.available_cpus(tmp_path) == 4


def test_default_root_is_read(cpus, tmp_path, monkeypatch):
    cpus(8)
    monkeypatch.setattr(threads, "CGROUP_ROOT", v2(tmp_path, "300000 100000"))
    assert threads.available_cpus() == 3
    assert threads.default_threads() == 3


@pytest.mark.parametrize("n, sharers, expected", [(8, 1, 8), (8, 2, 4), (8, 3, 2), (2, 4, 1), (1, 1, 1),
                                                  (8, 0, 8)])
def test_sharers_split_the_cpus(cpus, tmp_path, n, sharers, expected):
    cpus(n)
    assert threads.default_threads(sharers, cgroup_root=tmp_path) == expected


def test_sharers_split_the_quota(cpus, tmp_path):
    cpus(16)
    assert threads.default_threads(2, cgroup_root=v2(tmp_path, "400000 100000")) == 2


@pytest.mark.parametrize("value, expected", [("3", 3), (" 5 ", 5), ("1", 1)])
def test_omp_num_threads_wins(cpus, tmp_path, monkeypatch, value, expected):
    cpus(8)
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    root = v2(tmp_path, "200000 100000")
    assert threads.default_threads(cgroup_root=root) == expected
    assert threads.default_threads(4, cgroup_root=root) == expected  # even over sharers
    assert threads.resolve_threads("auto", cgroup_root=root) == expected


@pytest.mark.parametrize("value", ["0", "-2", "", "two", "2.5", "4,4"])
def test_bad_omp_num_threads_is_ignored(cpus, tmp_path, monkeypatch, value):
    cpus(6)
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert threads.default_threads(2, cgroup_root=tmp_path) == 3


def test_resolve_threads(cpus, tmp_path):
    cpus(4)
    assert threads.resolve_threads(None, cgroup_root=tmp_path) == 4
    assert threads.resolve_threads("auto", cgroup_root=tmp_path) == 4
    assert threads.resolve_threads("AUTO", 2, cgroup_root=tmp_path) == 2
    assert threads.resolve_threads(3) == 3
    assert threads.resolve_threads("7") == 7  # explicit settings are not capped


@pytest.mark.parametrize("bad", [0, -1, "0", "x", "1.5", True, ""])
def test_resolve_threads_refuses(bad):
    with pytest.raises(ValueError, match="threads"):
        threads.resolve_threads(bad)


def test_apply_threads(monkeypatch):
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(threads, "_interop_tried", False)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("intra", n)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)

    def interop(n: int) -> None:
        calls.append(("interop", n))
        raise RuntimeError("Error: cannot set number of interop threads after parallel work has started")

    monkeypatch.setattr(torch, "set_num_interop_threads", interop)
    assert threads.apply_threads(3) == 3  # the RuntimeError is swallowed
    assert threads.apply_threads(2) == 3
    assert calls == [("intra", 3), ("interop", 3), ("intra", 2)]  # inter-op attempted once
    with pytest.raises(ValueError):
        threads.apply_threads(0)


def test_apply_threads_really_sets_torch():
    before = torch.get_num_threads()
    try:
        assert threads.apply_threads(1) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


PROBE = """
import os, sys
seen = []
class AtTorchImport:  # records the wait policy at the moment torch (and its OpenMP) loads
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
sys.meta_path.insert(0, AtTorchImport())
import adaptrain.cli
print(seen[0])
"""


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_line_makes_openmp_wait_passively_unless_told(preset, expected):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.strip() == expected
