"""The run record's schema: typed parts with each key explained once, validation and migration.

A record is one JSON object per run (docs/results-schema.md shows a whole one). Its parts are
written by different processes: the train worker writes a `RankResult` per rank (with `StepRecord`s),
the eval worker an `EvalSummary`, and the runner assembles the `RunRecord`. Every producer and the
test fixtures build them through these types, so a key is named in one place.

Readers call `migrate` before `validate_record`: a record of an older schema version is brought up
to date by the functions in MIGRATIONS, so old baselines keep loading after the schema changes.
Version 2 names the run's work files (adapter, framework arguments, reproduction script) relative to
the record's directory, as it names every other file, so a results directory that is moved or shared
still points at its own files; version 1 wrote them as absolute paths.
"""

from __future__ import annotations

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
    packages: dict[str, str | None]  # rank 0: framework releases as this process saw them (harness.run.env.FRAMEWORKS)


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
    heldout_loss: dict  # loss, tokens, n: cross-entropy per answer token (`eval-heldout` only; harness.run.heldout)
    process: dict  # imports_s, load_s (model + adapter + PEFT round trip), process_s (start to this write)


class TrainPart(TypedDict, total=False):
    """The record's `train`: rank 0's steps and where the run's files stay."""

    steps: list[StepRecord]  # stripped in baselines
    warmup_steps_excluded: int  # steps left out of the throughput (compilation, allocator warm-up)
    setup_s: float
    train_s: float
    # the run's work files, relative to the record's directory (schema version 2; absolute in version 1)
    adapter_dir: str  # the saved PEFT-format adapter
    framework_args: str | None  # the framework's resolved arguments as JSON
    command_line: str | None  # a script or command line that reruns the training outside lorabench


class RankMemory(TypedDict, total=False):
    """One training process's memory peaks (MiB) in the record's `memory.per_rank`."""

    rank: int
    peak_anon_mib: float | None  # the tracked figure: anonymous memory, sampled every 10 ms
    peak_anon_above_baseline_mib: float | None
    baseline_anon_mib: float | None
    peak_rss_mib: float
    peak_rss_above_baseline_mib: float
    baseline_rss_mib: float
    ru_maxrss_mib: float
    sampled_peak_rss_mib: float
    meter_overhead_fraction: float
    gpu_max_allocated_mib: float | None  # None on the CPU
    gpu_max_reserved_mib: float | None


class MemoryPart(TypedDict, total=False):
    """The record's `memory`: the distributed set-up and each rank's peaks."""

    world_size: int
    zero_stage: int | None
    offload_optimizer: bool
    offload_params: bool
    baseline_rss_mib: float
    baseline_anon_mib: float | None
    per_rank: list[RankMemory]
    timeline_file: str | None  # `<run_id>.memory_timeline.jsonl`, relative to the record's directory


class TrainingCheck(TypedDict, total=False):
    """The record's `training_check` (harness.run.training_check): did the run train at all?"""

    lora_modules: int
    lora_modules_moved: int  # LoRA modules whose saved weights differ from their initial value
    max_change_norm: float
    min_change_norm: float
    change_norm_per_module: dict[str, float]
    steps_with_grad_norm: int
    live_gradient_fraction: float  # steps whose gradient norm was finite and non-zero


class LoaderKeys(TypedDict, total=False):
    """A loader's `keys` (harness.run.roundtrip.loader_key_check): the saved tensors accounted for by name."""

    saved: int  # tensors in the adapter file
    loaded: int  # adapter tensors of the loaded model, under the names PEFT would save them with
    not_loaded: list[str]  # saved tensors whose value no adapter tensor of the loaded model holds (ignored)
    not_filled: list[str]  # adapter tensors of the loaded model no saved tensor filled (left at their initial value)
    remapped: dict[str, str]  # saved name -> the loaded name that holds its exact value (a loader's key mapping)


class LoaderReleases(TypedDict, total=False):
    """A loader's `releases` (harness.run.roundtrip.releases): which releases saved and which loaded."""

    saved_by_peft: str | None  # `peft_version` of the adapter's adapter_config.json; None when it does not say
    loaded_by: dict[str, str | None]  # peft, transformers, ms-swift, torch -> version in the loader's process


class LoaderCheck(TypedDict, total=False):
    """One loader's reload of the saved adapter (harness.run.roundtrip): `roundtrip.<loader>.json`."""

    max_abs_logit_diff: float  # reloaded logits against the live trained model's (inf: not loaded, other shape)
    tolerance: float  # for the probe's dtype (harness.run.roundtrip.LOGIT_TOLERANCE)
    missing: list[str]  # trained tensors the saved adapter lacks, or holds with another shape
    tensors_checked: int  # trainable tensors in the probe
    ok: bool  # logits within the tolerance, nothing missing, every key accounted for (PEFT: merged answers equal)
    error: str  # when the loader itself failed, or the last line of a loader process that wrote no result
    # the saved keys against the loaded model's; absent when the loader failed or its model is no PeftModel
    keys: LoaderKeys
    releases: LoaderReleases  # absent only when the loader process wrote no result
    adapter_effect: float  # PEFT: how far the adapter moves the logits from the base model's
    merged_greedy_equal: bool  # PEFT: the merged model's greedy answers on the probe rows equal the unmerged one's
    merged_greedy_diff: list[dict[str, str]]  # PEFT, when they differ: {"unmerged", "merged"} per differing answer


class RoundtripPart(TypedDict, total=False):
    """The record's `roundtrip`: the saved adapter reloaded by each framework's loader."""

    loaders: dict[str, LoaderCheck]  # "peft", "swift"
    max_abs_logit_diff: float | None  # the largest over the loaders (inf for one that wrote no result)
    adapter_effect: float | None  # the PEFT loader's
    ok: bool | None  # None: not checked (the adapter wrote no probe)
    cause: str | None  # every loader's failures, "; "-separated
    seconds: float  # the separate loader processes (the PEFT loader's time is in the eval worker's when it ran)
    saved_by_peft: str  # the peft release that saved the adapter (the loaders' `releases`); absent when unknown


class EvalPart(TypedDict, total=False):
    """The record's `eval`."""

    task: str
    split: str
    n: int  # 0 when the suite does not evaluate
    seconds: float
    per_field: dict[str, dict[str, float]]  # field -> n, precision, recall, f1, anls
    per_kind: dict[str, dict[str, float]]  # document kind -> corpus metrics
    system_prompt: str | None
    predictions_file: str | None  # relative to the record's directory


class LoadPart(TypedDict, total=False):
    """The record's `load` (harness.run.machine_load): what else the machine did during the run."""

    cores: int
    cpus: list[int] | None
    wall_s: float
    loadavg_1m_start: float
    loadavg_1m_end: float
    other_cpu_fraction: float | None  # CPU time of other processes, as a fraction of the run's cores
    steal_fraction: float | None
    own_cpu_s: float | None
    loaded: bool  # above a threshold: the run's timings are marked in reports
    thresholds: dict[str, float]


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
    env: dict  # fingerprint: git commit + dirty, packages, CPU/GPU, threads, dataset and model, a spec's `environment`
    effective_settings: dict[str, Any]  # rank 0's read-back settings, flat
    train: TrainPart
    training_check: TrainingCheck
    roundtrip: RoundtripPart
    memory: MemoryPart
    eval: EvalPart
    metrics: dict[str, Any]  # flat name -> number or [lo, hi] (names and directions: harness.results.metric_table)
    per_sample_file: str | None  # sidecar JSONL of per-sample quality counts, relative to the record
    phases: dict[str, float]  # where the wall time went, seconds (harness.run.runner.phase_times); ok runs
    load: LoadPart


SCHEMA_VERSION = 2
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




WORK_FILES = ("adapter_dir", "framework_args", "command_line")  # the record's `train` keys that name work files


def _work_files_relative(record: dict) -> dict:
    """Version 1 -> 2: the work files' absolute paths (`.../<results>/work/<run_id>/...`) relative to
    the record's directory (`<results>/runs`). A path outside a work directory stays as it was."""
    train = record.get("train")
    if not isinstance(train, dict):
        return record
    run_id = record.get("run_id")
    marker = f"/work/{run_id}/"
    moved = {}
    for key in WORK_FILES:
        path = train.get(key)
        if isinstance(path, str) and path.startswith("/") and marker in path:
            moved[key] = f"../work/{run_id}/" + path.rsplit(marker, 1)[1]
    return {**record, "train": {**train, **moved}}


# version v -> a function turning a record of version v into one of version v + 1
MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _work_files_relative}


def migrate(record: Any) -> Any:
    """Bring a record of an older schema version up to SCHEMA_VERSION (unknown versions pass unchanged)."""
    while isinstance(record, dict) and record.get("schema_version") in MIGRATIONS:
        version = record["schema_version"]
        record = {**MIGRATIONS[version](record), "schema_version": version + 1}
    return record
