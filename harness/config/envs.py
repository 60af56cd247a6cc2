"""Environments: named package sets a cell's train worker may run in, as data.

A spec's `env` is either the name of a file `harness/envs/NAME.yaml`:

    packages: {peft: 0.21.2}      # versions on top of constraints.txt
    without: [ms-swift]           # pinned packages this set leaves out (ms-swift 4.6.0 requires peft<0.21)
    follow: [triton, nvidia-*]    # pinned packages whose version the resolver chooses, to fit `packages`
                                  # (torch 2.15.0 needs CUDA 13.2 wheels; the pins are 13.0's)

or pins written inline, `peft==0.21.2,transformers==5.19.1`. This module only reads and checks the
definition (spec validation calls it, so a misspelt name fails before anything runs); creating the
environment is harness.run.environments'.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.errors import UserError
from harness.paths import HARNESS_DIR

ENVS_DIR = HARNESS_DIR / "envs"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # it names a directory: no separators, no dotfile
_PACKAGE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")  # PEP 508 names
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
FILE_KEYS = ("packages", "without", "follow", "description")
_PATTERN = re.compile(r"^[A-Za-z0-9*?][A-Za-z0-9._*?-]*$")  # a package name, or one with * / ? wildcards
# the package a framework's adapter cannot train without: an environment that leaves it out cannot run it
FRAMEWORK_PACKAGE = {"peft": "peft", "torch": "peft", "swift": "ms-swift", "llamafactory": "llamafactory"}
# frameworks the main environment does not install (their pins conflict with it): a cell without `env`
# trains in this set, and an `env` given must install the package
FRAMEWORK_ENV = {"llamafactory": "llamafactory-0.9.5"}


def canonical(name: str) -> str:
    """PEP 503 normalised name: `ms_swift`, `MS-Swift` and `ms.swift` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class EnvDef:
    name: str
    packages: tuple[tuple[str, str], ...]  # (canonical name, exact version), sorted
    without: tuple[str, ...] = ()  # canonical names, sorted
    follow: tuple[str, ...] = ()  # canonical names or fnmatch patterns, sorted: pins the resolver may move
    source: str = "inline"  # the file it was read from, or "inline"

    def follows(self, package: str) -> bool:
        """Whether the pinned `package` is released to the resolver in this set."""
        return any(fnmatch.fnmatchcase(package, pattern) for pattern in self.follow)


def available() -> list[str]:
    """The names under harness/envs/."""
    return sorted(p.stem for p in ENVS_DIR.glob("*.yaml"))


def load_env(ref: str) -> EnvDef:
    """The definition a spec's `env` names; a UserError in one line if it names none or is malformed."""
    if not isinstance(ref, str) or not ref.strip():
        raise UserError(f"env must be a name ({', '.join(available()) or 'none under harness/envs/'}) "
                        f"or pins like peft==0.21.2, got {ref!r}")
    ref = ref.strip()
    if "==" in ref:
        return _inline(ref)
    if not _NAME.match(ref):
        raise UserError(f"env {ref!r}: a name is letters, digits, '.', '_' and '-'")
    path = ENVS_DIR / f"{ref}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(ref, available(), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(available()) or 'none'}"
        raise UserError(f"env {ref!r}: no harness/envs/{ref}.yaml ({hint}; or give pins like peft==0.21.2)")
    return _from_file(ref, path)


def _inline(ref: str) -> EnvDef:
    pins = {}
    for item in (p.strip() for p in ref.replace(" ", ",").split(",")):
        if not item:
            continue
        name, _, version = item.partition("==")
        _check_pin(name, version, f"env {ref!r}")
        pins[canonical(name)] = version
    # the name names its cache directory: the pins themselves, readable
    name = "_".join(f"{n}-{v}" for n, v in sorted(pins.items()))
    return EnvDef(name=name, packages=tuple(sorted(pins.items())))


def _from_file(name: str, path: Path) -> EnvDef:
    where = f"harness/envs/{path.name}"
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{where}: expected a mapping with packages: {{name: version}}")
    for key in doc:
        if key not in FILE_KEYS:
            close = difflib.get_close_matches(str(key), FILE_KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(FILE_KEYS)}"
            raise UserError(f"{where}: unknown key {key!r} ({hint})")
    packages, without = doc.get("packages") or {}, doc.get("without") or []
    if not isinstance(packages, dict) or not packages:
        raise UserError(f"{where}: packages must be a mapping of name: version with at least one entry")
    pins = {}
    for pkg, version in packages.items():
        if isinstance(version, float):  # YAML reads 0.20 as 0.2: a different release
            raise UserError(f"{where}: {pkg}: write the version as a string ('{version}' may not be what you meant)")
        _check_pin(str(pkg), str(version), where)
        pins[canonical(str(pkg))] = str(version)
    if not (isinstance(without, list) and all(isinstance(w, str) and _PACKAGE.match(w) for w in without)):
        raise UserError(f"{where}: without must be a list of package names")
    follow = doc.get("follow") or []
    if not (isinstance(follow, list) and all(isinstance(f, str) and _PATTERN.match(f) for f in follow)):
        raise UserError(f"{where}: follow must be a list of package names or patterns like nvidia-*")
    return EnvDef(name=name, packages=tuple(sorted(pins.items())),
                  without=tuple(sorted({canonical(w) for w in without})),
                  follow=tuple(sorted({canonical(f) for f in follow})), source=where)


def _check_pin(name: str, version: str, where: str) -> None:
    if not _PACKAGE.match(name) or not _VERSION.match(version):
        raise UserError(f"{where}: {name}=={version} is not a package name and an exact version")


def check_env(ref, framework: str, source: str = "spec") -> EnvDef:
    """Spec validation: `env` names a definition that can run `framework`."""
    try:
        env = load_env(ref)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    needed = FRAMEWORK_PACKAGE.get(framework)
    if needed in env.without:
        raise UserError(f"{source}: env {env.name!r} leaves out {needed}, which framework {framework} needs")
    if framework in FRAMEWORK_ENV and needed not in dict(env.packages):
        raise UserError(f"{source}: env {env.name!r} does not install {needed}, which framework {framework} needs "
                        f"(the main environment has no {needed}; use env: {FRAMEWORK_ENV[framework]})")
    return env
