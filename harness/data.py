"""Datasets: cards, deterministic builds, checksums, and a JSONL loader that validates users' data.

A *card* (`datasets/<name>/card.yaml`) is data: generator, seed, render style, document kinds, split
sizes and the sha256 of the expected build. `build(card)` renders it into a directory:

    <out>/images/<split>/<id>.png
    <out>/<split>.<task>.jsonl        task in TASKS; the pretrain split only gets "transcribe"
    <out>/BUILD.json                  checksum, counts, card hash, library versions

Each row is the common multimodal JSONL format (what ms-swift and most VLM trainers read):
    {"id": "train-000123", "task": "extract", "kind": "invoice",
     "messages": [{"role": "user", "content": "<image>Extract fields as JSON."},
                  {"role": "assistant", "content": "{\"invoice_no\":\"INV-0348268\",...}"}],
     "images": ["images/train/train-000123.png"], "text": "...", "fields": {...}}
Image paths are relative to the JSONL file's directory.

`load_samples(path)` reads any such file (ours or a user's) into `Sample`s and rejects bad rows with
a `UserError` naming file and line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import yaml

from harness import docgen, render
from harness.errors import UserError

GENERATOR = "synthdocs"
GENERATOR_VERSION = 1  # bump when docgen or the build layout changes what bytes come out
REPO_ROOT = Path(__file__).resolve().parent.parent
DATASETS_DIR = REPO_ROOT / "datasets"
SPLITS = ("pretrain", "train", "validation", "test")
TASKS = ("transcribe", "extract")
SPLIT_TASKS = {"pretrain": ("transcribe",)}  # default: every task
# Short on purpose: the tiny model's tokenizer is character-level, every character is a token.
PROMPTS = {"transcribe": "Read all text.", "extract": "Extract fields as JSON."}
IMAGE_PLACEHOLDER = "<image>"
BUILD_FILE = "BUILD.json"

_CARD_KEYS = ("name", "description", "generator", "generator_version", "seed", "style", "kinds",
              "splits", "checksum")
_REQUIRED_CARD_KEYS = ("name", "generator", "generator_version", "seed", "splits")


def tasks_for_split(split: str) -> tuple[str, ...]:
    """The tasks that get a JSONL file for `split`."""
    return SPLIT_TASKS.get(split, TASKS)


# ---- cards ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Card:
    """A validated dataset card. `style` is a preset name or a dict of overrides on `easy`."""

    name: str
    description: str
    generator: str
    generator_version: int
    seed: int
    style: str | dict
    kinds: tuple[str, ...]
    splits: dict[str, int]  # split -> number of documents, in SPLITS order
    checksum: str | None  # sha256 hex of the build, None until first built
    path: Path  # the card file

    @property
    def render_style(self) -> render.RenderStyle:
        return _resolve_style(self.style, self.path)

    @property
    def content_hash(self) -> str:
        """sha256 of everything that decides the built bytes (not name, description, checksum)."""
        content = {"generator": self.generator, "generator_version": self.generator_version,
                   "seed": self.seed, "style": dataclasses.asdict(self.render_style),
                   "kinds": list(self.kinds), "splits": self.splits}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    @property
    def default_build_dir(self) -> Path:
        return self.path.parent / "build"


def _resolve_style(style, card_path: Path) -> render.RenderStyle:
    if isinstance(style, str):
        if style not in render.PRESETS:
            raise UserError(f"{card_path}: style {style!r} is not a preset; "
                            f"use one of {', '.join(render.PRESETS)} or a mapping of overrides")
        return render.PRESETS[style]
    if not isinstance(style, dict):
        raise UserError(f"{card_path}: style must be a preset name or a mapping, got {style!r}")
    known = {f.name for f in dataclasses.fields(render.RenderStyle)}
    for key in style:
        if key not in known:
            raise UserError(f"{card_path}: unknown style key {key!r}; "
                            f"known: {', '.join(sorted(known))}")
    try:
        return dataclasses.replace(render.PRESETS["easy"], **style)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{card_path}: bad style: {exc}") from None


def _card_path(name_or_path: str | os.PathLike) -> Path:
    text = str(name_or_path)
    path = Path(text)
    looks_like_path = os.sep in text or "/" in text or path.suffix in (".yaml", ".yml")
    if path.is_dir():
        return path / "card.yaml"
    if looks_like_path or path.is_file():
        return path
    candidate = DATASETS_DIR / text / "card.yaml"
    if not candidate.is_file():
        known = sorted(p.parent.name for p in DATASETS_DIR.glob("*/card.yaml"))
        raise UserError(f"no dataset card named {text!r} ({candidate} does not exist); "
                        f"known: {', '.join(known) or 'none'}")
    return candidate


def load_card(name_or_path: str | os.PathLike) -> Card:
    """Read and validate a card: a bare name means `<repo>/datasets/<name>/card.yaml`.

    Raises UserError naming the card file and the offending key for any mistake.
    """
    path = _card_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"dataset card {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a card must be a YAML mapping of {', '.join(_CARD_KEYS)}")
    for key in raw:
        if key not in _CARD_KEYS:
            raise UserError(f"{path}: unknown card key {key!r}; known: {', '.join(_CARD_KEYS)}")
    for key in _REQUIRED_CARD_KEYS:
        if key not in raw:
            raise UserError(f"{path}: missing card key {key!r}")

    def need(key, ok, what):
        if not ok(raw[key]):
            raise UserError(f"{path}: {key} must be {what}, got {raw[key]!r}")

    need("name", lambda v: isinstance(v, str) and v.strip(), "a non-empty string")
    need("generator", lambda v: v == GENERATOR, f"{GENERATOR!r}")
    if raw["generator_version"] != GENERATOR_VERSION:
        raise UserError(f"{path}: generator_version {raw['generator_version']!r} is not the one "
                        f"this lorabench builds ({GENERATOR_VERSION}); update the card or "
                        "lorabench")
    need("seed", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
         "a non-negative integer")
    kinds = raw.get("kinds", list(docgen.KINDS))
    if not isinstance(kinds, list) or not kinds:
        raise UserError(f"{path}: kinds must be a non-empty list, got {kinds!r}")
    for kind in kinds:
        if kind not in docgen.KINDS:
            raise UserError(f"{path}: unknown kind {kind!r}; known: {', '.join(docgen.KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise UserError(f"{path}: kinds lists a kind twice: {kinds!r}")
    splits = raw["splits"]
    if not isinstance(splits, dict) or not splits:
        raise UserError(f"{path}: splits must be a mapping of split -> count, got {splits!r}")
    for split, count in splits.items():
        if split not in SPLITS:
            raise UserError(f"{path}: unknown split {split!r}; known: {', '.join(SPLITS)}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise UserError(f"{path}: splits.{split} must be a positive integer, got {count!r}")
    checksum = raw.get("checksum")
    if checksum is not None and not (isinstance(checksum, str) and len(checksum) == 64
                                     and all(c in "0123456789abcdef" for c in checksum)):
        raise UserError(f"{path}: checksum must be null or 64 lowercase hex digits (sha256), "
                        f"got {checksum!r}")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise UserError(f"{path}: description must be a string")
    style = raw.get("style", "easy")
    _resolve_style(style, path)  # validate now, not in the middle of a build
    return Card(name=raw["name"], description=description.strip(), generator=raw["generator"],
                generator_version=raw["generator_version"], seed=raw["seed"], style=style,
                kinds=tuple(kinds), splits={s: splits[s] for s in SPLITS if s in splits},
                checksum=checksum, path=path)


# ---- build ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BuildInfo:
    """What `build` produced: where, its checksum, documents per split, whether it was reused."""

    path: Path
    checksum: str
    counts: dict[str, int]
    seconds: float
    reused: bool = False


def _split_key(split: str) -> int:
    # A stable integer per split name (crc32 is the same on every platform and Python version).
    return zlib.crc32(split.encode())


def make_document(card: Card, split: str,
                  index: int) -> tuple[docgen.Document, np.random.Generator]:
    """The document at (`split`, `index`) of `card`, and the generator to render it with.

    Its seed derives from (card seed, split, index) only, so it does not depend on split sizes or
    other splits. Kinds rotate through `card.kinds` so every split is balanced.
    """
    seq = np.random.SeedSequence(entropy=card.seed, spawn_key=(_split_key(split), index))
    content_seq, render_seq = seq.spawn(2)  # content and look vary independently
    kind = card.kinds[index % len(card.kinds)]
    doc = docgen.generate(kind, np.random.default_rng(content_seq))
    return doc, np.random.default_rng(render_seq)


def _row(doc_id: str, split: str, task: str, doc: docgen.Document) -> dict:
    target = doc.text if task == "transcribe" else doc.fields_json
    return {"id": doc_id, "task": task, "kind": doc.kind, "text": doc.text, "fields": doc.fields,
            "images": [f"images/{split}/{doc_id}.png"],
            "messages": [{"role": "user", "content": IMAGE_PLACEHOLDER + PROMPTS[task]},
                         {"role": "assistant", "content": target}]}


def dataset_checksum(root: Path) -> str:
    """sha256 over the sorted relative paths and bytes of every image and JSONL file under `root`.

    Each file contributes "<relative posix path>\\0<size>\\0" then its bytes, so renames count.
    BUILD.json and anything else (e.g. a contact sheet) are left out.
    """
    files = sorted([p for p in root.glob("*.jsonl")] + [p for p in root.glob("images/*/*.png")],
                   key=lambda p: p.relative_to(root).as_posix())
    digest = hashlib.sha256()
    for file in files:
        data = file.read_bytes()
        digest.update(f"{file.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _library_versions() -> dict[str, str]:
    import PIL
    from PIL import features

    return {"pillow": PIL.__version__, "freetype": str(features.version("freetype2")),
            "zlib": str(features.version("zlib")), "numpy": np.__version__}


def _write_build(card: Card, root: Path) -> dict[str, int]:
    style = card.render_style
    counts = {}
    for split, count in card.splits.items():
        (root / "images" / split).mkdir(parents=True)
        rows = {task: [] for task in tasks_for_split(split)}
        for index in range(count):
            doc_id = f"{split}-{index:06d}"
            doc, render_rng = make_document(card, split, index)
            image = render.render_page(list(doc.lines), style, render_rng)
            # Fixed options and no metadata chunks: same pixels -> same bytes (for one zlib).
            image.save(root / "images" / split / f"{doc_id}.png", format="PNG", compress_level=6)
            for task in rows:
                rows[task].append(json.dumps(_row(doc_id, split, task, doc), sort_keys=True))
        for task, lines in rows.items():
            (root / f"{split}.{task}.jsonl").write_text("\n".join(lines) + "\n")
        counts[split] = count
    return counts


def _read_build_json(out: Path) -> dict | None:
    try:
        return json.loads((out / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return None


def _mismatch_message(card: Card, got: str, versions: dict) -> str:
    return (f"dataset {card.name!r} built to checksum {got} but {card.path} expects "
            f"{card.checksum}: the rendered images or JSONL differ. Font rasterisation and PNG "
            f"compression depend on library versions (here Pillow {versions['pillow']}, FreeType "
            f"{versions['freetype']}, zlib {versions['zlib']}); if those changed and the new bytes "
            f"are expected, set 'checksum: null' in the card, rebuild, and paste the new checksum")


def build(card: Card, out_dir: str | os.PathLike | None = None, force: bool = False) -> BuildInfo:
    """Render `card` into `out_dir` (default `<card dir>/build`) and verify its checksum.

    Instant when `out_dir` already holds a build of the same card content that matches the card's
    checksum, unless `force`. Writes into a temporary sibling directory and renames it into place,
    so an interrupted build never leaves a half dataset. Raises UserError when the card's checksum
    (if not null) differs from what was built; the existing output is then left untouched.
    """
    out = Path(out_dir) if out_dir is not None else card.default_build_dir
    out = out.resolve()
    start = time.perf_counter()
    previous = _read_build_json(out)
    if (not force and previous and previous.get("card_hash") == card.content_hash
            and previous.get("generator_version") == GENERATOR_VERSION
            and card.checksum in (None, previous.get("checksum"))):
        counts = {s: previous["counts"][s] for s in SPLITS if s in previous["counts"]}
        return BuildInfo(out, previous["checksum"], counts,
                         time.perf_counter() - start, reused=True)
    if out.exists() and (not out.is_dir() or (previous is None and any(out.iterdir()))):
        raise UserError(f"refusing to replace {out}: it is not empty and holds no {BUILD_FILE} "
                        "from an earlier build; choose another --out")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        counts = _write_build(card, tmp)
        checksum = dataset_checksum(tmp)
        versions = _library_versions()
        if card.checksum is not None and checksum != card.checksum:
            raise UserError(_mismatch_message(card, checksum, versions))
        info = {"generator": GENERATOR, "generator_version": GENERATOR_VERSION,
                "card_name": card.name, "card_hash": card.content_hash, "checksum": checksum,
                "counts": counts,
                "files": {f"{s}.{t}.jsonl": n for s, n in counts.items()
                          for t in tasks_for_split(s)},
                "versions": versions}
        (tmp / BUILD_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        current = _read_build_json(out)
        if force or not (current and current.get("card_hash") == info["card_hash"]
                         and current.get("checksum") == checksum):
            _swap_into_place(tmp, out)
        # else another process finished the same bytes first: keep theirs, readers may be in it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return BuildInfo(out, checksum, counts, time.perf_counter() - start)


def _swap_into_place(tmp: Path, out: Path) -> None:
    # Move the old build aside before renaming, because rename cannot replace a non-empty directory.
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if not (out / BUILD_FILE).is_file():  # not another process finishing the same build first
            raise
    shutil.rmtree(old, ignore_errors=True)


def ensure_built(name_or_card_path: str | os.PathLike) -> Path:
    """The build directory of a card (name or path), built and verified if needed."""
    return build(load_card(name_or_card_path)).path


def split_path(dataset_dir: str | os.PathLike, split: str, task: str) -> Path:
    """`<dataset_dir>/<split>.<task>.jsonl`; UserError for an unknown task or pretrain extract."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    if split in SPLIT_TASKS and task not in SPLIT_TASKS[split]:
        raise UserError(f"split {split!r} only has task(s) {', '.join(SPLIT_TASKS[split])}")
    return Path(dataset_dir) / f"{split}.{task}.jsonl"


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
