"""What the forge trains on: pages (the documents' and random ones) and the instruction tasks
asked about them. harness.tinymodel.forge explains why each exists; this module only makes them."""

from __future__ import annotations

import dataclasses
import json
import random
import string
from collections import defaultdict

import numpy as np

from harness.data.pages import MAX_LINE_CHARS, PRESETS as RENDER_PRESETS, render_page

RANDOM_CHARS = string.ascii_letters + string.digits + string.punctuation + "     "
TASKS = ("read", "read_json", "read_kv", "fill_json", "ask")
READ_PROMPT = "Read all text."
READ_JSON_PROMPT = "Read all lines as JSON."
READ_KV_PROMPT = "Read all lines as JSON, labels as keys."
MAX_LABEL_CHARS = 14  # "Given names" is the longest printed label of the documents



# ---- the pool of pages ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Page:
    image: object  # PIL image
    lines: tuple[str, ...]
    labelled: tuple[tuple[str, str], ...]  # (label, value) of "Label: value" lines, first of each label


def labelled_pairs(lines) -> tuple[tuple[str, str], ...]:
    """("Born", "12.03.72") for a line "Born: 12.03.72"; the first line of each label only."""
    pairs, seen = [], set()
    for line in lines:
        label, sep, value = line.partition(": ")
        if sep and label.strip() == label and 0 < len(label) <= MAX_LABEL_CHARS and value.strip() \
                and '"' not in label and label not in seen:
            seen.add(label)
            pairs.append((label, value))
    return tuple(pairs)


def labelled_lines(page: "Page") -> dict[str, str]:
    """The page as {printed label: value} for its labelled lines and {"l<i>": line} for the others."""
    pairs, out = dict(page.labelled), {}
    for i, line in enumerate(page.lines):
        label, _, value = line.partition(": ")
        if label in pairs and pairs[label] == value and label not in out:
            out[label] = value
        else:
            out[f"l{i + 1}"] = line
    return out


def _clean(chars) -> str:
    return " ".join("".join(chars).split())  # no leading/trailing/double spaces: invisible


def random_page_lines(rng: np.random.Generator) -> list[str]:
    rows = int(rng.integers(1, 9))
    return [_clean(rng.choice(list(RANDOM_CHARS), size=int(rng.integers(4, MAX_LINE_CHARS + 1)))) or "x"
            for _ in range(rows)]


def random_label(rng: np.random.Generator) -> str:
    words = [string.ascii_lowercase[i] for i in rng.integers(0, 26, size=int(rng.integers(2, 9)))]
    label = "".join(words)
    label = label.capitalize() if rng.random() < 0.6 else (label.upper() if rng.random() < 0.5 else label)
    if rng.random() < 0.2:
        label += " " + "".join(string.ascii_lowercase[i] for i in rng.integers(0, 26, size=int(rng.integers(2, 5))))
    return label[:MAX_LABEL_CHARS]


def label_page_lines(rng: np.random.Generator) -> list[str]:
    """A page of mostly "Label: value" lines with random labels and values (and a few plain lines)."""
    rows = int(rng.integers(2, 9))
    lines, used = [], set()
    for _ in range(rows):
        label = random_label(rng)
        if label in used or rng.random() < 0.2:
            lines.append(_clean(rng.choice(list(RANDOM_CHARS), size=int(rng.integers(4, MAX_LINE_CHARS + 1)))) or "x")
            continue
        used.add(label)
        room = MAX_LINE_CHARS - len(label) - 2
        value = _clean(rng.choice(list(RANDOM_CHARS), size=int(rng.integers(min(3, room), room + 1))))
        lines.append(f"{label}: {value or 'x'}")
    return lines


def build_pool(doc_samples, *, random_pages: int, label_pages: int, seed: int) -> dict[int, list[Page]]:
    """The documents' pages plus `random_pages` of random characters and `label_pages` of random
    "Label: value" lines, at their own size, bucketed by row count: a batch has one row count, so no
    padding of images (except to the model's canvas, when it reads on one: `pretrain` pads each batch)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    buckets: dict[int, list[Page]] = defaultdict(list)

    def add(image, lines):
        buckets[len(lines)].append(Page(image, tuple(lines), labelled_pairs(lines)))

    for s in doc_samples:
        add(Image.open(s.image).convert("RGB"), s.text.split("\n"))
    style = RENDER_PRESETS["easy"]
    for make, count in ((random_page_lines, random_pages), (label_page_lines, label_pages)):
        for _ in range(count):
            lines = make(rng)
            add(render_page(lines, style, rng), lines)
    return dict(buckets)


# ---- tasks: (prompt, answer) for a page ------------------------------------------------------
_RESERVED_KEYS: set[str] | None = None


def reserved_keys() -> set[str]:
    """The `extract` task's field names: pre-training never uses them as keys."""
    global _RESERVED_KEYS
    if _RESERVED_KEYS is None:
        from harness.data import docgen as docgen

        rng = np.random.default_rng(0)
        _RESERVED_KEYS = {k for kind in docgen.KINDS for _ in range(200)
                          for k in docgen.generate_document(kind, rng).fields}
    return _RESERVED_KEYS


def random_key(rnd: random.Random) -> str:
    while True:
        key = "".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(2, 7)))
        if rnd.random() < 0.3:
            key += "_" + "".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(2, 5)))
        if key not in reserved_keys():
            return key


def _targets(page: Page, rnd: random.Random, k: int) -> list[tuple[str, str]]:
    """k (reference, value) pairs: a printed label ("Born") or a line number ("line 2")."""
    refs = [(label, value) for label, value in page.labelled]
    refs += [(f"line {i + 1}", line) for i, line in enumerate(page.lines)]
    labelled = [r for r in refs if not r[0].startswith("line ")]
    chosen = []
    for _ in range(min(k, len(refs))):
        pool = labelled if labelled and rnd.random() < 0.7 else refs
        pick = rnd.choice(pool)
        if pick not in chosen:
            chosen.append(pick)
    return chosen or [rnd.choice(refs)]


def make_task(task: str, page: Page, rnd: random.Random) -> tuple[str, str]:
    if task == "read":
        return READ_PROMPT, "\n".join(page.lines)
    if task == "read_json":
        return READ_JSON_PROMPT, json.dumps({f"l{i + 1}": line for i, line in enumerate(page.lines)},
                                            separators=(",", ":"))
    if task == "read_kv":
        return READ_KV_PROMPT, json.dumps(labelled_lines(page), separators=(",", ":"))
    if task == "fill_json":
        targets = _targets(page, rnd, rnd.randint(1, 4))
        keys = []
        while len(keys) < len(targets):
            key = random_key(rnd)
            if key not in keys:
                keys.append(key)
        schema = json.dumps({k: ref for k, (ref, _) in zip(keys, targets)}, separators=(",", ":"))
        answer = json.dumps({k: value for k, (_, value) in zip(keys, targets)}, separators=(",", ":"))
        return f"Fill JSON {schema}", answer
    if task == "ask":
        ref, value = _targets(page, rnd, 1)[0]
        return (f"What is {ref}?" if ref.startswith("line ") else f'What is "{ref}"?'), value
    raise ValueError(f"unknown forge task {task!r}")


def structured_items(pages: list[Page], seed: int = 0) -> list[tuple[str, str]]:
    """One fixed `fill_json` item per page: the held-out measure of instruction following."""
    rnd = random.Random(seed)
    return [make_task("fill_json", p, rnd) for p in pages]
