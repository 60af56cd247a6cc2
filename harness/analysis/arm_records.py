"""Arm records: what one outcome-ablation arm run leaves behind, small enough to commit.

An outcome ablation trains every arm to the budget under every data seed: on a 2-core CPU the MiniCPM-V
pair is 30 fine-tunes of 14-20 minutes each, more than one sitting. A record (the arm's outcome, its spec,
and what it ran on) lets the ablation go on in another clone or on another machine: `--records DIR` keeps
one JSON per arm run, named by its spec's hash, and `--resume` reuses a record only where running the arm
again would train the same thing: the same spec and an `env` that differs in nothing that can change the
numbers (harness.results.store.env_fingerprint_diff: the model and dataset builds' checksums, the releases,
the environment the train worker ran in and its lock, python, the CPU or GPU model). An arm that two pairs
share (the baseline) is trained once.

The same document is the `outcome.json` an arm leaves in its work directory, which `--resume` reuses
within one checkout under the same checks.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from pathlib import Path

from harness.config.spec import spec_hash
from harness.run_spec import Spec

# env keys that do not change what a run computes: the worker's thread count (one per lane, set by the
# lanes, not by the record), the core count and the kernel's version string
NOT_COMPARED = ("torch_threads:", "cores:", "platform:")


def read(path: Path) -> dict | None:
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


def environment(spec: Spec) -> dict:
    """What an arm of `spec` runs on here, in the form of a run record's `env` (no worker thread count):
    the machine and releases, the model and dataset builds, the spec's own environment and its lock."""
    from harness.config.envs import load_env
    from harness.run.env import fingerprint
    from harness.run.environments import find

    env = {**fingerprint(), **copy.deepcopy(_builds(spec.model, spec.dataset))}
    if spec.env is not None:
        created = find(load_env(spec.env))
        env["environment"] = created.record() if created else {"name": spec.env}
    return env


def make_record(spec: Spec, work: Path, label: str, seed: int, outcome: dict, seconds: float | None) -> dict:
    """The record of an arm run that has just trained and been scored in `work`."""
    env = environment(spec)
    train = read(work / "train.rank0.json") or {}
    env["torch_threads"] = train.get("torch_threads")
    if "environment" in env:  # the releases its train worker saw, as a run record keeps them
        env["environment"]["packages"] = train.get("packages")
    return {"spec_hash": spec_hash(spec), "label": label, "data_seed": seed, "outcome": outcome,
            "seconds": seconds, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "env": env, "spec": spec.to_dict()}


def record_path(records: Path, spec: Spec) -> Path:
    return records / f"{spec_hash(spec)}.json"


def why_not_reused(doc: dict | None, spec: Spec) -> str | None:
    """None when `doc` may stand for a run of `spec` here; else why not, in a few words."""
    from harness.results.store import env_fingerprint_diff

    if not doc or not isinstance(doc.get("outcome"), dict):
        return "not an arm record"
    if doc.get("spec_hash") != spec_hash(spec):
        return "recorded for another spec"
    if not isinstance(doc.get("env"), dict):
        return "it does not say what it ran on"
    diffs = [d for d in env_fingerprint_diff(doc["env"], environment(spec)) if not d.startswith(NOT_COMPARED)]
    return ("it ran on something else: " + "; ".join(diffs)) if diffs else None


def from_work_dir(spec: Spec, work: Path, outcome_file: str) -> tuple[dict | None, str | None]:
    """(the record an earlier run of this arm left in its work dir, None), or (None, why it is not
    reused; None when there is none)."""
    doc = read(work / outcome_file)
    if doc is None:
        return None, None
    why = why_not_reused(doc, spec)
    return (None, why) if why else (doc, None)


def from_records(spec: Spec, records: Path) -> tuple[dict | None, str | None]:
    """The same for this arm's record in the directory `records`."""
    path = record_path(records, spec)
    if not path.is_file():
        return None, None
    doc = read(path)
    why = why_not_reused(doc, spec)
    return (None, why) if why else (doc, None)


def provenance(records: list[dict]) -> dict:
    """What the arms of one ablation ran on, over all their records: commits, releases, machines."""
    from harness.analysis.report.methods import unique

    envs = [r.get("env") or {} for r in records]
    return {"git_commits": unique(e.get("git_commit") for e in envs),
            "dirty_tree": any(e.get("git_dirty") for e in envs),
            "packages": unique(e.get("packages") for e in envs),
            "cpus": unique(e.get("cpu") for e in envs),
            "recorded": [min(t), max(t)] if (t := [r["recorded_at"] for r in records if r.get("recorded_at")])
            else None}
