"""Samples: the task contract (tasks, prompts, splits) and loading image-text rows from JSONL.

Rows are the common multimodal JSONL format (what ms-swift and most VLM trainers read):
`{"id", "messages": [{"role": "user", "content": "<image>..."}, {"role": "assistant", ...}], "images": [...]}`,
optionally with "task", "text", "fields" and "kind". Image paths are relative to the JSONL file's directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from harness.errors import UserError

SPLITS = ("pretrain", "train", "validation", "test")
TASKS = ("transcribe", "extract")
SPLIT_TASKS = {"pretrain": ("transcribe",)}  # default: every task
# Short on purpose: the tiny model's tokenizer is character-level, every character is a token.
PROMPTS = {"transcribe": "Read all text.", "extract": "Extract fields as JSON."}
IMAGE_PLACEHOLDER = "<image>"


def tasks_for_split(split: str) -> tuple[str, ...]:
    """The tasks that get a JSONL file for `split`."""
    return SPLIT_TASKS.get(split, TASKS)


def split_file(dataset_dir: str | os.PathLike, split: str, task: str) -> Path:
    """The JSONL file of `split` for `task`: `<split>.<task>.jsonl`, else `<split>.jsonl` (a user's
    directory with one file per split). UserError for an unknown task, pretrain extract, or no file."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    if split in SPLIT_TASKS and task not in SPLIT_TASKS[split]:
        raise UserError(f"split {split!r} only has task(s) {', '.join(SPLIT_TASKS[split])}")
    dataset_dir = Path(dataset_dir)
    for candidate in (dataset_dir / split_file_name(split, task), dataset_dir / f"{split}.jsonl"):
        if candidate.is_file():
            return candidate
    raise UserError(f"dataset {dataset_dir} has no {split_file_name(split, task)} (nor {split}.jsonl)")


def split_file_name(split: str, task: str) -> str:
    """How a built dataset names the file of one split and task."""
    return f"{split}.{task}.jsonl"


def resolve_dataset_dir(name: str) -> Path:
    """A card name or path -> its (verified) build; a directory of JSONL files -> itself."""
    path = Path(name)
    if path.is_dir() and not (path / "card.yaml").exists():
        return path
    from harness.data.cards import ensure_built

    return Path(ensure_built(name))


# ---- loading and validating JSONL ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Sample:
    """One image-text example, whatever file it came from."""

    id: str
    task: str  # "transcribe" | "extract"
    image: Path  # absolute
    prompt: str  # the user turn without the <image> placeholder
    target: str  # the assistant turn
    text: str | None  # full transcription when known
    fields: dict | None  # name -> value when known
    kind: str | None  # document kind when known


def _parse_row(row, where: str, base: Path, task_arg: str | None) -> Sample:
    if not isinstance(row, dict):
        raise UserError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: missing 'messages' (a list of {{role, content}} turns)")
    user_turns, assistant_turns = [], []
    for turn in messages:
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise UserError(f"{where}: each message needs a 'role' and a string 'content' "
                            f"(got {turn!r:.80})")
        if turn.get("role") == "user":
            user_turns.append(turn["content"])
        elif turn.get("role") == "assistant":
            assistant_turns.append(turn["content"])
    if not user_turns:
        raise UserError(f"{where}: no user turn")
    if not assistant_turns or not assistant_turns[-1].strip():
        raise UserError(f"{where}: missing target: no assistant turn or an empty one")
    images = row.get("images")
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise UserError(f"{where}: 'images' must be a list of image paths")
    n_placeholders = sum(turn.count(IMAGE_PLACEHOLDER) for turn in user_turns)
    if n_placeholders == 0:
        raise UserError(f"{where}: the user turn has no {IMAGE_PLACEHOLDER} placeholder")
    if n_placeholders != len(images):
        raise UserError(f"{where}: {n_placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but "
                        f"{len(images)} image(s)")
    if len(images) != 1:
        raise UserError(f"{where}: {len(images)} images; only one image per sample is supported")
    image = (base / images[0]).resolve()
    if not image.is_file():
        raise UserError(f"{where}: image {images[0]} not found (looked for {image})")
    try:
        from PIL import Image

        with Image.open(image) as im:
            im.verify()
    except Exception as exc:  # PIL raises many types for a corrupt file
        raise UserError(f"{where}: unreadable image {images[0]}: {exc}") from None

    target = assistant_turns[-1]
    task = row.get("task") or task_arg or _guess_task(target)
    if task not in TASKS:
        raise UserError(f"{where}: unknown task {task!r}; known: {', '.join(TASKS)}")
    fields = row.get("fields")
    if fields is not None and not isinstance(fields, dict):
        raise UserError(f"{where}: 'fields' must be an object of name -> value")
    if fields is None and task == "extract":
        fields = _json_object(target)
    text = row.get("text")
    if text is None and task == "transcribe":
        text = target
    if text is not None and not isinstance(text, str):
        raise UserError(f"{where}: 'text' must be a string")
    doc_id = row.get("id")
    if doc_id is None:
        doc_id = "line-" + where.rsplit(":", 1)[-1]  # unique within the file
    prompt = "\n".join(user_turns).replace(IMAGE_PLACEHOLDER, "").strip()
    return Sample(id=str(doc_id), task=task, image=image, prompt=prompt, target=target,
                  text=text, fields=fields, kind=row.get("kind"))


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _guess_task(target: str) -> str:
    return "extract" if _json_object(target) is not None else "transcribe"


def load_samples(jsonl_path: str | os.PathLike, task: str | None = None) -> list[Sample]:
    """Read and validate a JSONL file in the common multimodal format; keep rows of `task` if given.

    A row's task is its "task" key, else `task`, else "extract" when the target is a JSON object and
    "transcribe" otherwise. Every row is validated, including those filtered out. Raises UserError
    naming `<file>:<line>` for malformed JSON, a missing/corrupt image, a missing target, a missing
    <image> placeholder, a placeholder/image count mismatch, more than one image, or a duplicate id.
    """
    path = Path(jsonl_path)
    if task is not None and task not in TASKS:
        raise UserError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    base = path.resolve().parent
    samples, first_line_of = [], {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{where}: malformed JSON: {exc}") from None
        sample = _parse_row(row, where, base, task)
        if sample.id in first_line_of:
            raise UserError(f"{where}: duplicate id {sample.id!r} (first on line "
                            f"{first_line_of[sample.id]})")
        first_line_of[sample.id] = lineno
        if task is None or sample.task == task:
            samples.append(sample)
    if not samples:
        raise UserError(f"{path}: no samples" + (f" with task {task!r}" if task else ""))
    return samples
