"""`parity --ablate --profiles A,B --outcome`: why two recipes END differently, ranked by effect on the result.

Every arm — profile A on its framework (the baseline), A with one factor at a time set to B's value,
the whole of B — is trained for the spec's full budget under each data seed (train.data_seed), then
evaluated on the held-out split by the same eval worker as a suite's cells (harness.run.train_run
`evaluate`): held-out loss, field F1, ANLS and CER. harness.analysis.attribution turns those numbers
into effects against the baseline, a noise floor from the spread between seeds, and the interaction.

It is the outcome counterpart of the step-loss ablation (harness.analysis.parity `ablate_profiles`),
which ranks the per-step loss gap over a few steps: the right tool to find an alignment bug, the wrong
one to say what matters for the fine-tuned model.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.analysis import arm_records
from harness.analysis.attribution import OUTCOME_METRICS, attribute, outcome_of
from harness.analysis.parity import profile_arms, profile_label, run_one
from harness.config.spec import make_spec
from harness.errors import UserError
from harness.run_spec import Spec

RunArm = Callable[..., dict]  # (spec, work dir, cpus=None) -> outcome metrics; UserError when it cannot run
OUTCOME_FILE = "outcome.json"  # in an arm's work dir: its record (harness.analysis.arm_records), what --resume reuses


def train_and_evaluate(spec: Spec, work: Path, cpus: list[int] | None = None) -> dict:
    """Train `spec` in `work`, evaluate the adapter on the held-out split: its outcome metrics.
    `cpus`: the lane's cores both workers are pinned to (None: the whole machine)."""
    from harness.run.lanes import PREPARE_LOCK
    from harness.run.launch import run_worker as launch_worker
    from harness.run.train_run import evaluate

    def run_worker(*args, **kwargs):
        return launch_worker(*args, cpus=cpus, **kwargs)

    run_one(spec, work, run_worker=run_worker, prepare_lock=PREPARE_LOCK)
    result, summary = evaluate(spec, work, heldout_loss=True, run_worker=run_worker)
    if summary is None:
        last = (result.error_tail or "").strip().splitlines()[-1:]
        raise UserError(f"evaluation {result.status}: {last} (log: {work / 'worker.log'})")
    return outcome_of(summary)


@dataclasses.dataclass
class ArmRun:
    """One arm under one data seed: what a lane trains and scores."""
    label: str
    seed: int
    spec: Spec
    work: Path


def samples_per_step(spec: Spec) -> int:
    return spec.train.batch_size * spec.train.grad_accum * spec.distributed.world_size


def arm_spec(spec: Spec, seed: int, samples: int | None) -> Spec:
    """The arm's spec under one data seed, evaluated (an outcome needs the evaluation, whatever the spec
    says); with `samples`, trained for as many steps as its global batch needs to see that many samples."""
    train: dict = {"data_seed": seed}
    if samples is not None:
        train["steps"] = max(1, math.ceil(samples / samples_per_step(spec)))
    return make_spec(spec, {"train": train, "eval": {"enabled": True}})


BUDGETS = ("samples", "steps")


def ablate_outcome(base: Spec, first: str, second: str, seeds: Sequence[int], out_dir: Path,
                   progress=print, run_arm: RunArm | None = None, budget: str = "samples",
                   lanes: int | str = 1, resume: bool = False, records: Path | None = None) -> dict:
    """Train and evaluate every arm under every data seed; effects, noise floor and interaction.

    `budget`: "samples" (every arm sees as many training samples as the baseline does in the spec's
    steps, as a user who trains each recipe on the same data does: a recipe with half the global batch
    takes twice the steps, so "batch x accumulation" measures the batch, not the amount of data);
    "steps" (every arm runs the spec's steps, whatever its global batch).

    `lanes`: arm runs at a time, each pinned to its own cores (harness.run.lanes; "auto": one per core
    when every arm is a one-process CPU run). `records`: a directory where every finished arm run also
    leaves its record (harness.analysis.arm_records), named by its spec's hash, to be committed or copied.
    `resume`: an arm run whose record, in its work dir (an earlier, interrupted ablation) or in `records`,
    passes arm_records.why_not_reused (same spec, builds, releases, machine kind) is not trained again.

    The baseline must run under every seed (no baseline, no effect: a UserError). Any other arm that
    cannot run — its framework cannot take the setting, or a seed failed — becomes a row with its reason.
    `run_arm` is the one thing that trains and scores (replaced in tests)."""
    from harness.results.store import write_json_atomic
    from harness.run.lanes import lane_cpus, run_in_lanes

    if len(set(seeds)) < 2:
        raise UserError("the outcome ablation needs at least two data seeds (e.g. --seeds 0,1): "
                        "their spread is the noise floor")
    if budget not in BUDGETS:
        raise UserError(f"unknown budget {budget!r} (valid: {', '.join(BUDGETS)})")
    seeds = list(dict.fromkeys(seeds))
    run_arm = run_arm or train_and_evaluate
    home, spec_a, factor_arms, wholes = profile_arms(base, first, second)
    first, second = profile_label(first), profile_label(second)
    samples = spec_a.train.steps * samples_per_step(spec_a) if budget == "samples" else None
    plan = [{"factor": first, "values": None, "spec": spec_a}, *factor_arms, *wholes]
    errors: dict[str, str] = {a["factor"]: a["error"] for a in plan if "error" in a}
    runs = [ArmRun(a["factor"], seed, arm_spec(a["spec"], seed, samples),
                   out_dir / a["factor"].replace(" ", "_") / f"data_seed{seed}")
            for a in plan if "spec" in a for seed in seeds]
    arm_steps = {r.label: r.spec.train.steps for r in runs}
    timings: dict[str, float] = dict.fromkeys(arm_steps, 0.0)
    outcomes: dict[str, dict[int, dict]] = {label: {} for label in arm_steps}
    failed: dict[tuple[str, int], str] = {}
    counter = iter(range(1, len(runs) + 1))
    made: dict[tuple[str, int], dict] = {}  # every finished arm run's record, for the provenance
    reused: list[str] = []
    tally = threading.Lock()  # two lanes may finish seeds of one arm at once

    def earlier(run: ArmRun) -> tuple[dict | None, str]:
        """The record of an earlier run of this arm that may stand for it, and where it comes from."""
        sources = [("its work dir", lambda: arm_records.from_work_dir(run.spec, run.work, OUTCOME_FILE))]
        if records is not None:
            sources.append((str(records), lambda: arm_records.from_records(run.spec, records)))
        for where, look in sources:
            doc, why_not = look()
            if doc:
                return doc, f"recorded in {where} at commit {str(doc['env'].get('git_commit'))[:10]}"
            if why_not:
                progress(f"  {run.label}, data seed {run.seed}: the record in {where} is not reused, {why_not}")
        return None, ""

    def one(run: ArmRun, cpus: list[int] | None) -> dict:
        doc, source = earlier(run) if resume else (None, "")
        progress(f"outcome ablation [{next(counter)}/{len(runs)}] {run.label}, data seed {run.seed}: "
                 f"{run.spec.framework}, {run.spec.train.steps} steps of {samples_per_step(run.spec)} "
                 + (f"(reused: {source})" if doc else "..."))
        t0 = time.perf_counter()
        if doc is None:
            try:
                outcome = run_arm(run.spec, run.work, cpus=cpus)
            except UserError as exc:
                failed[run.label, run.seed] = str(exc)
                return {"status": "failed"}
            doc = arm_records.make_record(run.spec, run.work, run.label, run.seed, outcome,
                                          time.perf_counter() - t0)
            write_json_atomic(run.work / OUTCOME_FILE, doc)
        # `doc` passed its checks (or was just made): the record in `records` is written unless it holds `doc`
        if records is not None and arm_records.read(arm_records.record_path(records, run.spec)) != doc:
            write_json_atomic(arm_records.record_path(records, run.spec), doc)
        with tally:
            if source:
                reused.append(f"{run.label}, data seed {run.seed}")
            timings[run.label] += doc.get("seconds") or 0.0
            outcomes[run.label][run.seed] = doc["outcome"]
            made[run.label, run.seed] = doc
        return {"status": "ok"}

    cpus = lane_cpus(lanes, runs)
    baseline = [r for r in runs if r.label == first]
    for batch in (baseline, [r for r in runs if r.label != first]):  # no baseline, nothing else worth running
        if cpus:
            run_in_lanes(batch, cpus, one)
        else:
            for run in batch:
                one(run, None)
        for seed in seeds:
            if (first, seed) in failed:
                raise UserError(f"the baseline {first} did not run under data seed {seed}: {failed[first, seed]}")
    for (label, seed), why in failed.items():
        errors.setdefault(label, f"data seed {seed}: {why}")
    arms = {label: dict(sorted(out.items())) for label, out in outcomes.items() if label not in errors}
    factor_labels = [a["factor"] for a in factor_arms]
    # the same-framework whole recipe first: the factors were switched on the baseline's framework
    whole_labels = sorted((w["factor"] for w in wholes), key=lambda w: not w.endswith(f" on {home}"))
    metrics = [m for m in OUTCOME_METRICS if any(o.get(m) is not None for o in arms[first].values())]
    doc = attribute(arms, first, factor_labels, whole_labels, metrics=metrics,
                    rank_metric=metrics[0] if metrics else "heldout_loss")
    if doc["interaction"] is not None and not doc["interaction"]["whole"].endswith(f" on {home}"):
        doc["interaction"]["note"] = (f"{second} could not run on {home}: its whole-recipe effect includes the "
                                      "framework's share, which no single factor carries")
    values = {a["factor"]: a["values"] for a in factor_arms}
    for row in doc["effects"]:
        row["values"] = values.get(row["factor"])
    doc["effects"] += [{"factor": label, "values": values.get(label), "error": errors[label]}
                       for label in factor_labels if label in errors]
    doc["totals"] += [{"factor": label, "error": errors[label]} for label in whole_labels if label in errors]
    return {"mode": "outcome", "first": first, "second": second, "framework": home, "steps": spec_a.train.steps,
            "seeds": seeds, "budget": {"kind": budget, "samples": samples, "arm_steps": arm_steps},
            "measures": f"held-out outcome after the budget; effect = mean over data seeds of (arm − {first}) "
                        "under the same seed",
            **doc, "outcomes": {label: {str(s): o for s, o in out.items()} for label, out in arms.items()},
            "arm_seconds": timings, "lanes": len(cpus) if cpus else 1, "reused": reused,
            "records": str(records) if records is not None else None,
            "provenance": arm_records.provenance([made[k] for k in sorted(made)])}
