"""One training run in its own worker: the path the suite runner, parity, the ablation and the
accumulation check all take, so they start, time out, collect and check a worker the same way."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path

from harness.run.job import prepare_job
from harness.run.job_file import Job
from harness.run_spec import Spec
from harness.run.environments import Environment
from harness.run.launch import WorkerResult, run_worker as launch_worker


@dataclasses.dataclass
class TrainRun:
    job: Job
    result: WorkerResult
    ranks: list[dict]  # every rank's train.rank<R>.json, rank order; empty unless the worker ended ok
    environment: Environment | None = None  # the spec's `env`, as created; None: the main environment

    @property
    def rank0(self) -> dict:
        return next(r for r in self.ranks if r["rank"] == 0)

    def world_mismatch(self) -> str | None:
        """Why the run is not the one asked for: its processes never joined one process group."""
        asked = self.job.spec.distributed.world_size
        ran_as = self.rank0["effective"].get("world_size")
        if ran_as is None or ran_as == asked:
            return None
        return f"asked for {asked} processes, the framework ran as a world of {ran_as}: its processes trained " \
               "independently"


def train(spec: Spec, work: Path, *, poll=None, run_worker=None, prepare_lock=None) -> TrainRun:
    """Prepare `work` afresh (job.json, data, model) and train `spec` there in a worker process.

    A user's mistake in preparing (missing data, bad model path) raises UserError; whatever happens
    to the worker is in `result.status`. `run_worker` replaces the launcher (the runner passes one that
    pins it to a lane's cores and counts the cell's CPU time); `prepare_lock` serialises preparation
    between lanes.

    A spec with `env` trains with that environment's Python, created first if it is not cached (an
    environment that cannot be created is a UserError with the installer's reason). Only training:
    evaluation and the round trip load the adapter in the main environment, one evaluator for all."""
    shutil.rmtree(work, ignore_errors=True)
    environment = None
    with prepare_lock or contextlib.nullcontext():
        if spec.env is not None:
            from harness.config.envs import load_env
            from harness.run.environments import ensure

            environment = ensure(load_env(spec.env), log=lambda msg: print(f"lorabench: {msg}", flush=True))
        job = prepare_job(spec, work)
    python = {"python": environment.python} if environment else {}
    result = (run_worker or launch_worker)("train", work / "job.json", work / "worker.log", spec.timeout_s,
                                           world_size=spec.distributed.world_size, device=spec.device,
                                           poll=poll, **python)
    ranks = []
    if result.status == "ok":
        ranks = sorted((json.loads(p.read_text()) for p in work.glob("train.rank*.json")), key=lambda r: r["rank"])
    return TrainRun(job, result, ranks, environment)


def evaluate(spec: Spec, work: Path, *, heldout_loss: bool = False, poll=None,
             run_worker=None) -> tuple[WorkerResult, dict | None]:
    """Evaluate the adapter trained in `work` in a fresh eval worker (harness.run.worker `eval`):
    (the worker's result, its eval.json — None unless it ended ok). `heldout_loss`: eval.json also
    holds the test split's loss on the answers (one more forward pass a sample).

    The one path from a trained run to its held-out outcome: the suite runner and the outcome
    ablation both take it, so an arm of an ablation is scored exactly as a cell of a suite."""
    mode = "eval-heldout" if heldout_loss else "eval"
    result = (run_worker or launch_worker)(mode, work / "job.json", work / "worker.log", spec.timeout_s,
                                           device=spec.device, poll=poll)
    summary = json.loads((work / "eval.json").read_text()) if result.status == "ok" else None
    return result, summary
