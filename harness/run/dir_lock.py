"""One run at a time on a results directory.

Two `lorabench run` (or `parity`) processes on one directory would train the same cells in the same
work directories: each slows the other several times over, and one can overwrite the adapter the
other is evaluating. The directory's lock is an OS file lock (`filelock`), so a process killed with
kill -9 releases it with its file descriptors and the next run goes ahead. Within one process the
lock is shared and counted, so code that holds a directory may call code that holds it again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

from filelock import FileLock, Timeout

from harness.errors import UserError

LOCK_NAME = ".lorabench.lock"
HOLDER_NAME = ".lorabench.lock.holder"  # who holds it: the lock file itself is truncated by every attempt


@contextlib.contextmanager
def hold(results_dir: Path):
    """Hold `results_dir` for this process; a directory another process holds is a UserError naming it."""
    results_dir = Path(results_dir)
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the results directory {results_dir}: {exc.strerror or exc}") from None
    lock = FileLock(results_dir / LOCK_NAME, is_singleton=True, thread_local=False, blocking=False)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"{results_dir} is in use by {holder(results_dir)}: wait for it, or pass another "
                        "--results directory") from None
    if lock.lock_counter == 1:
        (results_dir / HOLDER_NAME).write_text(
            f"process {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv) or 'python'})\n")
    try:
        yield
    finally:
        if lock.lock_counter == 1:  # this release frees the directory
            (results_dir / HOLDER_NAME).unlink(missing_ok=True)
        lock.release()


def holder(results_dir: Path) -> str:
    """Who holds the lock, as its holder wrote it (or 'another process' when it wrote nothing yet)."""
    try:
        return (Path(results_dir) / HOLDER_NAME).read_text().strip() or "another process"
    except OSError:
        return "another process"
