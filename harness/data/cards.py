"""Dataset cards and their deterministic builds (rendered pages + JSONL), verified by checksum.

A *card* (`datasets/<name>/card.yaml`) is data: generator, seed, render style, document kinds, split
sizes and the sha256 of the expected build. `build_dataset(card)` renders it into a directory:

    <out>/images/<split>/<id>.png
    <out>/<split>.<task>.jsonl        task in TASKS; the pretrain split only gets "transcribe"
    <out>/BUILD.json                  checksum, counts, card hash, library versions

Each row is the common multimodal JSONL format (what ms-swift and most VLM trainers read):
    {"id": "train-000123", "task": "extract", "kind": "invoice",
     "messages": [{"role": "user", "content": "<image>Extract fields as JSON."},
                  {"role": "assistant", "content": "{\"invoice_no\":\"INV-0348268\",...}"}],
     "images": ["images/train/train-000123.png"], "text": "...", "fields": {...}}
Image paths are relative to the JSONL file's directory; harness.data.samples loads them.
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

from harness.data import docgen, pages as render
from harness.errors import UserError
from harness.data.samples import IMAGE_PLACEHOLDER, PROMPTS, SPLITS, split_file_name, tasks_for_split
from harness.paths import DATASETS_DIR

GENERATOR = "synthdocs"
GENERATOR_VERSION = 1  # bump when docgen or the build layout changes what bytes come out
BUILD_FILE = "BUILD.json"

_CARD_KEYS = ("name", "description", "generator", "generator_version", "seed", "style", "kinds",
              "splits", "checksum")
_REQUIRED_CARD_KEYS = ("name", "generator", "generator_version", "seed", "splits")


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
    doc = docgen.generate_document(kind, np.random.default_rng(content_seq))
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
            (root / split_file_name(split, task)).write_text("\n".join(lines) + "\n")
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


def build_dataset(card: Card, out_dir: str | os.PathLike | None = None, force: bool = False) -> BuildInfo:
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
    return build_dataset(load_card(name_or_card_path)).path


def resolve_dataset_dir(name: str) -> Path:
    """A card name or path -> its (verified) build; a directory of JSONL files -> itself."""
    path = Path(name)
    if path.is_dir() and not (path / "card.yaml").exists():
        return path
    return Path(ensure_built(name))
