"""Create (once) and find the environment a cell's train worker runs in.

An environment is an overlay on the main one, not a copy of it. Its directory holds a virtual
environment whose site-packages has only the packages whose resolved version differs from the main
environment's, installed with `--no-deps`, and a `.pth` file that adds the main environment's
site-packages after them (with its own .pth files, so the editable lorabench install still works).
Before anything is installed, uv resolves the whole pinned set (constraints.txt with the definition's
versions put in and its `without` packages taken out), so a set that cannot work together fails
here with uv's reason, not in a worker at step 1.

Why an overlay: on the development machine the main environment is 6.7 GB (`du -sh .venv`), most of
it torch and its CUDA libraries. A full environment per release set costs that again on first
creation (uv's cache hard-links later copies, but only after it has downloaded every wheel once, and
only on the same file system); the peft 0.21.2 overlay is 3.7 MB and took about 3 s to resolve
and 0.3 s to install (`lorabench env create peft-0.21`). The price: a package the definition leaves
out (`without`) stays importable from the main environment, so spec validation refuses a cell whose
framework needs it, and a resolved set that drops a package does not delete it.

Directories are `.cache/envs/<name>-<key>`, the key a hash of the definition, constraints.txt and
the Python version, all known without the network, so a created environment is found offline; the
lock's own hash (`lock_sha256`, over the resolved name==version lines) goes into every record.
`lorabench-env.json` is written last: a directory without it is a creation that did not finish,
and is made again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from harness.config.envs import EnvDef, canonical
from harness.errors import UserError
from harness.paths import CACHE_DIR, REPO_ROOT

ENVS_ROOT = CACHE_DIR / "envs"
MANIFEST = "lorabench-env.json"
RESOLVE_TIMEOUT_S = 600


@dataclass(frozen=True)
class Environment:
    name: str
    path: Path  # the cache directory
    python: Path  # the interpreter a train worker runs with
    lock_sha256: str
    packages: dict  # FRAMEWORKS -> installed version (None: not installed), as the environment's Python sees them
    installed: list  # the name==version lines installed over the main environment

    def record(self) -> dict:
        return {"name": self.name, "lock_sha256": self.lock_sha256, "packages": self.packages,
                "installed": self.installed}


def constraints_file() -> Path:
    return REPO_ROOT / "constraints.txt"


def read_lock(text: str) -> dict[str, str]:
    """name==version lines (comments and options skipped) -> {canonical name: version}."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, _, version = line.partition("==")
            out[canonical(name.split("[", 1)[0].strip())] = version.split(";", 1)[0].strip()
    return out


def lock_sha256(lock: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{n}=={v}\n" for n, v in sorted(lock.items())).encode()).hexdigest()


def definition_key(env: EnvDef) -> str:
    """What the directory is named by: everything that decides the lock, without asking the registry."""
    definition = {"packages": env.packages, "without": env.without, "python": sys.version.split()[0],
                  "constraints": constraints_file().read_text()}
    if env.follow:  # only when set: the directories of sets without it keep their names
        definition["follow"] = env.follow
    text = json.dumps(definition, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def env_dir(env: EnvDef) -> Path:
    return ENVS_ROOT / f"{env.name}-{definition_key(env)}"


def created() -> list[dict]:
    """Every finished environment's manifest, with its directory and size on disk."""
    out = []
    for manifest in sorted(ENVS_ROOT.glob(f"*/{MANIFEST}")):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        out.append({**data, "path": str(manifest.parent), "disk_mib": _disk_mib(manifest.parent)})
    return out


def find(env: EnvDef) -> Environment | None:
    manifest = env_dir(env) / MANIFEST
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text())
    return Environment(name=data["name"], path=manifest.parent, python=Path(data["python"]),
                       lock_sha256=data["lock_sha256"], packages=data["packages"], installed=data["installed"])


def ensure(env: EnvDef, log=None) -> Environment:
    """The environment, created first if no finished one is cached (one process creates, others wait).

    An environment that cannot be resolved or installed is a UserError carrying uv's reason in one line."""
    found = find(env)
    if found:
        return found  # no uv, no network
    ENVS_ROOT.mkdir(parents=True, exist_ok=True)
    with FileLock(str(env_dir(env)) + ".lock"):
        return find(env) or _create(env, log or (lambda _msg: None))


def _create(env: EnvDef, log) -> Environment:
    t0, path = time.perf_counter(), env_dir(env)
    shutil.rmtree(path, ignore_errors=True)  # an unfinished creation
    path.mkdir(parents=True)
    pinned = read_lock(constraints_file().read_text())
    overrides = dict(env.packages)
    kept = {n: v for n, v in pinned.items() if n not in env.without and n not in overrides}
    # a followed pin stays in the set by name; the resolver picks the version that fits `packages`
    wanted = {n: ("" if env.follows(n) else f"=={v}") for n, v in kept.items()}
    wanted |= {n: f"=={v}" for n, v in overrides.items()}
    (path / "requirements.in").write_text("".join(f"{n}{v}\n" for n, v in sorted(wanted.items())))
    pins = ", ".join(f"{n}=={v}" for n, v in overrides.items())
    log(f"env {env.name}: resolving {len(wanted)} pinned packages with {pins}")
    _uv(env, ["pip", "compile", "requirements.in", "-o", "lock.txt", "--python", sys.executable,
              "--no-header", "--no-annotate"], cwd=path)
    lock = read_lock((path / "lock.txt").read_text())
    main = _main_versions()
    changed = sorted(f"{n}=={v}" for n, v in lock.items() if main.get(n) != v)
    _uv(env, ["venv", "venv", "--python", sys.executable], cwd=path)
    python = path / "venv" / "bin" / "python"
    if changed:
        log(f"env {env.name}: installing {' '.join(changed)} over the main environment")
        _uv(env, ["pip", "install", "--python", str(python), "--no-deps", *changed], cwd=path)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    main_sites = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_lorabench_main_env.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in main_sites))
    manifest = {"name": env.name, "source": env.source, "definition": {"packages": dict(env.packages),
                                                                        "without": list(env.without),
                                                                        "follow": list(env.follow)},
                "lock_sha256": lock_sha256(lock), "python": str(python), "installed": changed,
                "packages": _versions_seen_by(python), "created_s": round(time.perf_counter() - t0, 2)}
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(path / MANIFEST)
    found = find(env)
    assert found is not None
    return found


def _uv(env: EnvDef, args: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run([uv_executable(), *args, "--no-progress", "-q"], cwd=cwd, capture_output=True,
                              text=True, timeout=RESOLVE_TIMEOUT_S, env={**os.environ, "NO_COLOR": "1"})
    except subprocess.TimeoutExpired:
        raise UserError(f"env {env.name}: uv {args[0]} {args[1]} took over {RESOLVE_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise UserError(f"env {env.name}: {one_line(proc.stderr or proc.stdout)}")


def one_line(text: str, limit: int = 600) -> str:
    """uv's multi-line error as one line: `error:` / `cause:` / `hint:` lines joined."""
    parts = []
    for line in text.splitlines():
        line = line.strip().removeprefix("error:").removeprefix("cause:").strip()
        if line:
            parts.append(line)
    out = " ".join(parts) or "uv failed without a message"
    return out if len(out) <= limit else out[: limit - 3] + "..."


def uv_executable() -> str:
    beside = Path(sys.executable).parent / "uv"  # installed into the main environment by `make setup`
    found = str(beside) if beside.is_file() else shutil.which("uv")
    if not found:
        raise UserError("environments need uv: pip install -c constraints.txt uv (make setup installs it)")
    return found


def _main_versions() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
            if d.metadata["Name"]}


def _versions_seen_by(python: Path) -> dict:
    code = "import json; from harness.run.env import FRAMEWORKS as F, package_versions as v; print(json.dumps(v(F)))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    return json.loads(out.stdout)


def remove(name: str) -> list[Path]:
    """Every cached directory of `name` (all its definitions' versions); returns what was removed."""
    gone = []
    for manifest in ENVS_ROOT.glob(f"*/{MANIFEST}"):
        if json.loads(manifest.read_text()).get("name") == name:
            shutil.rmtree(manifest.parent)
            Path(str(manifest.parent) + ".lock").unlink(missing_ok=True)
            gone.append(manifest.parent)
    return gone


def _disk_mib(path: Path) -> float:
    total = sum(p.lstat().st_size for p in path.rglob("*") if not p.is_symlink() and p.is_file())
    return round(total / 2**20, 1)
