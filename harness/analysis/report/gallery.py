"""Sample gallery: a few test images with the reference and every cell's prediction, differences marked.

The samples are the same for every cell and chosen without looking at any prediction: the test ids
that every cell predicted, ordered by a hash of the id, first `GALLERY_SIZE`. Each cell shows its
first ok seed (seed 0 when it ran). The predictions sidecar rows carry the reference text and the
absolute path of the image; records written before that give no gallery.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.analysis.cell_names import group_label
from harness.analysis.report.significance import read_jsonl
from harness.results.store import resolve_sidecar

GALLERY_SIZE = 4


@dataclasses.dataclass
class Prediction:
    cell: str  # cell title
    seed: object
    text: str
    diff: list[tuple[str, str]]  # ("equal" | "delete" | "insert", text), reference -> prediction


@dataclasses.dataclass
class Sample:
    id: str
    reference: str
    image: Path | None  # None when the image file is not on this machine
    kind: str | None
    predictions: list[Prediction]
    figure_name: str | None = None  # file name under figures/ once copied


@dataclasses.dataclass
class Gallery:
    samples: list[Sample]
    cells_without_predictions: list[str]


def char_diff(reference: str, prediction: str) -> list[tuple[str, str]]:
    """Character edits turning `reference` into `prediction`, as runs of equal / deleted / inserted text."""
    ops: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(None, reference, prediction, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("equal", "delete", "replace") and i2 > i1:
            ops.append(("equal" if tag == "equal" else "delete", reference[i1:i2]))
        if tag in ("insert", "replace") and j2 > j1:
            ops.append(("insert", prediction[j1:j2]))
    return ops


def _first_seed_predictions(group: Sequence[Mapping]) -> tuple[Mapping, dict[str, dict]] | None:
    """(record, {id: predictions row}) of the lowest ok seed whose predictions carry references."""
    def seed_order(record: Mapping) -> tuple:
        seed = record.get("cell", {}).get("seed")
        return (0, seed, "") if isinstance(seed, int) else (1, 0, str(seed))

    ok = sorted((r for r in group if r.get("status") == "ok"), key=seed_order)
    for record in ok:
        path = resolve_sidecar(record, (record.get("eval") or {}).get("predictions_file"))
        if path is None:
            continue
        try:
            rows = {str(row["id"]): row for row in read_jsonl(path)
                    if isinstance(row, dict) and isinstance(row.get("reference"), str)}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if rows:
            return record, rows
    return None


def _kinds(record: Mapping) -> dict[str, str]:
    path = resolve_sidecar(record, record.get("per_sample_file"))
    try:
        return {str(r["id"]): str(r["kind"]) for r in read_jsonl(path) if r.get("kind") is not None} \
            if path else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _hash_order(sample_id: str) -> str:
    return hashlib.sha256(sample_id.encode("utf-8")).hexdigest()


def build_gallery(groups: dict[tuple, list[dict]], keys: Sequence[str], shown: Sequence[str],
                  size: int = GALLERY_SIZE) -> Gallery | None:
    chosen: dict[tuple, tuple[Mapping, dict[str, dict]]] = {}
    missing = []
    for key, group in groups.items():
        found = _first_seed_predictions(group)
        if found:
            chosen[key] = found
        elif any(r.get("status") == "ok" for r in group):
            missing.append(group_label(key, keys, group))
    if not chosen:
        return None
    common = set.intersection(*(set(rows) for _, rows in chosen.values()))
    ids = sorted(common, key=_hash_order)[:size]
    first_record = next(iter(chosen.values()))[0]
    kinds = _kinds(first_record)
    samples = []
    for sample_id in ids:
        rows = [rows[sample_id] for _, rows in chosen.values()]
        reference = rows[0]["reference"]
        images = [Path(r["image"]) for r in rows if isinstance(r.get("image"), str)]
        image = next((p for p in images if p.is_file()), None)
        predictions = [Prediction(group_label(key, keys, groups[key]), record.get("cell", {}).get("seed"),
                                  str(rows[sample_id].get("prediction", "")),
                                  char_diff(reference, str(rows[sample_id].get("prediction", ""))))
                       for key, (record, rows) in chosen.items()]
        samples.append(Sample(sample_id, reference, image, kinds.get(sample_id), predictions))
    return Gallery(samples, missing)


def safe_name(sample_id: str) -> str:
    """A file name for a sample id: letters, digits, '.', '_', '-' only."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", sample_id).strip(".") or "sample"


def copy_images(gallery: Gallery | None, figures_dir: Path) -> None:
    """Copy each sample's image to figures/sample-<id><suffix> (the Markdown links to it there)."""
    if gallery is None:
        return
    for sample in gallery.samples:
        if sample.image is None:
            continue
        name = f"sample-{safe_name(sample.id)}{sample.image.suffix.lower()}"
        figures_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample.image, figures_dir / name)
        sample.figure_name = name
