"""Run a suite: one isolated worker per cell, a record per run, whatever happens to the worker.

For each cell: prepare the job (data + model) -> train worker (own process, timeout) -> eval worker
(fresh process, framework-neutral) -> one JSON record, written atomically. A crash, timeout, OOM or
Ctrl-C becomes a record with its status and error tail; the suite goes on (Ctrl-C stops it after
recording the interrupted run). Finished runs (an "ok" record for the same spec hash) are skipped,
so a re-run after `kill -9` redoes only what was unfinished.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path

from harness.results import store as results
from harness.errors import UserError
from harness.results.schema import WORK_FILES, RunRecord
from harness.run import training_check
from harness.run.launch import run_worker as _run_worker
from harness.run.progress import Progress, RunCounter
from harness.config.suite import Cell
from harness.run_spec import Spec


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run_suite(name: str, cells: list[Cell], results_dir: Path, command: str, force: bool = False,
              dry_run: bool = False, lanes: int = 1) -> int:
    """Run every unfinished cell; returns the number of runs that did not end ok.

    `lanes` > 1 runs that many cells at a time, each lane pinned to its own cores with as many threads
    as it has cores (harness.run.lanes), so that every cell is timed on the same share of the machine.
    """
    from harness.run.job import check_model

    for model in sorted({c.spec.model for c in cells}):  # before anything runs, dry or not
        check_model(model)
    finished = set() if force else results.finished_hashes(results_dir)
    todo = [c for c in cells if c.spec_hash not in finished]
    if dry_run:
        for c in cells:
            state = "skip (finished)" if c.spec_hash in finished else "run"
            print(f"{c.run_id}  {state:<16} {json.dumps(c.key)}")
        print(f"{len(todo)} to run, {len(cells) - len(todo)} finished")
        return 0
    if not todo:
        print(f"all {len(cells)} runs of suite {name!r} are finished ({results_dir})")
        return 0
    from harness.run.dir_lock import hold

    with hold(results_dir):  # one run at a time on a directory (it also creates it)
        return _run_todo(name, todo, results_dir, command, lanes)


def _run_todo(name: str, todo: list[Cell], results_dir: Path, command: str, lanes: int) -> int:
    from harness.run.env import fingerprint
    from harness.run.lanes import lane_cpus, run_in_lanes
    from harness.run.meters import matmul_peak_gflops

    cpus = lane_cpus(lanes, todo)
    env = fingerprint(matmul_peak_gflops(threads=len(cpus[0]) if cpus else None))
    env["lanes"] = len(cpus) if cpus else 1
    counter = RunCounter()
    bad = 0

    def one(cell: Cell, lane_cores: list[int] | None) -> dict:
        # it prints a failed run's worker log
        progress = Progress(len(todo), results_dir, counter=counter, lanes=len(cpus) if cpus else 1)
        progress.start(cell, cell.spec.train.steps)
        record = run_cell(name, cell, results_dir, env, command, progress, lane_cores)
        results.write_record(results_dir, record)
        progress.finish(record)
        return record

    if not cpus:
        for cell in todo:
            record = one(cell, None)
            bad += record["status"] != "ok"
            if record["status"] == "cancelled":
                raise KeyboardInterrupt
        return bad
    records = run_in_lanes(todo, cpus, one)
    bad = sum(r["status"] != "ok" for r in records)
    if any(r["status"] == "cancelled" for r in records):
        raise KeyboardInterrupt
    return bad


def run_cell(suite: str, cell: Cell, results_dir: Path, env: dict, command: str, progress: Progress,
             cpus: list[int] | None = None) -> dict:
    """One cell through its workers into a record; `cpus`: the lane's cores (None: the whole machine)."""
    from harness.run.env import dataset_fingerprint, model_fingerprint
    from harness.run.lanes import PREPARE_LOCK, cancelled
    from harness.run.machine_load import LoadWatch
    from harness.run.train_run import evaluate, train

    spec = cell.spec
    work = results_dir / "work" / cell.run_id
    started, t0, load = _now(), time.perf_counter(), LoadWatch(cpus)
    worker_cpu = [0.0]

    def run_worker(*args, **kwargs):  # every worker of the cell: on the lane's cores, its CPU time counted
        res = _run_worker(*args, cpus=cpus, **kwargs)
        worker_cpu[0] += res.cpu_s or 0.0
        return res

    record: RunRecord = {
        "schema_version": results.SCHEMA_VERSION, "run_id": cell.run_id, "suite": suite, "spec_hash": cell.spec_hash,
        "spec": spec.to_dict(), "cell": record_cell(cell),
        "status": "failed", "error": None, "started_at": started, "command": command, "env": dict(env),
        "per_sample_file": None,
    }

    def done(status: str, error: str | None) -> dict:
        record.update(status=status, error=error, finished_at=_now(), wall_s=time.perf_counter() - t0,
                      load=load.stop(worker_cpu[0] if cpus else None))
        return record

    def poll():
        if cancelled():  # Ctrl-C in the main thread: the lanes' workers stop and are recorded as cancelled
            raise KeyboardInterrupt
        progress.poll(work / "progress.jsonl")

    if spec.env is not None:  # named even when the environment cannot be created
        record["env"]["environment"] = {"name": spec.env}
    try:  # the lanes share the dataset build and the canvas cache: one prepares at a time
        run = train(spec, work, poll=poll, run_worker=run_worker, prepare_lock=PREPARE_LOCK)
    except UserError as exc:
        return done("failed", f"lorabench: error: {exc}")
    job, res = run.job, run.result
    if run.environment is not None:
        # the releases the train worker itself saw (None until it ran); the lock's hash says the rest
        seen = run.ranks[0].get("packages") if run.ranks else None
        record["env"]["environment"] = {**run.environment.record(), "packages": seen}
    record["env"]["dataset"] = dataset_fingerprint(job.dataset_dir, spec.dataset)
    record["env"]["model"] = model_fingerprint(job.model_dir, spec.model)
    if res.status != "ok":
        return done(res.status, res.error_tail)
    ranks, rank0 = run.ranks, run.rank0
    record["env"]["torch_threads"] = rank0["torch_threads"]
    record["effective_settings"] = rank0["effective"]
    record["train"] = {"steps": rank0["steps"], "warmup_steps_excluded": rank0["throughput"]["warmup_steps_excluded"],
                       "setup_s": rank0["setup_s"], "train_s": rank0["train_s"],
                       # where the trained adapter and the reproduction files stay (the run's work directory),
                       # relative to the record's directory like every file a record names
                       **{key: _relative_to(results_dir / "runs", rank0.get(key)) for key in WORK_FILES}}
    record["memory"] = memory_section(spec, ranks)
    # rank 0 logs its own micro-batches; ranks read disjoint data, so the run's rate is world x rank 0's
    world_scale = max(1, spec.distributed.world_size)
    rates = {k: v * world_scale if k in ("train_samples_per_s", "train_tokens_per_s") else v
             for k, v in rank0["throughput"].items() if k != "warmup_steps_excluded"}
    metrics = {**rates,
               "final_loss": rank0["steps"][-1]["loss"] if rank0["steps"] else None,
               "peak_rss_mib": max(r["memory"]["peak_rss_mib"] for r in ranks),
               "peak_rss_above_baseline_mib": max(r["memory"]["peak_rss_above_baseline_mib"] for r in ranks),
               "peak_anon_mib": _max_of(ranks, "peak_anon_mib"),
               "peak_anon_above_baseline_mib": _max_of(ranks, "peak_anon_above_baseline_mib"),
               "gpu_max_allocated_mib": _gpu_max(ranks, "max_allocated_mib"),
               "gpu_max_reserved_mib": _gpu_max(ranks, "max_reserved_mib"),
               "meter_overhead_fraction": max(r["memory"]["meter_overhead_fraction"] for r in ranks)}
    metrics["mfu"] = _mfu(metrics["train_tokens_per_s"], rank0, env.get("matmul_peak_gflops"))
    if mismatch := run.world_mismatch():  # each process trained alone: not the run asked for
        record["metrics"] = metrics
        return done("failed", mismatch)
    record["training_check"], not_trained = training_check.check(Path(rank0["initial_adapter"]),
                                                                 Path(rank0["adapter_dir"]), rank0["steps"])
    if not_trained:
        record["metrics"] = metrics
        return done("failed", f"training check: {not_trained}")
    if spec.eval.enabled:
        res, ev = evaluate(spec, work, poll=poll, run_worker=run_worker)
        if ev is None:
            record["metrics"] = metrics
            record["roundtrip"], roundtrip_failure = adapter_roundtrip(work, spec, poll, run_worker)
            if roundtrip_failure:  # an adapter that does not load fails the evaluation too: name the cause
                return done("failed", f"adapter round trip: {roundtrip_failure}")
            return done(res.status, "evaluation: " + (res.error_tail or ""))
        record["eval"] = {k: ev[k] for k in ("task", "split", "n", "seconds", "per_field", "per_kind", "system_prompt")}
        runs_dir = results_dir / "runs"
        runs_dir.mkdir(parents=True, exist_ok=True)
        for src, suffix in (("predictions.jsonl", "predictions.jsonl"), ("per_sample.jsonl", "per_sample.jsonl")):
            shutil.copyfile(work / src, runs_dir / f"{cell.run_id}.{suffix}")
        record["eval"]["predictions_file"] = f"{cell.run_id}.predictions.jsonl"
        record["per_sample_file"] = f"{cell.run_id}.per_sample.jsonl"
        metrics.update({k: v for k, v in ev["metrics"].items() if k != "n"})
        metrics["eval_s"] = ev["seconds"]
    else:
        record["eval"] = {"task": spec.task, "split": spec.eval.split, "n": 0, "seconds": 0.0,
                          "predictions_file": None}
    record["roundtrip"], roundtrip_failure = adapter_roundtrip(work, spec, poll, run_worker)
    from harness.run.memory_timeline import save_timeline

    record["memory"]["timeline_file"] = save_timeline(results_dir / "runs", cell.run_id, ranks,
                                                      work / "eval.memory.json")
    metrics["wall_s"] = time.perf_counter() - t0
    record["phases"] = phase_times(rank0, ev if spec.eval.enabled else None, record["roundtrip"],
                                   metrics["wall_s"])
    record["metrics"] = metrics
    if roundtrip_failure:
        return done("failed", f"adapter round trip: {roundtrip_failure}")
    return done("ok", None)


def adapter_roundtrip(work: Path, spec: Spec, poll, run_worker=_run_worker) -> tuple[dict, str | None]:
    """Reload the saved adapter through each framework's loader (harness.run.roundtrip).

    The PEFT loader ran inside the evaluation worker; ms-swift's runs here in its own process.
    A loader that crashes is a failed check with its error, not a failed suite.
    """
    from harness.run import roundtrip

    if not (work / "probe.pt").is_file():
        return {"ok": None, "cause": "not checked: the adapter wrote no probe of its live model", "loaders": {}}, None
    blocks, t0 = {}, time.perf_counter()
    for loader in ("peft", "swift"):
        result_file = work / f"roundtrip.{loader}.json"
        res = None
        if not result_file.is_file():  # the evaluation worker has done the PEFT half when it ran
            res = run_worker(f"roundtrip-{loader}", work / "job.json", work / "worker.log", spec.timeout_s,
                             device=spec.device, poll=poll)
        if result_file.is_file():
            blocks[loader] = json.loads(result_file.read_text())
        else:
            last = [line for line in ((res and res.error_tail) or "no result written").splitlines() if line.strip()]
            blocks[loader] = {"error": last[-1]}
    summary, failure = roundtrip.summarise(blocks)
    summary["seconds"] = time.perf_counter() - t0  # the separate loader processes (PEFT's is in eval's time)
    return summary, failure


def phase_times(rank0: dict, ev: dict | None, roundtrip: dict, wall_s: float) -> dict:
    """Where the cell's wall time went, in seconds: PHASES in order, from the workers' own clocks.

    The train worker gives its start-up and imports, set-up, the per-step data / forward / backward /
    optimizer times (summed over steps) and its saving; the eval worker its start-up and imports,
    model + adapter loading, generation and scoring; the ms-swift loader's process is the round trip.
    `other_s` is what is left of the wall time: preparing the job, starting and ending processes,
    the step loop's callbacks and logging, writing the record.
    """
    steps = rank0.get("steps") or []
    step_sum = {k: sum(s.get(k) or 0.0 for s in steps) for k in ("data_s", "forward_s", "backward_s", "optimizer_s")}
    proc = rank0.get("process") or {}
    train_imports = proc.get("imports_s") or 0.0
    saving = (proc["process_s"] - train_imports - rank0["setup_s"] - rank0["train_s"]) if proc.get("process_s") else 0.0
    ev_proc = (ev or {}).get("process") or {}
    generate = (ev or {}).get("seconds") or 0.0
    eval_s = (ev_proc["process_s"] - (ev_proc.get("imports_s") or 0.0)) if ev_proc.get("process_s") else generate
    phases = {"start_imports_s": train_imports + (ev_proc.get("imports_s") or 0.0),
              "setup_s": rank0["setup_s"], **step_sum, "save_s": max(0.0, saving),
              "eval_load_s": ev_proc.get("load_s") or 0.0, "eval_generate_s": generate,
              "eval_score_s": max(0.0, eval_s - (ev_proc.get("load_s") or 0.0) - generate),
              "roundtrip_s": roundtrip.get("seconds") or 0.0}
    phases["other_s"] = max(0.0, wall_s - sum(phases.values()))
    return {k: round(v, 3) for k, v in phases.items()}


def record_cell(cell: Cell) -> dict:
    """What names the run in reports: framework, alignment, seed, and the suite's matrix keys.

    A cell named by a `lever` (memory suite) or a `control` keeps just that name: its spec overrides
    (zero stage, batch, a harmful lr, ...) are what it is, and would otherwise split the report's
    groups (and hide a control's reference cell).
    """
    spec = cell.spec
    base = {"framework": spec.framework, "alignment": spec.alignment, "seed": spec.train.seed}
    if "lever" in cell.key:
        return {**base, "lever": cell.key["lever"]}
    if "control" in cell.key:  # likewise: its reference is the same cell without the control's overrides
        return {**base, "control": cell.key["control"]}
    return {**base, **cell.key}


def memory_section(spec: Spec, ranks: list[dict]) -> dict:
    dist = spec.distributed
    return {
        "world_size": dist.world_size, "zero_stage": dist.zero_stage,
        "offload_optimizer": dist.offload_optimizer, "offload_params": dist.offload_params,
        "baseline_rss_mib": ranks[0]["memory"]["baseline_rss_mib"],
        "baseline_anon_mib": ranks[0]["memory"].get("baseline_anon_mib"),
        "per_rank": [{"rank": r["rank"], "peak_anon_mib": r["memory"].get("peak_anon_mib"),
                      "peak_anon_above_baseline_mib": r["memory"].get("peak_anon_above_baseline_mib"),
                      "baseline_anon_mib": r["memory"].get("baseline_anon_mib"),
                      "peak_rss_mib": r["memory"]["peak_rss_mib"],
                      "peak_rss_above_baseline_mib": r["memory"]["peak_rss_above_baseline_mib"],
                      "ru_maxrss_mib": r["memory"]["ru_maxrss_mib"],
                      "sampled_peak_rss_mib": r["memory"]["sampled_peak_rss_mib"],
                      "baseline_rss_mib": r["memory"]["baseline_rss_mib"],
                      "meter_overhead_fraction": r["memory"]["meter_overhead_fraction"],
                      "gpu_max_allocated_mib": max((g["max_allocated_mib"] for g in r["memory"]["gpu"]), default=None),
                      "gpu_max_reserved_mib": max((g["max_reserved_mib"] for g in r["memory"]["gpu"]), default=None)}
                     for r in sorted(ranks, key=lambda r: r["rank"])],
    }


def _relative_to(directory: Path, path: str | None) -> str | None:
    return os.path.relpath(path, directory) if path else None


def _max_of(ranks, key):
    values = [r["memory"][key] for r in ranks if r["memory"].get(key) is not None]
    return max(values) if values else None


def _gpu_max(ranks, key):
    values = [g[key] for r in ranks for g in r["memory"]["gpu"]]
    return max(values) if values else None


def _mfu(tokens_per_s, rank0, peak_gflops):
    from harness.run.meters import mfu

    total = rank0["effective"].get("total_params")
    trainable = rank0["effective"].get("trainable_params")
    if not total or trainable is None:
        return None
    return mfu(tokens_per_s, total, trainable, peak_gflops)
