"""The results store: one schema-versioned JSON record per run, written atomically, loaded safely.

Layout of a results directory (the runner writes it, `report` / `regress` / `history` read it):

    <results_dir>/runs/<run_id>.json               one record (schema below, docs/results-schema.md)
    <results_dir>/runs/<run_id>.predictions.jsonl  the eval predictions
    <results_dir>/runs/<run_id>.per_sample.jsonl   per-sample quality counts (harness.eval.metrics rows)
    <results_dir>/parity.json  (optional)          a parity/ablation document (see docs)

A *bundle* file (`results/baselines/<suite>.json`) holds many records:
`{"schema_version": 1, "suite": str, "created_at": str, "records": [record, ...]}`.

Every loaded record gets a private key `_source` (the file it came from) so that relative paths in it
(`per_sample_file`) can be resolved; keys starting with "_" are never written back.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.results.schema import SCHEMA_VERSION, is_number, migrate, validate_record  # noqa: F401 (part of the store's API)

# ---------------------------------------------------------------------------------------------
# Writing


def _public(record: Mapping) -> dict:
    """The record without private (loader-added) keys."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path`, atomically (see `write_text_atomic`)."""
    return write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=False, ensure_ascii=False, default=str) + "\n")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` so that readers see the old file or the new one, never a part.

    Temp file in the same directory (same filesystem: os.replace is atomic there), fsync, replace,
    then fsync the directory so the rename itself survives a power cut. The temp name starts with
    "." and ends in ".tmp", which `load_records` never reads. The one writer for records, sidecars,
    worker results and train files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; records and baselines are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def record_path(results_dir: str | Path, run_id: str) -> Path:
    return Path(results_dir) / "runs" / f"{run_id}.json"


def write_record(results_dir: str | Path, record: Mapping) -> Path:
    """Atomically write `record` to `<results_dir>/runs/<run_id>.json`; returns the path.

    Raises ValueError when the record does not validate: that is a bug in the writer, and a bad
    record on disk would only fail later, far from its cause.
    """
    record = _public(record)
    problems = validate_record(record)
    if problems:
        raise ValueError(f"refusing to write an invalid record {record.get('run_id')!r}: "
                         + "; ".join(problems))
    return write_json_atomic(record_path(results_dir, record["run_id"]), record)


# ---------------------------------------------------------------------------------------------
# Loading


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason})") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UserError(f"{path}: malformed JSON ({exc})") from None


def _checked(record: Any, where: str, source: Path) -> dict:
    record = migrate(record)
    problems = validate_record(record)
    if problems:
        raise UserError(f"{where}: not a lorabench record: " + "; ".join(problems))
    return {**record, "_source": str(source)}


def _record_files(directory: Path) -> list[Path]:
    """Record files in a directory: *.json, but not temp files, dotfiles or parity documents."""
    return sorted(p for p in directory.glob("*.json")
                  if p.is_file() and not p.name.startswith(".") and p.name != "parity.json")


def is_bundle(doc: Any) -> bool:
    return isinstance(doc, dict) and "records" in doc and "run_id" not in doc


def load_records(path: str | Path) -> list[dict]:
    """All records under `path`, in a stable order (by file name, then position in a bundle).

    `path` is a results directory (reads `runs/*.json`; a `runs/` directory itself works too), one
    record file, or a bundle file `{"schema_version": 1, "records": [...]}`. Temp files of an
    interrupted write are ignored. In a directory or a bundle, a corrupt record (malformed JSON, a
    wrong schema_version, missing keys) is skipped with a warning naming it, so one bad file never
    costs a report; a missing path, or a single record file that is corrupt, is a UserError.
    An empty directory gives [].
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.is_dir():
        runs = path / "runs"
        files = _record_files(runs if runs.is_dir() else path)
        return _skipping_corrupt((lambda f=f: _checked(_read_json(f), str(f), f)) for f in files)
    doc = _read_json(path)
    if not is_bundle(doc):
        return [_checked(doc, str(path), path)]
    if doc.get("schema_version") not in range(1, SCHEMA_VERSION + 1):  # older bundles: their records migrate
        raise UserError(f"{path}: bundle schema_version is {doc.get('schema_version')!r}, "
                        f"this lorabench reads 1 to {SCHEMA_VERSION}")
    if not isinstance(doc["records"], list):
        raise UserError(f"{path}: 'records' must be a list")
    return _skipping_corrupt((lambda i=i, r=r: _checked(r, f"{path} (records[{i}])", path))
                             for i, r in enumerate(doc["records"]))


def _skipping_corrupt(loaders) -> list[dict]:
    records = []
    for load in loaders:
        try:
            records.append(load())
        except UserError as exc:
            print(f"lorabench: warning: skipped a corrupt record: {exc}", file=sys.stderr)
    return records


def load_parity_docs(path: str | Path, records: Iterable[Mapping] = ()) -> list[dict]:
    """Parity/ablation documents for a report: each record's `parity` key, plus a `parity.json`
    in the results directory, its `runs/`, or its `parity/` (where `lorabench parity --out
    RESULTS/parity` writes `parity.json`, `ablation.json`, and one `profile_ablation.A-vs-B.json` and
    `outcome_ablation.A-vs-B.json` per pair of profiles). Identical documents appear once.

    Each document gets a `_label` (the run id or file it came from).
    """
    docs: list[dict] = []
    seen: set[str] = set()

    def add(doc: Any, label: str) -> None:
        if not isinstance(doc, dict):
            raise UserError(f"{label}: a parity document must be a JSON object")
        key = json.dumps(doc, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            docs.append({**doc, "_label": label})

    for record in records:
        if record.get("parity"):
            add(record["parity"], record["run_id"])
    path = Path(path)
    if path.is_dir():
        pair_docs = [p for pattern in ("profile_ablation*.json", "outcome_ablation*.json")
                     for p in sorted((path / "parity").glob(pattern))]
        for candidate in (path / "parity.json", path / "runs" / "parity.json", path / "parity" / "parity.json",
                          path / "parity" / "ablation.json", *pair_docs):
            if candidate.is_file():
                add(_read_json(candidate), str(candidate))
    return docs


def finished_hashes(results_dir: str | Path) -> set[str]:
    """Spec hashes that need no re-run on `--resume`: those with a record of status "ok".

    Failed, timed-out, out-of-memory and cancelled runs are NOT finished: a resume retries them
    (their record is overwritten by the retry, since the run id derives from the spec hash).
    A results directory that does not exist yet has nothing finished.
    """
    if not Path(results_dir).exists():
        return set()
    return {r["spec_hash"] for r in load_records(results_dir) if r["status"] == "ok"}


# ---------------------------------------------------------------------------------------------
# Grouping and summaries shared by report, regress and history


def _sort_key(value: Any) -> tuple:
    # None sorts first, numbers numerically, everything else by its text.
    if value is None:
        return (0, 0, "")
    if is_number(value):
        return (1, value, "")
    return (2, 0, str(value))


def _hashable(value: Any) -> Any:
    # a cell value may be a list or object (e.g. a list of target modules): key it by its JSON
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def group_cells(records: Iterable[Mapping], by: Sequence[str] = ("framework", "alignment")
                ) -> dict[tuple, list[Mapping]]:
    """Records grouped by the values of `by` in their `cell` (a missing key counts as None).

    Returns {(value, ...): [records]} with keys in a stable sorted order and records in input order.
    """
    groups: dict[tuple, list[Mapping]] = {}
    for record in records:
        key = tuple(_hashable(record.get("cell", {}).get(k)) for k in by)
        groups.setdefault(key, []).append(record)
    return dict(sorted(groups.items(), key=lambda kv: tuple(_sort_key(v) for v in kv[0])))


def cell_keys(records: Iterable[Mapping], ignore: Sequence[str] = ("seed",)) -> list[str]:
    """The cell keys used by any record, except `ignore`; framework and alignment first."""
    keys = {k for r in records for k in r.get("cell", {}) if k not in ignore}
    first = [k for k in ("framework", "alignment") if k in keys]
    return first + sorted(keys - set(first))


def metric_values(records: Iterable[Mapping], metric: str) -> list[float]:
    """The finite values of `metric` over the ok records that have it (one per seed)."""
    values = []
    for record in records:
        if record.get("status") != "ok":
            continue
        value = (record.get("metrics") or {}).get(metric)
        if is_number(value) and math.isfinite(value):
            values.append(float(value))
    return values


def timed_under_load(record: Mapping) -> bool:
    """Whether the run's timing was taken while other processes used the machine (harness.run.machine_load);
    a record from before the runner watched the load counts as not known to be loaded."""
    return bool((record.get("load") or {}).get("loaded"))


def ci_half_widths(records: Iterable[Mapping], metric: str) -> list[float]:
    """Half-widths of the bootstrap intervals `<metric>_ci` of the ok records that have one."""
    widths = []
    for record in records:
        if record.get("status") != "ok":
            continue
        ci = (record.get("metrics") or {}).get(f"{metric}_ci")
        if isinstance(ci, list) and len(ci) == 2 and all(is_number(v) for v in ci):
            widths.append(abs(float(ci[1]) - float(ci[0])) / 2.0)
    return widths


# Environment fields whose difference can change a result; hostname and git state are expected to
# differ between a baseline and a later run.
_ENV_FIELDS = ("python", "torch_threads", "cpu", "cores", "gpu", "platform")


def env_fingerprint_diff(env_a: Mapping | None, env_b: Mapping | None) -> list[str]:
    """One line per environment difference that can change results, e.g.
    "packages.torch: 2.14.1 != 2.15.0", "cpu: Xeon A != EPYC B", "dataset.checksum: ab12 != cd34".

    Compares python, package versions, torch threads, CPU, core count, GPUs, platform, and the
    dataset / model names and checksums. Not hostname or git commit. A run whose train worker ran in
    an environment of its own (a spec's `env`) also differs by that environment's name and by the
    releases its worker saw: "trained in: main != peft-0.21", "trained with peft: 0.20.0 != 0.21.2".
    """
    env_a, env_b = env_a or {}, env_b or {}
    diffs = []
    for key in _ENV_FIELDS:
        if env_a.get(key) != env_b.get(key):
            diffs.append(f"{key}: {env_a.get(key)} != {env_b.get(key)}")
    pkgs_a, pkgs_b = env_a.get("packages") or {}, env_b.get("packages") or {}
    for name in sorted(set(pkgs_a) | set(pkgs_b)):
        if pkgs_a.get(name) != pkgs_b.get(name):
            diffs.append(f"packages.{name}: {pkgs_a.get(name)} != {pkgs_b.get(name)}")
    for what in ("dataset", "model"):
        a, b = env_a.get(what) or {}, env_b.get(what) or {}
        for key in ("name", "checksum"):
            if a.get(key) != b.get(key):
                diffs.append(f"{what}.{key}: {a.get(key)} != {b.get(key)}")
    return diffs + _training_diff(env_a, env_b)


MAIN_ENVIRONMENT = "main"  # how a run trained in the main environment is named beside one with an `env`


def training_environment(env: Mapping | None) -> str:
    """The name of the environment a run's train worker ran in."""
    return ((env or {}).get("environment") or {}).get("name") or MAIN_ENVIRONMENT


def training_releases(env: Mapping | None) -> dict:
    """Package -> version as the train worker saw them: the main environment's, with those of the run's
    own environment over them (the environment is an overlay on the main one)."""
    env = env or {}
    seen = (env.get("environment") or {}).get("packages") or {}
    return {**(env.get("packages") or {}), **seen}


def _training_diff(env_a: Mapping, env_b: Mapping) -> list[str]:
    diffs = []
    name_a, name_b = training_environment(env_a), training_environment(env_b)
    if name_a != name_b:
        diffs.append(f"trained in: {name_a} != {name_b}")
    lock_a, lock_b = ((e.get("environment") or {}).get("lock_sha256") for e in (env_a, env_b))
    if name_a == name_b and lock_a and lock_b and lock_a != lock_b:  # the same name, redefined
        diffs.append(f"trained in {name_a}, lock: {lock_a[:12]} != {lock_b[:12]}")
    pkgs_a, pkgs_b = env_a.get("packages") or {}, env_b.get("packages") or {}
    train_a, train_b = training_releases(env_a), training_releases(env_b)
    for name in sorted(set(train_a) | set(train_b)):
        # a difference of the main environments is named above already
        if train_a.get(name) != train_b.get(name) and pkgs_a.get(name) == pkgs_b.get(name):
            diffs.append(f"trained with {name}: {train_a.get(name)} != {train_b.get(name)}")
    return diffs


def resolve_sidecar(record: Mapping, name: str | None) -> Path | None:
    """Path of a file or directory named in a record (`per_sample_file`, predictions, the work files),
    relative to the record file's directory; None when the record names none or it is not there."""
    if not name or "_source" not in record:
        return None
    path = Path(record["_source"]).parent / name
    return path if path.exists() else None


def make_bundle(records: Iterable[Mapping], suite: str, created_at: str) -> dict:
    """A bundle of records (the baseline format), step logs stripped to keep it small.

    Kept: everything else of each record (run_id, spec, cell, env, metrics incl. final_loss, train
    timings, eval, memory). Private loader keys are dropped. Records are sorted by run id so a
    re-promotion of the same runs gives the same file.
    """
    stripped = []
    for record in sorted(records, key=lambda r: r["run_id"]):
        record = _public(record)
        if isinstance(record.get("train"), dict):
            record["train"] = {k: v for k, v in record["train"].items() if k != "steps"}
        stripped.append(record)
    return {"schema_version": SCHEMA_VERSION, "suite": suite, "created_at": created_at,
            "records": stripped}
