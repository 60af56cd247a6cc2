"""One run, in its own process: `python -m harness.run.worker train|eval|eval-heldout|... JOB.json`.

Reads top to bottom. `train` imports exactly one framework (ms-swift patches transformers when
imported, so frameworks never share a process), measures the post-import memory baseline, trains
under the meters and writes `train.rank<R>.json`. `eval` runs in a fresh process that never imports
a framework adapter: it loads the base model and the saved adapter itself and generates greedily
on the test split with harness.eval.evaluate, the same code for every framework; `eval-heldout`
also measures the test split's loss on the answers (harness.run.heldout).
`roundtrip-swift` reloads the saved adapter through ms-swift's loader (harness.run.roundtrip); the
PEFT loader's half of that check runs in `eval`, whose merged model it hands to the evaluation.
Progress goes to `progress.jsonl` in the run directory (the runner draws bars from it).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from harness.results.schema import EvalSummary, RankResult
from harness.run.job_file import Job


def _write_json(path: Path, data: dict) -> None:
    from harness.results.store import write_json_atomic

    write_json_atomic(path, data)


class ProgressHooks:
    """Adapter hooks: start the memory meter at train begin, log each step to progress.jsonl."""

    def __init__(self, run_dir: Path, meter, rank: int):
        self.meter = meter
        self.rank = rank
        self.path = run_dir / "progress.jsonl"

    def on_train_begin(self) -> None:
        self.meter.start()

    def on_step(self, record: dict) -> None:
        if self.rank == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps({"event": "step", **record}) + "\n")


def train(job: Job) -> int:
    import torch

    import adapters
    from adapters.base import TrainData
    from harness.run.env import FRAMEWORKS, package_versions
    from harness.run.meters import MemoryMeter, seconds_since_process_start, throughput

    spec, run_dir = job.spec, job.run_dir
    dist = spec.distributed
    if "RANK" not in os.environ and dist.zero_stage is not None:
        # One DeepSpeed process without a launcher: DeepSpeed (and swift through it) would otherwise
        # look for mpi4py to discover its rank and fail without it. Only then: with RANK set,
        # accelerate wraps even one CPU process in DistributedDataParallel, which a user's plain
        # `python train.py` does not do.
        from harness.run.launch import free_port

        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    rank = int(os.environ.get("RANK", "0"))
    if spec.device == "cpu" and dist.world_size > 1:
        from harness.run.distributed import enable_cpu_data_parallel

        enable_cpu_data_parallel()
    torch.manual_seed(spec.train.seed)
    adapter = adapters.get(spec.framework)
    _import_framework(spec.framework)  # so the baseline includes the framework's own imports
    imports_s = seconds_since_process_start()  # interpreter start and imports, before any model work
    meter = MemoryMeter()  # baseline: RSS and anonymous memory after imports
    meter.watch("load")  # model loading and set-up, until the adapter's on_train_begin starts "train"
    hooks = ProgressHooks(run_dir, meter, rank)
    data = TrainData(model_dir=job.model_dir, train_jsonl=job.train_jsonl, n_samples=job.n_train,
                     deepspeed_config=job.deepspeed_config)
    outcome = adapter.train(spec, data, run_dir, hooks)
    memory = meter.stop()
    result: RankResult = {
        "rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", "1")), "memory": memory,
        "torch_threads": torch.get_num_threads(),
        # the process's own clock: start-up and imports, and its whole life up to this write
        "process": {"imports_s": imports_s, "process_s": seconds_since_process_start()},
    }
    if rank == 0:
        result.update(steps=outcome.steps, effective=outcome.effective, setup_s=outcome.setup_s,
                      train_s=outcome.train_s, throughput=throughput(outcome.steps),
                      adapter_dir=str(outcome.adapter_dir), initial_adapter=str(outcome.initial_adapter),
                      framework_args=outcome.framework_args and str(outcome.framework_args),
                      command_line=outcome.command_line and str(outcome.command_line),
                      probe=outcome.probe and str(outcome.probe),
                      # the framework releases this process imported (a cell's `env` overlays the main ones)
                      packages=package_versions(FRAMEWORKS))
    _write_json(run_dir / f"train.rank{rank}.json", result)
    return 0


def _import_framework(name: str) -> None:
    if name == "swift":
        import swift.pipelines  # noqa: F401
    elif name == "llamafactory":
        import llamafactory.train.tuner  # noqa: F401
    else:
        import peft  # noqa: F401
        import transformers  # noqa: F401


def evaluate(job: Job, heldout: bool = False) -> int:
    """Generate on the test split and score; `heldout` (the `eval-heldout` command) also measures the
    split's loss on the answers (harness.run.heldout), which suite cells do not pay for."""
    from harness.data.samples import load_samples
    from harness.eval.evaluate import evaluate as evaluate_samples, system_prompt
    import peft  # noqa: F401  (imported here so the import phase is timed apart from model loading)
    import transformers  # noqa: F401

    from harness.run.meters import MemoryMeter, seconds_since_process_start

    imports_s = seconds_since_process_start()
    meter = MemoryMeter()  # the eval process's own memory: its timeline is the run's "eval" phase
    meter.start("eval")
    spec, run_dir = job.spec, job.run_dir
    ev = spec.eval
    samples = load_samples(job.eval_jsonl, task=spec.task)[: ev.max_samples]
    adapter_dir = run_dir / "adapter"
    # the system prompt and answer prefix the run trained with, as the adapter read them back
    trained = json.loads((run_dir / "train.rank0.json").read_text())["effective"]
    done = [0]

    def progress(n):
        done[0] += n
        with open(run_dir / "progress.jsonl", "a") as f:
            f.write(json.dumps({"event": "eval", "done": done[0], "total": len(samples)}) + "\n")

    model = processor = None
    t_load = time.perf_counter()
    probe = run_dir / "probe.pt"
    if probe.is_file():
        # the PEFT half of the adapter round trip; its merged model is the one evaluated
        from harness.run.roundtrip import peft_roundtrip

        block, model, processor = peft_roundtrip(job.model_dir, adapter_dir, probe, device=spec.device)
        _write_json(run_dir / "roundtrip.peft.json", block)
        if model is None:
            from harness.errors import UserError

            raise UserError(f"the saved adapter does not load: {block['error']}")
    if model is None:
        from harness.eval.generation import load_model

        model, processor = load_model(job.model_dir, adapter_dir, device=spec.device)
    load_s = time.perf_counter() - t_load  # base model + adapter (and the PEFT loader's round-trip check)
    result = evaluate_samples(job.model_dir, samples, adapter_dir=adapter_dir,
                              system=system_prompt(trained.get("system_prompt")), device=spec.device,
                              answer_prefix=trained.get("answer_prefix", "template"),
                              max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, progress=progress,
                              model=model, processor=processor)
    result.write(run_dir)
    loss = _heldout_loss(job, samples, model, processor, trained) if heldout else None
    _write_json(run_dir / "eval.memory.json", meter.stop())
    summary: EvalSummary = {"task": spec.task, "split": ev.split, "n": len(samples), "seconds": result.seconds,
                            "metrics": result.metrics, "per_field": result.per_field, "per_kind": result.per_kind,
                            "system_prompt": trained.get("system_prompt"),
                            "process": {"imports_s": imports_s, "load_s": load_s,
                                        "process_s": seconds_since_process_start()}}
    if loss is not None:
        summary["heldout_loss"] = loss
    _write_json(run_dir / "eval.json", summary)
    return 0


def _heldout_loss(job: Job, samples, model, processor, trained: dict) -> dict:
    """The test split's loss on the answers, with the prompt the run trained with (harness.run.heldout)."""
    from PIL import Image

    from harness.data.pages import fit_canvas, image_canvas
    from harness.eval.evaluate import system_prompt
    from harness.run.heldout import heldout_loss

    canvas = image_canvas(job.model_dir)
    images = [fit_canvas(Image.open(s.image).convert("RGB"), canvas) for s in samples]
    return heldout_loss(model, processor, samples, images, system=system_prompt(trained.get("system_prompt")),
                        answer_prefix=trained.get("answer_prefix", "template"), device=job.spec.device)


def roundtrip_swift(job: Job) -> int:
    """The ms-swift half of the adapter round trip, in a process of its own."""
    from harness.run.roundtrip import swift_roundtrip

    run_dir = job.run_dir
    block = swift_roundtrip(job.model_dir, run_dir / "adapter", run_dir / "probe.pt", device=job.spec.device)
    _write_json(run_dir / "roundtrip.swift.json", block)
    return 0


def roundtrip_peft(job: Job) -> int:
    """The PEFT half of the round trip for a run without evaluation (else `eval` does it)."""
    from harness.run.roundtrip import peft_roundtrip

    run_dir = job.run_dir
    block, _, _ = peft_roundtrip(job.model_dir, run_dir / "adapter", run_dir / "probe.pt", device=job.spec.device)
    _write_json(run_dir / "roundtrip.peft.json", block)
    return 0


COMMANDS = {"train": train, "eval": evaluate, "eval-heldout": lambda job: evaluate(job, heldout=True),
            "roundtrip-peft": roundtrip_peft, "roundtrip-swift": roundtrip_swift}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in COMMANDS:
        print(f"usage: python -m harness.run.worker {'|'.join(COMMANDS)} JOB.json", file=sys.stderr)
        return 2
    job = Job.read(argv[1])
    from harness.errors import UserError

    try:
        return COMMANDS[argv[0]](job)
    except UserError as exc:
        print(f"lorabench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
