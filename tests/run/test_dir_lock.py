"""One run at a time on a results directory; a killed holder blocks nothing; a directory that cannot
be made is one line."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import UserError
from harness.run.dir_lock import HOLDER_NAME, hold


def test_a_second_run_on_a_held_directory_exits_2_naming_the_holder_and_a_killed_holder_blocks_nothing(
        tmp_path, dummy_suite, mini_dataset):
    suite = dummy_suite(matrix={"seed": [0]}, cells={"seed=0": {"train": {"steps": 100_000}}})  # runs till killed
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "harness.cli", "run", str(suite), "--results", str(results)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (results / HOLDER_NAME).is_file():
            time.sleep(0.1)
        assert (results / HOLDER_NAME).is_file(), "the first run never took the directory"
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip().count("\n") == 0 and "Traceback" not in second.stderr
        assert f"in use by process {first.pid} " in second.stderr
        assert not list((results / "runs").glob("*.json"))  # the second run touched nothing
        work = results / "work"  # in a worker's command line (its job file), not in the runner's
        deadline = time.time() + 60
        while time.time() < deadline and not _processes_mentioning(work):
            time.sleep(0.1)
        assert _processes_mentioning(work), "the first run's worker never started"
    finally:
        os.kill(first.pid, signal.SIGKILL)  # the runner alone: its worker must not outlive it
        first.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _processes_mentioning(work):
        time.sleep(0.2)
    assert not _processes_mentioning(work), "a worker outlived its killed runner"
    # kill -9 leaves the lock file behind, but no lock: the next run goes ahead
    third = subprocess.run(cmd + ["--set", "train.steps=3"], capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]


def _processes_mentioning(path) -> list[int]:
    """Live processes whose command line names `path`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(path).encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def test_threads_of_one_run_share_the_directory(tmp_path):
    seen = []

    def lane():
        with hold(tmp_path):
            seen.append((tmp_path / HOLDER_NAME).read_text())
            time.sleep(0.2)

    with hold(tmp_path):
        threads = [threading.Thread(target=lane) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (tmp_path / HOLDER_NAME).is_file()
    assert len(seen) == 2 and f"process {os.getpid()} " in seen[0]
    assert not (tmp_path / HOLDER_NAME).exists()  # released with the last holder


def test_a_results_directory_that_cannot_be_made_is_one_line(tmp_path, dummy_suite, capsys):
    assert main(["run", str(dummy_suite()), "--results", "/proc/nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorabench: error: cannot create the results directory /proc/nope") and err.count("\n") == 1
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot create the results directory"):
        with hold(tmp_path / "file" / "below"):  # a file where a directory should be
            pass
