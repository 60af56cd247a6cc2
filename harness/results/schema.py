"""The run record's schema: typed parts with each key explained once, validation and migration.

A record is one JSON object per run (docs/results-schema.md shows a whole one). Its parts are
written by different processes: the train worker writes a `RankResult` per rank (with `StepRecord`s),
the eval worker an `EvalSummary`, and the runner assembles the `RunRecord`. Every producer and the
test fixtures build them through these types, so a key is named in one place.

Readers call `migrate` before `validate_record`: a record of an older schema version is brought up
to date by the functions in MIGRATIONS (none yet: version 1 is the first), so old baselines keep
loading after the schema changes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, TypedDict, TypeGuard


class StepRecord(TypedDict, total=False):
    """One optimizer step, as an adapter logs it."""

    step: int  # 1-based optimizer step
    loss: float  # the step's training loss (over all its micro-batches)
    lr: float  # learning rate used for this step
    grad_norm: float | None  # gradient norm before clipping; None when the framework did not log it
    tokens: int  # tokens in the step's batches (attention mask), all micro-batches
    samples: int  # samples in the step (micro-batch x accumulation)
    seconds: float  # wall time of the step
    max_seq_len: int  # longest sequence in the step
    image_tokens: int  # image placeholder tokens in the step
    # where `seconds` went (adapters.trainer_steps.STEP_PHASES); absent in records from before they were timed
    data_s: float  # fetching and collating (or template-encoding) the step's micro-batches
    forward_s: float  # forward passes with the loss
    backward_s: float  # backward passes
    optimizer_s: float  # the optimizer step


class RankResult(TypedDict, total=False):
    """`train.rank<R>.json`: what one training process measured (rank 0 also the training itself)."""

    rank: int
    world_size: int
    memory: dict  # harness.run.meters.MemoryMeter.stop(): peaks, baseline, sampler overhead, per-GPU
    torch_threads: int
    steps: list[StepRecord]  # rank 0 only
    effective: dict  # rank 0: settings read back from the live model/optimizer/scheduler/loader
    setup_s: float  # rank 0: start of train() to the first step
    train_s: float  # rank 0: first step to the end of training
    throughput: dict  # rank 0: harness.run.meters.throughput(steps)
    adapter_dir: str  # rank 0: the saved PEFT-format adapter
    initial_adapter: str  # rank 0: safetensors of the LoRA tensors before the first step
    framework_args: str | None  # rank 0: the framework's resolved arguments as JSON
    command_line: str | None  # rank 0: a command line or script that reruns the training outside lorabench
    process: dict  # the process's own clock: imports_s (start-up + imports), process_s (start to this write)


class EvalSummary(TypedDict, total=False):
    """`eval.json` of the eval worker."""

    task: str
    split: str
    n: int  # test samples scored
    seconds: float  # generation time
    metrics: dict  # corpus metrics with `<name>_ci` intervals (harness.eval.metrics.summarize)
    per_field: dict  # field name -> n, precision, recall, f1, anls
    per_kind: dict  # document kind -> corpus metrics
    system_prompt: str | None  # the system prompt setting the run trained with (and was evaluated with)
    process: dict  # imports_s, load_s (model + adapter + PEFT round trip), process_s (start to this write)


class RunRecord(TypedDict, total=False):
    """`results/runs/<run_id>.json`."""

    schema_version: int
    run_id: str  # "<suite>-<first 10 hex of spec_hash>"
    suite: str
    spec_hash: str  # sha256 of the canonical spec JSON (harness.config.spec.spec_hash)
    spec: dict  # the full validated spec
    cell: dict  # what names the run in reports: framework, alignment, seed and the suite's matrix keys
    status: str  # one of STATUSES
    error: str | None  # the error tail when not ok
    started_at: str  # ISO 8601, UTC
    finished_at: str
    wall_s: float
    command: str  # the command line that ran the suite
    env: dict  # environment fingerprint: git commit + dirty, packages, CPU/GPU, threads, dataset and model checksums
    effective_settings: dict  # rank 0's read-back settings
    train: dict  # steps (StepRecord list), warmup_steps_excluded, setup_s, train_s, adapter_dir, framework_args, command_line
    training_check: dict  # harness.run.training_check: how far the adapter moved, live gradient fraction
    roundtrip: dict  # harness.run.roundtrip: the saved adapter reloaded by each loader vs the live model
    memory: dict  # world size, ZeRO settings, baseline and per-rank peaks
    eval: dict  # task, split, n, seconds, per_field, per_kind, system_prompt, predictions_file
    metrics: dict  # flat metric name -> number (names and directions: harness.results.metric_table)
    per_sample_file: str | None  # sidecar JSONL of per-sample quality counts, relative to the record
    phases: dict  # where the wall time went, seconds (harness.run.runner.phase_times); ok runs
    load: dict  # what else the machine did meanwhile (harness.run.machine_load): other_cpu_fraction, loaded


SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "timeout", "oom", "cancelled")

# Top-level keys every record has, whatever its status; an ok record has these too.
REQUIRED_KEYS = ("schema_version", "run_id", "suite", "spec_hash", "spec", "cell", "status",
                 "error", "started_at", "finished_at", "wall_s", "command", "env")
REQUIRED_OK_KEYS = ("train", "eval", "metrics", "memory")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # it names files: no separators, no dotfile



def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_record(d: Any) -> list[str]:
    """Problems with a run record as one-line strings; [] when it follows schema_version 1.

    Checks what the readers rely on: the version, the required keys and their types, the status,
    and, for an ok record, `metrics` (numbers or null; `<metric>_ci` a [lo, hi] pair). Unknown keys
    are allowed (the runner may add detail), step logs may be stripped (baselines).
    """
    if not isinstance(d, dict):
        return [f"a record must be a JSON object, got {type(d).__name__}"]
    problems: list[str] = []
    version = d.get("schema_version")
    if version != SCHEMA_VERSION:
        problems.append(f"schema_version is {version!r}, this lorabench reads {SCHEMA_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if d.get("status") == "ok":
        missing += [k for k in REQUIRED_OK_KEYS if k not in d]
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    run_id = d.get("run_id")
    if "run_id" in d and not (isinstance(run_id, str) and _RUN_ID_RE.match(run_id)):
        problems.append(f"run_id {run_id!r} must be a non-empty name of letters, digits, '.', '_', '-'")
    for key in ("suite", "spec_hash", "started_at", "command"):
        if key in d and not isinstance(d[key], str):
            problems.append(f"{key} must be a string, got {type(d[key]).__name__}")
    for key in ("spec", "cell", "env"):
        if key in d and not isinstance(d[key], dict):
            problems.append(f"{key} must be an object, got {type(d[key]).__name__}")
    if "status" in d and d["status"] not in STATUSES:
        problems.append(f"status {d['status']!r} is not one of {', '.join(STATUSES)}")
    if "error" in d and d["error"] is not None and not isinstance(d["error"], str):
        problems.append("error must be a string or null")
    if "wall_s" in d and d["wall_s"] is not None and not is_number(d["wall_s"]):
        problems.append("wall_s must be a number")
    for key in ("train", "eval", "memory", "parity"):
        if key in d and d[key] is not None and not isinstance(d[key], dict):
            problems.append(f"{key} must be an object")
    train = d.get("train")
    if isinstance(train, dict) and "steps" in train:
        steps = train["steps"]
        if not isinstance(steps, list) or not all(isinstance(s, dict) and "step" in s for s in steps):
            problems.append("train.steps must be a list of objects with a 'step'")
    metrics = d.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict):
            problems.append("metrics must be an object")
        else:
            for name, value in metrics.items():
                if name.endswith("_ci"):
                    ok = (value is None or (isinstance(value, list) and len(value) == 2
                                            and all(is_number(v) for v in value)))
                    if not ok:
                        problems.append(f"metrics.{name} must be [lo, hi] or null")
                elif value is not None and not is_number(value):
                    problems.append(f"metrics.{name} must be a number or null, got {value!r}")
    return problems




# version v -> a function turning a record of version v into one of version v + 1
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}


def migrate(record: Any) -> Any:
    """Bring a record of an older schema version up to SCHEMA_VERSION (unknown versions pass unchanged)."""
    while isinstance(record, dict) and record.get("schema_version") in MIGRATIONS:
        version = record["schema_version"]
        record = {**MIGRATIONS[version](record), "schema_version": version + 1}
    return record
