"""Start a worker process and wait for it: timeout, Ctrl-C, crash and OOM all become a status.

A run with world_size > 1 goes through torchrun (gloo on the CPU, nccl on a GPU); torchrun sets
RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* for every rank. Threads are split between processes
(OMP_NUM_THREADS = cores / processes): oversubscription made ZeRO-2 twenty times slower here.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness.paths import REPO_ROOT

OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "MemoryError", "Cannot allocate memory")


@dataclasses.dataclass
class WorkerResult:
    status: str  # ok | failed | timeout | oom | cancelled
    returncode: int | None
    error_tail: str | None
    seconds: float
    cpu_s: float | None = None  # CPU time of the worker and the processes it waited for (its ranks)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_command(mode: str, job_path: Path, world_size: int, rdzv: dict | None = None,
                   python: str | Path | None = None) -> list[str]:
    """`python`: the interpreter of the cell's environment (harness.run.environments); default this one."""
    python = str(python or sys.executable)
    if world_size <= 1:
        return [python, "-m", "harness.run.worker", mode, str(job_path)]
    rdzv = rdzv or {}
    cmd = [python, "-m", "torch.distributed.run", f"--nproc-per-node={world_size}"]
    if rdzv.get("nnodes", 1) > 1:  # multi-node: torchrun's rendezvous options, passed through
        cmd += [f"--nnodes={rdzv['nnodes']}", f"--node-rank={rdzv.get('node_rank', 0)}",
                f"--rdzv-endpoint={rdzv['endpoint']}", "--rdzv-backend=c10d",
                f"--rdzv-id={rdzv.get('id', 'lorabench')}"]
    else:
        cmd += [f"--master-port={free_port()}", "--master-addr=127.0.0.1"]
    return cmd + ["-m", "harness.run.worker", mode, str(job_path)]


def worker_env(world_size: int, device: str, cpus: list[int] | None = None) -> dict:
    env = dict(os.environ)
    if cpus:  # a lane's cores: as many threads as it has cores, whatever the caller's environment says
        env["OMP_NUM_THREADS"] = str(max(1, len(cpus) // max(1, world_size)))
    cores = os.cpu_count() or 1
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // max(1, world_size))))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    repo = str(REPO_ROOT)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if device == "cpu":
        env.setdefault("DS_ACCELERATOR", "cpu")
        env["CUDA_VISIBLE_DEVICES"] = ""
    # glibc keeps freed memory; a lower trim threshold makes RSS follow what the run really holds
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "131072")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    return env


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _child_setup(cpus: list[int] | None):
    """What the child does before exec: get SIGKILL when the runner dies (kill -9 leaves no orphans),
    and keep to its lane's cores."""
    def setup() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def _reap(proc: subprocess.Popen) -> tuple[int, float] | None:
    """(exit code, CPU seconds) once the worker has ended, else None. wait4's resource usage covers
    the worker and every process it waited for (torchrun's ranks), which Popen.wait does not give."""
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def run_worker(mode: str, job_path: Path, log_path: Path, timeout_s: float, world_size: int = 1,
               device: str = "cpu", poll=None, rdzv: dict | None = None,
               cpus: list[int] | None = None, python: str | Path | None = None) -> WorkerResult:
    """Run one worker to completion; `poll()` is called about twice a second while it runs (it may
    raise KeyboardInterrupt to cancel the worker). `cpus`: the cores the worker may run on; `python`:
    the interpreter to run it with (a cell's own environment; default the main one)."""
    t0 = time.perf_counter()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(worker_command(mode, job_path, world_size, rdzv, python), stdout=log,
                                stderr=subprocess.STDOUT,
                                env=worker_env(world_size, device, cpus), start_new_session=True,
                                preexec_fn=_child_setup(cpus), cwd=str(REPO_ROOT))
        try:
            while (ended := _reap(proc)) is None:
                time.sleep(0.5)
                if poll:
                    poll()
                if time.perf_counter() - t0 > timeout_s:
                    _kill(proc)
                    return WorkerResult("timeout", None, f"timed out after {timeout_s:.0f} s\n" + tail(log_path),
                                        time.perf_counter() - t0)
        except KeyboardInterrupt:
            _kill(proc)
            return WorkerResult("cancelled", None, "cancelled (Ctrl-C)\n" + tail(log_path), time.perf_counter() - t0)
    rc, cpu_s = ended
    seconds = time.perf_counter() - t0
    if rc == 0:
        return WorkerResult("ok", 0, None, seconds, cpu_s)
    text = tail(log_path, 60)
    # SIGKILL with no message is what the kernel's OOM killer leaves (or a manual kill -9)
    oom = rc in (-signal.SIGKILL, 137) or any(m in text for m in OOM_MARKERS)
    return WorkerResult("oom" if oom else "failed", rc, f"exit status {rc}\n{text}", seconds, cpu_s)


def _kill(proc: subprocess.Popen) -> None:
    """Kill the worker's whole process group (torchrun's ranks included)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
