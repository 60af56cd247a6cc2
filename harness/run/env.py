"""The environment fingerprint every record carries: code, packages, machine, data and model."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from pathlib import Path

from harness.paths import REPO_ROOT

PACKAGES = ("torch", "torchvision", "transformers", "peft", "ms-swift", "trl", "deepspeed", "accelerate",
            "jiwer", "numpy", "pillow", "tokenizers", "lorabench")
# what the train worker reports of its own environment (a cell's `env` may change any of them)
FRAMEWORKS = ("torch", "transformers", "peft", "ms-swift", "llamafactory", "trl", "accelerate", "deepspeed")


def git_state() -> tuple[str | None, bool]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, False


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions as this process's sys.path sees them (an environment's overlay first)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        return []


def dataset_fingerprint(dataset_dir: str | Path, name: str) -> dict:
    build = Path(dataset_dir) / "BUILD.json"
    checksum = None
    if build.is_file():
        checksum = json.loads(build.read_text()).get("checksum")
    return {"name": name, "checksum": checksum, "path": str(dataset_dir)}


def model_fingerprint(model_dir: str | Path, name: str) -> dict:
    meta = Path(model_dir) / "lorabench.json"
    checksum = None
    if meta.is_file():
        checksum = json.loads(meta.read_text()).get("checksum")
    if checksum is None:
        from harness.tinymodel.build import checkpoint_checksum

        checksum = checkpoint_checksum(Path(model_dir))
    return {"name": name, "checksum": checksum, "path": str(model_dir)}


def fingerprint(matmul_peak_gflops: float | None = None) -> dict:
    """Everything but dataset/model (added per run) and torch threads (the worker reports them)."""
    commit, dirty = git_state()
    return {
        "git_commit": commit, "git_dirty": dirty, "python": platform.python_version(),
        "packages": package_versions(), "torch_threads": None, "cpu": cpu_model(), "cores": os.cpu_count(),
        "gpu": gpu_names(), "hostname": socket.gethostname(), "platform": platform.platform(),
        "matmul_peak_gflops": matmul_peak_gflops,
    }
