"""Inputs of `lorabench score`: reference and prediction rows, checked, from lorabench's own files,
ms-swift's `swift infer` output, or any JSONL through named keys. A bad row is a UserError naming
FILE:LINE; the scoring rules themselves live in harness.eval.metrics."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.errors import UserError


def loads_object(text: str) -> dict | None:
    """The JSON object `text` holds, or None (not JSON, or JSON but not an object)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None



@dataclasses.dataclass(frozen=True)
class InputKeys:
    """Where an input row keeps its id, reference text and prediction.

    The defaults are lorabench's own format, read strictly. Any other keys (ms-swift's `swift infer`
    output, an lm-eval samples file) are read leniently: a key may be a dotted path into nested
    objects, a one-element list stands for its element (lm-eval's `filtered_resps: ["..."]`), a
    number id is its text, and a reference that is a whole JSON object also gives the reference
    fields (as the data loader does for extraction targets). `id=None`: the rows have no id and are
    matched by order, row n with row n; each gets the id `row-<n>`.
    """

    id: str | None = "id"
    text: str = "text"
    prediction: str = "prediction"

    @property
    def lenient(self) -> bool:
        return self != InputKeys()


LORABENCH_KEYS = InputKeys()
# `swift infer --result_path`: one row per test sample with its `response` and the dataset's answer
# as `labels`, in dataset order; no id.
SWIFT_INFER_KEYS = InputKeys(id=None, text="labels", prediction="response")
_MISSING = object()


def _lookup(record: dict, key: str) -> Any:
    """record[key], else the dotted path `a.b` into nested objects; _MISSING when absent."""
    if key in record:
        return record[key]
    node: Any = record
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _string(record: dict, key: str, what: str, where: str, lenient: bool, is_id: bool = False) -> str:
    value = _lookup(record, key)
    if value is _MISSING:
        raise UserError(f"{where}: {what} is missing {key!r}")
    if lenient:
        while isinstance(value, list) and len(value) == 1:
            value = value[0]
        if is_id and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
    if not isinstance(value, str):
        raise UserError(f"{where}: {what} {key!r} must be a string, got {type(value).__name__}")
    return value


def _check_ref(record: Any, where: str, keys: InputKeys = LORABENCH_KEYS, row_id: str | None = None) -> dict:
    """A reference row checked and, for other formats, brought to {"id", "text", "fields"?}."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: a reference must be a JSON object, got {type(record).__name__}")
    rid = row_id if keys.id is None else _string(record, keys.id, "reference", where, keys.lenient, True)
    text = _string(record, keys.text, "reference", where, keys.lenient)
    if not text.strip():
        raise UserError(f"{where}: reference {rid!r} has an empty text "
                        "(CER/WER are undefined for an empty reference)")
    if "fields" in record and not isinstance(record["fields"], dict):
        raise UserError(f"{where}: reference 'fields' must be a JSON object, "
                        f"got {type(record['fields']).__name__}")
    if not keys.lenient:
        return record
    fields = record.get("fields")
    if fields is None:
        fields = loads_object(text.strip())
    return {"id": rid, "text": text, **({"fields": fields} if fields is not None else {})}


def _check_pred(record: Any, where: str, keys: InputKeys = LORABENCH_KEYS, row_id: str | None = None) -> dict:
    """A prediction row checked and brought to {"id", "prediction"}."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: a prediction must be a JSON object, got {type(record).__name__}")
    pid = row_id if keys.id is None else _string(record, keys.id, "prediction", where, keys.lenient, True)
    text = _string(record, keys.prediction, "prediction", where, keys.lenient)
    return {"id": pid, "prediction": text}


def _read_jsonl(path: str | Path) -> Iterable[tuple[str, Any]]:
    """Yield ("FILE:LINE", parsed value) for each non-blank line; blank lines are skipped."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, json.loads(line)
        except ValueError as exc:
            raise UserError(f"{where}: not valid JSON ({exc})") from None


def first_row(path: str | Path) -> dict:
    """The first row of a JSONL file (to tell its format); {} when it has none or it is no object."""
    for _, record in _read_jsonl(path):
        return record if isinstance(record, dict) else {}
    return {}


def _row_id(index: int) -> str:
    return f"row-{index + 1}"


def check_refs(records: Iterable[tuple[str, Any]], keys: InputKeys = LORABENCH_KEYS) -> list[dict]:
    refs: list[dict] = []
    seen: dict[str, str] = {}
    for i, (where, record) in enumerate(records):
        ref = _check_ref(record, where, keys, _row_id(i))
        rid = ref["id"]
        if rid in seen:
            raise UserError(f"{where}: duplicate reference id {rid!r} (first at {seen[rid]})")
        seen[rid] = where
        refs.append(ref)
    return refs


def _check_preds(records: Iterable[tuple[str, Any]], ref_ids: set[str] | None,
                 keys: InputKeys = LORABENCH_KEYS) -> dict[str, str]:
    preds: dict[str, str] = {}
    seen: dict[str, str] = {}
    for i, (where, record) in enumerate(records):
        pred = _check_pred(record, where, keys, _row_id(i))
        pid = pred["id"]
        if pid in seen:
            raise UserError(f"{where}: duplicate prediction id {pid!r} (first at {seen[pid]})")
        if ref_ids is not None and pid not in ref_ids:
            raise UserError(f"{where}: prediction id {pid!r} is not in the references")
        seen[pid] = where
        preds[pid] = pred["prediction"]
    return preds


def load_refs(path: str | Path, keys: InputKeys = LORABENCH_KEYS) -> list[dict]:
    """Read and validate a references JSONL file; errors name FILE:LINE (UserError)."""
    refs = check_refs(_read_jsonl(path), keys)
    if not refs:
        raise UserError(f"{path}: no references")
    return refs


def load_preds(path: str | Path, ref_ids: Iterable[str] | None = None,
               keys: InputKeys = LORABENCH_KEYS) -> dict[str, str]:
    """Read and validate a predictions JSONL file into {id: prediction}.

    With `ref_ids`, an id outside them is a UserError naming FILE:LINE. With `keys.id` None the
    rows have no id: row n is the prediction for the n-th of `ref_ids` (the counts must agree).
    """
    rows = list(_read_jsonl(path))
    if not rows:  # scoring nothing would print zeros: an empty file is a wrong path or a failed inference
        raise UserError(f"{path}: no predictions")
    if keys.id is None and ref_ids is not None:
        ordered = list(ref_ids)
        if len(rows) != len(ordered):
            raise UserError(f"{path}: {len(rows)} predictions for {len(ordered)} references: rows "
                            "without an id are matched by order, so the counts must be equal")
        by_position = _check_preds(rows, None, keys)
        return {rid: by_position[_row_id(i)] for i, rid in enumerate(ordered)}
    return _check_preds(rows, None if ref_ids is None else set(ref_ids), keys)


def load_pairs(path: str | Path, keys: InputKeys) -> tuple[list[dict], dict[str, str]]:
    """(references, {id: prediction}) from one file whose rows hold both, e.g. `swift infer` output."""
    rows = list(_read_jsonl(path))
    refs = check_refs(rows, keys)
    if not refs:
        raise UserError(f"{path}: no rows")
    preds = _check_preds(rows, None, keys)
    return refs, preds


def coerce_preds(preds: Mapping[str, str] | list[dict], ref_ids: set[str]) -> dict[str, str]:
    if isinstance(preds, Mapping):
        records = (
            (f"preds[{pid!r}]", {"id": pid, "prediction": text}) for pid, text in preds.items()
        )
    else:
        records = ((f"preds[{i}]", record) for i, record in enumerate(preds))
    return _check_preds(records, ref_ids)


