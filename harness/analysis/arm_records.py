"""Arm records: what one outcome-ablation arm run leaves behind, small enough to commit.

An outcome ablation trains every arm to the budget under every data seed: on a 2-core CPU the MiniCPM-V
pair is 30 fine-tunes of 15-20 minutes each, more than one sitting. A record (the arm's outcome, its spec,
and what it ran on) lets the ablation go on in another clone or on another machine: `--records DIR` keeps
one JSON per arm run, named by its spec's hash, and `--resume` reuses a record when running the arm again
would train the same thing: the same spec, the same model and dataset builds (their checksums) and, in the
main environment, the same framework releases. An arm two pairs share (the baseline) is trained once.

The same document is the `outcome.json` an arm leaves in its work directory (what `--resume` reuses
within one checkout).
"""

from __future__ import annotations

import copy
import functools
import json
import time
from pathlib import Path

from harness.config.spec import spec_hash
from harness.run_spec import Spec


def _read(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


@functools.cache
def _builds(model_name: str, dataset_name: str) -> dict:
    from harness.data.cards import resolve_dataset_dir
    from harness.run.env import dataset_fingerprint, model_fingerprint
    from harness.run.job import resolve_model_dir
    from harness.run.lanes import PREPARE_LOCK

    with PREPARE_LOCK:  # a dataset not built yet is built here, one lane at a time
        model = model_fingerprint(resolve_model_dir(model_name), model_name)
        dataset = dataset_fingerprint(resolve_dataset_dir(dataset_name), dataset_name)
    return {"model": {k: model[k] for k in ("name", "checksum")},
            "dataset": {k: dataset[k] for k in ("name", "checksum")}}


def builds(spec: Spec) -> dict:
    """The model and dataset builds `spec` trains on: name and checksum of each (once per process)."""
    return copy.deepcopy(_builds(spec.model, spec.dataset))


def make_record(spec: Spec, work: Path, label: str, seed: int, outcome: dict, seconds: float | None) -> dict:
    """The record of an arm run that has just trained and been scored in `work`."""
    from harness.run.env import cpu_model, git_state

    commit, dirty = git_state()
    train = _read(work / "train.rank0.json") or {}
    return {"spec_hash": spec_hash(spec), "label": label, "data_seed": seed, "outcome": outcome,
            "seconds": seconds, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "git_commit": commit, "git_dirty": dirty, "packages": train.get("packages"), "cpu": cpu_model(),
            **builds(spec), "spec": spec.to_dict()}


def record_path(records: Path, spec: Spec) -> Path:
    return records / f"{spec_hash(spec)}.json"


def from_work_dir(spec: Spec, work: Path, outcome_file: str) -> dict | None:
    """The record an earlier run of this very arm (same spec hash) left in its work dir, else None.
    A work dir is this checkout's own: nothing else is compared."""
    doc = _read(work / outcome_file)
    if not doc or doc.get("spec_hash") != spec_hash(spec) or not isinstance(doc.get("outcome"), dict):
        return None
    return doc


def from_records(spec: Spec, records: Path) -> tuple[dict | None, str | None]:
    """(the record of this arm in `records`, None) when it may stand for a run here; (None, why not) when a
    record exists but was made on other builds or releases; (None, None) when there is none."""
    from harness.run.env import FRAMEWORKS, package_versions

    doc = _read(record_path(records, spec))
    if not doc or doc.get("spec_hash") != spec_hash(spec) or not isinstance(doc.get("outcome"), dict):
        return None, None
    here = builds(spec)
    for kind in ("model", "dataset"):
        if (doc.get(kind) or {}).get("checksum") != here[kind]["checksum"]:
            return None, f"recorded on another {kind} build ({spec.model if kind == 'model' else spec.dataset})"
    if spec.env is None:  # a named environment's releases are part of the spec (its name)
        recorded = doc.get("packages") or {}
        current = package_versions(FRAMEWORKS)
        changed = sorted(p for p in FRAMEWORKS if p in recorded and recorded[p] != current.get(p))
        if changed:
            return None, "recorded under other releases: " + ", ".join(
                f"{p} {recorded[p]} (here {current.get(p)})" for p in changed)
    return doc, None


def provenance(records: list[dict]) -> dict:
    """What the arms of one ablation ran on, over all their records: commits, releases, machines."""
    from harness.analysis.report.methods import unique

    return {"git_commits": unique(r.get("git_commit") for r in records),
            "dirty_tree": any(r.get("git_dirty") for r in records),
            "packages": unique(r.get("packages") for r in records),
            "cpus": unique(r.get("cpu") for r in records),
            "recorded": [min(t), max(t)] if (t := [r["recorded_at"] for r in records if r.get("recorded_at")])
            else None}
