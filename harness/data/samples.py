"""Samples: the task contract (tasks, prompts, splits) and loading image-text rows from JSONL.

Rows are the common multimodal JSONL format (what ms-swift and most VLM trainers read):
`{"id", "messages": [{"role": "user", "content": "<image>..."}, {"role": "assistant", ...}], "images": [...]}`,
optionally with "task", "text", "fields" and "kind". Image paths are relative to the JSONL file's directory.
A turn's content may also be the Hugging Face / TRL list form
`[{"type": "image"}, {"type": "text", "text": "..."}]`. One user turn (or several, joined) and one
assistant answer per row; no system turn (the system prompt is the run setting train.system_prompt).
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


def _content_text(content, role: str, where: str) -> tuple[str, list[str]]:
    """A turn's content as text, and the image paths given inside it.

    Content is a string, or the Hugging Face / TRL structured form
    `[{"type": "image"}, {"type": "text", "text": "..."}]`: an image item becomes the <image>
    placeholder (its own "image" or "path" value, when given, is its file), text items are joined
    as they come, without separators (as Qwen2-VL's chat template renders them).
    """
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise UserError(f"{where}: a {role} turn's 'content' must be a string or a list of "
                        f"{{type, ...}} items, got {type(content).__name__}")
    parts, paths = [], []
    for item in content:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text" and isinstance(item.get("text"), str):
            parts.append(item["text"])
        elif kind == "image" and role == "user":
            parts.append(IMAGE_PLACEHOLDER)
            inline = item.get("image", item.get("path"))
            if isinstance(inline, str):
                paths.append(inline)
        elif kind == "text":
            raise UserError(f"{where}: a text item of a {role} turn needs a string 'text' (got {item!r:.80})")
        elif kind == "image":
            raise UserError(f"{where}: an image in the {role} turn: only the user turn may hold the image")
        else:
            raise UserError(f"{where}: unsupported content item in a {role} turn: {item!r:.80} "
                            "(supported: {\"type\": \"image\"} and {\"type\": \"text\", \"text\": ...})")
    return "".join(parts), paths


def _turns(messages, where: str) -> tuple[list[str], str, list[str]]:
    """(user turns, the assistant answer, image paths given inside the turns) of a single-turn row.

    A system turn is refused: the system prompt is a run setting (train.system_prompt), which the
    frameworks' training templates and the evaluation apply the same way; a per-row system turn
    would reach ms-swift's template but not the other collators, nor the evaluation.
    """
    user_turns, assistant_turns, inline = [], [], []
    for turn in messages:
        if not isinstance(turn, dict) or "content" not in turn:
            raise UserError(f"{where}: each message needs a 'role' and a 'content' (got {turn!r:.80})")
        role = turn.get("role")
        if role == "system":
            raise UserError(f"{where}: a system turn is not supported: the system prompt is the run "
                            "setting train.system_prompt (default | none), the same for every row and framework")
        if role not in ("user", "assistant"):
            raise UserError(f"{where}: unknown role {role!r} (supported: user, assistant)")
        text, paths = _content_text(turn["content"], role, where)
        (user_turns if role == "user" else assistant_turns).append(text)
        inline += paths
    if not user_turns:
        raise UserError(f"{where}: no user turn")
    if len(assistant_turns) > 1:
        raise UserError(f"{where}: {len(assistant_turns)} assistant turns: only single-turn rows "
                        "(a user turn and one assistant answer) are supported")
    if not assistant_turns or not assistant_turns[-1].strip():
        raise UserError(f"{where}: missing target: no assistant turn or an empty one")
    if messages[-1].get("role") != "assistant":
        raise UserError(f"{where}: the assistant answer must be the last turn")
    return user_turns, assistant_turns[0], inline


def _parse_row(row, where: str, base: Path, task_arg: str | None) -> Sample:
    if not isinstance(row, dict):
        raise UserError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: missing 'messages' (a list of {{role, content}} turns)")
    user_turns, target, inline_images = _turns(messages, where)
    images = row.get("images")
    if images is None and inline_images:
        images = inline_images
    elif inline_images:
        raise UserError(f"{where}: image paths both inside the user turn and in 'images': give them once")
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


def check_samples(jsonl_path: str | os.PathLike, task: str | None = None
                  ) -> tuple[list[Sample], list[str], int]:
    """Read and validate every row of a JSONL file: (samples of `task` if given, problems, rows).

    Each problem is one line, `<file>:<line>: <reason>`; a bad row never stops the check, so all
    of them are found in one pass. A missing or unreadable file is a UserError.
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
    samples, problems, first_line_of, n_rows = [], [], {}, 0
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        n_rows += 1
        where = f"{path}:{lineno}"
        try:
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise UserError(f"{where}: malformed JSON: {exc}") from None
            sample = _parse_row(row, where, base, task)
            if sample.id in first_line_of:
                raise UserError(f"{where}: duplicate id {sample.id!r} (first on line "
                                f"{first_line_of[sample.id]})")
        except UserError as exc:
            problems.append(str(exc))
            continue
        first_line_of[sample.id] = lineno
        if task is None or sample.task == task:
            samples.append(sample)
    return samples, problems, n_rows


def load_samples(jsonl_path: str | os.PathLike, task: str | None = None) -> list[Sample]:
    """Read and validate a JSONL file in the common multimodal format; keep rows of `task` if given.

    A row's task is its "task" key, else `task`, else "extract" when the target is a JSON object and
    "transcribe" otherwise. Every row is validated, including those filtered out. Raises UserError
    naming `<file>:<line>` of the first bad row (malformed JSON, a missing/corrupt image, a missing
    target, a missing <image> placeholder, a placeholder/image count mismatch, more than one image,
    a system turn, more than one assistant turn, or a duplicate id); `lorabench data validate`
    lists them all.
    """
    path = Path(jsonl_path)
    samples, problems, _ = check_samples(path, task)
    if problems:
        more = (f" (and {len(problems) - 1} more bad rows: `lorabench data validate {path}` lists them)"
                if len(problems) > 1 else "")
        raise UserError(problems[0] + more)
    if not samples:
        raise UserError(f"{path}: no samples" + (f" with task {task!r}" if task else ""))
    return samples
