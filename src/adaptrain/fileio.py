"""Every write into a run directory goes through here: atomic files, renames, removals, locks.

A file is written under a temporary name in its own folder, flushed to disk and renamed over
the target (``write_file``), so a reader or a resumed run never sees half a file. Keeping
the primitive operations in one module gives the crash tests one place to interrupt a run at
every write step. ``exclusive_lock`` holds an advisory lock (``flock``; ``msvcrt`` on
Windows) for the life of a process: the operating system releases it when the process
dies, even by SIGKILL, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError


def write_file(path: Path, data: bytes | str) -> None:
    """Atomically replace ``path`` with ``data`` (str is written as UTF-8)."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.part-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, replacing a file (or an empty directory) there."""
    os.replace(src, dst)


def remove_tree(path: Path) -> None:
    """Delete a directory and everything below it (no error when it is already gone)."""
    shutil.rmtree(path, ignore_errors=True)


def remove_partials(directory: Path) -> None:
    """Delete files that :func:`write_file` left half-written (a crash before its rename)."""
    for p in Path(directory).glob(".*.part-*"):
        p.unlink(missing_ok=True)


def is_partial(path: Path) -> bool:
    return Path(path).name.startswith(".") and ".part-" in Path(path).name


def copy_file(src: Path, dst: Path) -> None:
    write_file(dst, Path(src).read_bytes())


@contextmanager
def exclusive_lock(path: Path, *, what: str, holder: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) or raise ConfigError(what) at
    once when another process holds it; ``holder`` says what the lock protects."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+b")  # noqa: SIM115 - held open for the whole block
    except OSError as exc:
        raise ConfigError(what, f"cannot write to {path.parent}: {exc.strerror or exc}") from None
    try:
        if not _try_lock(fh):
            raise ConfigError(what, f"{holder} is in use by another adaptrain process; wait for "
                              "it to finish (or end it) and try again")
        yield
    finally:
        fh.close()  # closing releases the lock


def _try_lock(fh) -> bool:
    if sys.platform == "win32":  # pragma: no cover - not testable here
        import msvcrt

        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
