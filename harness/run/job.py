"""Turn a spec into a job a worker can run: resolved model directory and prepared data files.

The train file is written once per run directory with absolute image paths and only the columns
every framework reads (id, messages, images): swift, PEFT and the reference read the very same rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.data.pages import image_canvas
from harness.data.cards import resolve_dataset_dir
from harness.run.distributed import deepspeed_config_file
from harness.data.samples import PROMPTS, load_samples, split_file
from harness.errors import UserError
from harness.results.store import write_text_atomic
from harness.run.job_file import Job
from harness.run_spec import Spec


def check_model(name: str) -> None:
    """A spec's `model` names an embedded model or a checkpoint directory (a UserError naming both kinds
    otherwise); nothing is built or loaded."""
    from harness.tinymodel.build import EMBEDDED_MODELS

    if name not in EMBEDDED_MODELS and not (Path(name) / "config.json").is_file():
        raise UserError(f"model {name!r}: not an embedded model ({', '.join(EMBEDDED_MODELS)}) and not a "
                        "checkpoint directory with a config.json")


def resolve_model_dir(name: str) -> Path:
    from harness.tinymodel.build import EMBEDDED_MODELS, BuildPlan, tiny_checkpoint

    check_model(name)
    if name in EMBEDDED_MODELS:
        return tiny_checkpoint(BuildPlan(family=EMBEDDED_MODELS[name]))
    return Path(name)


def canvas_copy(image_path: Path, canvas: tuple[int, int]) -> Path:
    """The image padded to a model's canvas, written once under .cache/canvas (keyed by the source's
    path, size and mtime), so every framework reads the very same file."""
    import hashlib

    from PIL import Image

    from harness.data.pages import fit_canvas
    from harness.paths import CACHE_DIR

    stat = image_path.stat()
    key = hashlib.sha256(f"{image_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    dest = CACHE_DIR / "canvas" / f"{canvas[0]}x{canvas[1]}" / f"{key}.png"
    if not dest.is_file():
        try:
            padded = fit_canvas(Image.open(image_path).convert("RGB"), canvas)
        except ValueError as exc:
            raise UserError(f"{image_path}: {exc}") from None
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(f".{os.getpid()}.tmp.png")
        padded.save(tmp)
        tmp.replace(dest)
    return dest


def write_train_file(source: Path, dest: Path, task: str, max_samples: int | None,
                     canvas: tuple[int, int] | None = None) -> int:
    """Validate the split with the shared loader, then write rows with absolute image paths (of the
    images padded to the model's canvas, for a model that reads on one)."""

    samples = load_samples(source, task=task)
    if max_samples:
        samples = samples[:max_samples]
    if not samples:
        raise UserError(f"{source}: no {task} samples to train on")
    rows = []
    for s in samples:
        prompt = s.prompt or PROMPTS.get(task, "")
        # No system message: the system prompt is the run setting train.system_prompt, which each
        # framework applies itself (rows with a system turn are refused by the loader).
        rows.append(json.dumps({"id": s.id, "messages": [
            {"role": "user", "content": "<image>" + prompt},
            {"role": "assistant", "content": s.target}],
            "images": [str((canvas_copy(Path(s.image), canvas) if canvas else Path(s.image)).resolve())]}) + "\n")
    write_text_atomic(dest, "".join(rows))
    return len(samples)


def prepare_job(spec: Spec, run_dir: Path) -> Job:
    """The run's data and model resolved into `run_dir`, and its job.json written there."""
    run_dir.mkdir(parents=True, exist_ok=True)
    dataset_dir = resolve_dataset_dir(spec.dataset)
    model_dir = resolve_model_dir(spec.model)
    train_jsonl = run_dir / "train.jsonl"
    n_train = write_train_file(split_file(dataset_dir, "train", spec.task), train_jsonl, spec.task,
                               spec.train.max_train_samples, image_canvas(model_dir))
    # one DeepSpeed config for every framework, written here so that adapters only pass its path on
    config = deepspeed_config_file(spec, run_dir, model_dir)
    job = Job(spec=spec, run_dir=run_dir.resolve(), model_dir=Path(model_dir).resolve(),
              dataset_dir=dataset_dir.resolve(), train_jsonl=train_jsonl.resolve(), n_train=n_train,
              eval_jsonl=split_file(dataset_dir, spec.eval.split, spec.task).resolve(),
              deepspeed_config=Path(config) if config else None)
    job.write()
    return job
