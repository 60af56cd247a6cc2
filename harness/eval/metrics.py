"""Quality metrics: CER, WER, exact match, field precision/recall/F1, JSON validity, bootstrap CIs.

Inputs
  references: `{"id": str, "text": str, "fields": {str: value}}` (`fields` optional)
  predictions: `{"id": str, "prediction": str}`, or a mapping id -> prediction

Rules (the `lorabench score` contract; every choice the issue left open is marked DECISION)
- Texts are stripped before anything else. CER / WER are jiwer's corpus values over the list of
  stripped references against the list of stripped predictions (jiwer's default transforms: CER
  compares characters as they are, WER also collapses runs of whitespace and splits on spaces).
  A stripped-empty reference text is a user error (jiwer cannot score it); an empty prediction
  is fine and costs a full deletion. A reference id with no prediction scores as "".
- exact_match: stripped prediction == stripped reference text, byte for byte.
- Field metrics are reported only when at least one reference has a `fields` key.
  DECISION: a reference without `fields` then counts as having no reference pairs.
- A prediction is parsed as a JSON object if the whole string is one; otherwise the first balanced
  `{...}` in it is parsed (JSON strings and escapes respected while counting braces).
  DECISION: only the first '{' is tried; if its balanced span is missing or is not a JSON object,
  the prediction is unparsable (contributes no predicted pairs, json_valid = False).
- Keys and values are normalised: Unicode NFKC, stripped, inner whitespace runs -> one space.
  Values stay case-sensitive. Non-string values compare by their JSON text (`json.dumps`:
  12.5 -> "12.5", true -> "true", null -> "null"; so 12 and "12" match, 12 and 12.0 do not).
  DECISION: nested objects / arrays -> `json.dumps(v, sort_keys=True, separators=(",", ":"),
  ensure_ascii=False)`, then normalised like any other text.
- Duplicate keys: the last one wins (json.loads does this on both sides). DECISION: the same holds
  for two keys that become equal after normalisation, so one object has one value per key.
- Micro precision = TP / predicted pairs, recall = TP / reference pairs, F1 = harmonic mean.
  DECISION: every 0/0 is 0.0, including the case of no predicted and no reference pairs at all
  (nothing was extracted, so nothing is credited), and F1 is 0.0 when P + R = 0.

Confidence intervals: percentile bootstrap over samples (numpy Generator, seed 0, 1000 resamples),
recomputing the *corpus* statistic on each resample, e.g. CER = sum(char edits) / sum(ref chars).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import UserError

# Direction of every metric this module reports; shared with report / regress.
HIGHER_IS_BETTER = {
    "cer": False,
    "wer": False,
    "exact_match": True,
    "field_precision": True,
    "field_recall": True,
    "field_f1": True,
    "json_valid_rate": True,
}
TEXT_METRICS = ("cer", "wer", "exact_match")
FIELD_METRICS = ("field_precision", "field_recall", "field_f1", "json_valid_rate")
CI_LEVEL = 0.95

# Per-sample count columns (the keys of a `per_sample` row that the statistics read).
TEXT_COLUMNS = ("char_edits", "ref_chars", "word_edits", "ref_words", "exact_match")
FIELD_COLUMNS = ("field_tp", "field_pred", "field_ref", "json_valid")


# ---------------------------------------------------------------------------------------------
# Normalisation and JSON extraction


def normalize(s: str) -> str:
    """NFKC, strip, and collapse every inner run of whitespace to one space. Case is kept."""
    return " ".join(unicodedata.normalize("NFKC", s).split())


def _first_balanced_object(text: str) -> str | None:
    """The substring from the first '{' to its balanced '}', or None if it never closes.

    Braces inside JSON strings do not count; a backslash inside a string escapes the next char.
    """
    start = text.find("{")
    if start < 0:
        return None
    depth = 0
    in_string = False
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return None


def _loads_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


def parse_json_object(text: str) -> dict | None:
    """The JSON object in a prediction, or None when it has none by the rules in the module doc."""
    whole = _loads_object(text)
    if whole is not None:
        return whole
    span = _first_balanced_object(text)
    return None if span is None else _loads_object(span)


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    else:  # number, bool, None: their JSON text
        text = json.dumps(value)
    return normalize(text)


def field_pairs(obj: Mapping[str, Any] | None) -> set[tuple[str, str]]:
    """Normalised (key, value) pairs of a JSON object; None (unparsable) gives the empty set."""
    if obj is None:
        return set()
    by_key: dict[str, str] = {}
    for key, value in obj.items():  # later keys overwrite earlier ones: the last one wins
        by_key[normalize(str(key))] = _value_text(value)
    return set(by_key.items())


# ---------------------------------------------------------------------------------------------
# Input validation (shared by the in-memory API and the file readers)


def _check_ref(record: Any, where: str) -> dict:
    if not isinstance(record, dict):
        raise UserError(f"{where}: a reference must be a JSON object, got {type(record).__name__}")
    for key in ("id", "text"):
        if key not in record:
            raise UserError(f"{where}: reference is missing {key!r}")
        if not isinstance(record[key], str):
            raise UserError(f"{where}: reference {key!r} must be a string, "
                            f"got {type(record[key]).__name__}")
    if not record["text"].strip():
        raise UserError(f"{where}: reference {record['id']!r} has an empty text "
                        "(CER/WER are undefined for an empty reference)")
    if "fields" in record and not isinstance(record["fields"], dict):
        raise UserError(f"{where}: reference 'fields' must be a JSON object, "
                        f"got {type(record['fields']).__name__}")
    return record


def _check_pred(record: Any, where: str) -> dict:
    if not isinstance(record, dict):
        raise UserError(f"{where}: a prediction must be a JSON object, got {type(record).__name__}")
    for key in ("id", "prediction"):
        if key not in record:
            raise UserError(f"{where}: prediction is missing {key!r}")
        if not isinstance(record[key], str):
            raise UserError(f"{where}: prediction {key!r} must be a string, "
                            f"got {type(record[key]).__name__}")
    return record


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


def _check_refs(records: Iterable[tuple[str, Any]]) -> list[dict]:
    refs: list[dict] = []
    seen: dict[str, str] = {}
    for where, record in records:
        ref = _check_ref(record, where)
        rid = ref["id"]
        if rid in seen:
            raise UserError(f"{where}: duplicate reference id {rid!r} (first at {seen[rid]})")
        seen[rid] = where
        refs.append(ref)
    return refs


def _check_preds(records: Iterable[tuple[str, Any]], ref_ids: set[str] | None) -> dict[str, str]:
    preds: dict[str, str] = {}
    seen: dict[str, str] = {}
    for where, record in records:
        pred = _check_pred(record, where)
        pid = pred["id"]
        if pid in seen:
            raise UserError(f"{where}: duplicate prediction id {pid!r} (first at {seen[pid]})")
        if ref_ids is not None and pid not in ref_ids:
            raise UserError(f"{where}: prediction id {pid!r} is not in the references")
        seen[pid] = where
        preds[pid] = pred["prediction"]
    return preds


def load_refs(path: str | Path) -> list[dict]:
    """Read and validate a references JSONL file; errors name FILE:LINE (UserError)."""
    refs = _check_refs(_read_jsonl(path))
    if not refs:
        raise UserError(f"{path}: no references")
    return refs


def load_preds(path: str | Path, ref_ids: Iterable[str] | None = None) -> dict[str, str]:
    """Read and validate a predictions JSONL file into {id: prediction}.

    With `ref_ids`, an id outside them is a UserError naming FILE:LINE.
    """
    return _check_preds(_read_jsonl(path), None if ref_ids is None else set(ref_ids))


def _coerce_preds(preds: Mapping[str, str] | list[dict], ref_ids: set[str]) -> dict[str, str]:
    if isinstance(preds, Mapping):
        records = (
            (f"preds[{pid!r}]", {"id": pid, "prediction": text}) for pid, text in preds.items()
        )
    else:
        records = ((f"preds[{i}]", record) for i, record in enumerate(preds))
    return _check_preds(records, ref_ids)


# ---------------------------------------------------------------------------------------------
# Per-sample scoring


def _edit_counts(output) -> tuple[list[int], list[int]]:
    """Per-sample (edits, reference length) from a jiwer process_* output.

    edits = S + D + I = (len(ref) - hits) + insertions, read from each sample's alignment so that
    the sums reproduce jiwer's corpus value exactly.
    """
    edits, lengths = [], []
    for ref_tokens, chunks in zip(output.references, output.alignments):
        hits = sum(c.ref_end_idx - c.ref_start_idx for c in chunks if c.type == "equal")
        inserted = sum(c.hyp_end_idx - c.hyp_start_idx for c in chunks if c.type == "insert")
        edits.append(len(ref_tokens) - hits + inserted)
        lengths.append(len(ref_tokens))
    return edits, lengths


def per_sample(refs: list[dict], preds: Mapping[str, str] | list[dict]) -> list[dict]:
    """One row per reference, in reference order (the `--per-sample` JSONL lines).

    Row keys: id, cer, wer, exact_match (bool), char_edits, ref_chars, word_edits, ref_words, and,
    when any reference has `fields`, field_tp, field_pred, field_ref, json_valid (bool).
    Raises UserError for malformed or duplicate references, unknown prediction ids, empty texts.
    """
    import jiwer  # imported here: `lorabench --help` should not pay for it

    refs = _check_refs((f"refs[{i}]", r) for i, r in enumerate(refs))
    if not refs:
        raise UserError("no references to score")
    pred_by_id = _coerce_preds(preds, {r["id"] for r in refs})
    ref_texts = [r["text"].strip() for r in refs]
    hyp_texts = [pred_by_id.get(r["id"], "").strip() for r in refs]
    char_edits, ref_chars = _edit_counts(jiwer.process_characters(ref_texts, hyp_texts))
    word_edits, ref_words = _edit_counts(jiwer.process_words(ref_texts, hyp_texts))
    has_fields = any("fields" in r for r in refs)

    rows = []
    for i, ref in enumerate(refs):
        row = {
            "id": ref["id"],
            "cer": char_edits[i] / ref_chars[i],
            "wer": word_edits[i] / ref_words[i],
            "exact_match": hyp_texts[i] == ref_texts[i],
            "char_edits": char_edits[i],
            "ref_chars": ref_chars[i],
            "word_edits": word_edits[i],
            "ref_words": ref_words[i],
        }
        if has_fields:
            parsed = parse_json_object(pred_by_id.get(ref["id"], ""))
            predicted = field_pairs(parsed)
            expected = field_pairs(ref.get("fields", {}))
            row.update(
                field_tp=len(predicted & expected),
                field_pred=len(predicted),
                field_ref=len(expected),
                json_valid=parsed is not None,
            )
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Corpus statistics over count columns. Each takes columns shaped (n,) or (B, n) and reduces the
# last axis, so the same function gives the full-set value and a whole bootstrap batch at once.


def columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """Per-sample count columns (float arrays of length n) from `per_sample` rows."""
    names = TEXT_COLUMNS + (FIELD_COLUMNS if rows and "field_tp" in rows[0] else ())
    return {name: np.array([float(row[name]) for row in rows]) for name in names}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0/0 (and x/0) defined as 0.0."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _precision(c):
    return _ratio(c["field_tp"].sum(-1), c["field_pred"].sum(-1))


def _recall(c):
    return _ratio(c["field_tp"].sum(-1), c["field_ref"].sum(-1))


def _f1(c):
    p, r = _precision(c), _recall(c)
    return _ratio(2 * p * r, p + r)


STATISTICS: dict[str, Callable[[Mapping[str, np.ndarray]], np.ndarray]] = {
    "cer": lambda c: _ratio(c["char_edits"].sum(-1), c["ref_chars"].sum(-1)),
    "wer": lambda c: _ratio(c["word_edits"].sum(-1), c["ref_words"].sum(-1)),
    "exact_match": lambda c: c["exact_match"].mean(-1),
    "field_precision": _precision,
    "field_recall": _recall,
    "field_f1": _f1,
    "json_valid_rate": lambda c: c["json_valid"].mean(-1),
}


# ---------------------------------------------------------------------------------------------
# Bootstrap

_BOOT_CELLS_PER_BATCH = 4_000_000  # resample indices held at once: bounds memory for large n


def _resample_batches(n: int, n_boot: int, seed: int) -> Iterable[np.ndarray]:
    """Index arrays of shape (b, n), b summing to n_boot, drawn from one seeded Generator."""
    if n < 1:
        raise ValueError("bootstrap needs at least one sample")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    per_batch = max(1, _BOOT_CELLS_PER_BATCH // n)
    for start in range(0, n_boot, per_batch):
        yield rng.integers(0, n, size=(min(per_batch, n_boot - start), n))


def _take(stats, idx):
    if isinstance(stats, Mapping):
        return {name: col[idx] for name, col in stats.items()}
    return stats[idx]


def _as_arrays(stats):
    if isinstance(stats, Mapping):
        arrays = {name: np.asarray(col, dtype=float) for name, col in stats.items()}
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"per-sample columns differ in length: {sorted(lengths)}")
        return arrays, lengths.pop()
    array = np.asarray(stats, dtype=float)
    return array, len(array)


def bootstrap_distribution(per_sample_stats, statistic_fn, n_boot: int = 1000,
                           seed: int = 0) -> np.ndarray:
    """statistic_fn on each of `n_boot` resamples (with replacement) of the samples; shape (n_boot,).

    per_sample_stats: a mapping of equal-length per-sample columns (e.g. `columns(rows)`), or one
    1-D array. statistic_fn receives the same kind, each column shaped (B, n), and must reduce the
    last axis to shape (B,) (e.g. `c["x"].sum(-1) / c["y"].sum(-1)`).
    """
    stats, n = _as_arrays(per_sample_stats)
    return np.concatenate([np.asarray(statistic_fn(_take(stats, idx)), dtype=float)
                           for idx in _resample_batches(n, n_boot, seed)])


def bootstrap_ci(per_sample_stats, statistic_fn, n_boot: int = 1000, seed: int = 0,
                 level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval (2.5th, 97.5th percentiles at level 0.95) of a corpus statistic.

    Inputs as `bootstrap_distribution`. Deterministic for a given (n, n_boot, seed).
    """
    dist = bootstrap_distribution(per_sample_stats, statistic_fn, n_boot, seed)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(dist, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_bootstrap_pvalue(a_stats, b_stats, statistic_fn, n_boot: int = 1000,
                            seed: int = 0) -> float:
    """Two-sided paired bootstrap p-value for "systems A and B score the same on these samples".

    Method: both systems are resampled with the *same* indices (the samples are paired: same ids, same
    order). d = stat(A) - stat(B) on the full set, d_b on each resample. Centring d_b on d gives the
    null distribution (Efron & Tibshirani 1993, sec. 16.4; Berg-Kirkpatrick et al. 2012), so
    p = (1 + #{b : |d_b - d| >= |d|}) / (1 + n_boot). The +1 keeps p > 0 with finite resamples;
    p = 1.0 when d = 0. Inputs as `bootstrap_distribution`; A and B must have the same n.
    """
    a, n_a = _as_arrays(a_stats)
    b, n_b = _as_arrays(b_stats)
    if n_a != n_b:
        raise ValueError(f"paired comparison needs the same samples: {n_a} vs {n_b}")
    observed = float(statistic_fn(a)) - float(statistic_fn(b))
    extreme = 0
    for idx in _resample_batches(n_a, n_boot, seed):
        deltas = np.asarray(statistic_fn(_take(a, idx))) - np.asarray(statistic_fn(_take(b, idx)))
        # tiny tolerance: a resample equal to the observed gap up to rounding counts as extreme
        extreme += int(np.sum(np.abs(deltas - observed) >= abs(observed) - 1e-12))
    return (1 + extreme) / (1 + n_boot)


# ---------------------------------------------------------------------------------------------
# Corpus summary


def summarize(rows: list[dict], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """The `--json` object from `per_sample` rows: n, each metric, and `<metric>_ci: [low, high]`."""
    cols = columns(rows)
    names = TEXT_METRICS + (FIELD_METRICS if "field_tp" in cols else ())
    result: dict[str, Any] = {"n": len(rows)}
    for name in names:
        result[name] = float(STATISTICS[name](cols))
    # One index matrix per batch serves every metric, so all intervals use the same resamples.
    dists: dict[str, list[np.ndarray]] = {name: [] for name in names}
    stats, n = _as_arrays(cols)
    for idx in _resample_batches(n, n_boot, seed):
        resampled = _take(stats, idx)
        for name in names:
            dists[name].append(np.asarray(STATISTICS[name](resampled), dtype=float))
    tail = 100.0 * (1.0 - CI_LEVEL) / 2.0
    for name in names:
        low, high = np.percentile(np.concatenate(dists[name]), [tail, 100.0 - tail])
        result[f"{name}_ci"] = [float(low), float(high)]
    return result


def score(refs: list[dict], preds: Mapping[str, str] | list[dict], *, n_boot: int = 1000,
          seed: int = 0) -> dict:
    """Score predictions against references; returns the `lorabench score --json` object.

    refs: [{"id", "text", "fields"?}]; preds: {id: prediction} or [{"id", "prediction"}].
    Keys: n, cer, wer, exact_match, [field_precision, field_recall, field_f1, json_valid_rate
    when any reference has fields], and `<metric>_ci: [low, high]` for each metric.
    """
    return summarize(per_sample(refs, preds), n_boot=n_boot, seed=seed)


def write_per_sample(rows: list[dict], path: str | Path) -> None:
    """Write `per_sample` rows as JSONL, one line per reference id."""
    try:
        with open(path, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def score_files(refs_path: str | Path, preds_path: str | Path, *, n_boot: int = 1000,
                seed: int = 0, per_sample_path: str | Path | None = None) -> dict:
    """Score two JSONL files; returns the `--json` object (as `score`).

    With `per_sample_path`, also writes the per-sample rows there. Input errors are UserErrors
    naming FILE:LINE.
    """
    refs = load_refs(refs_path)
    preds = load_preds(preds_path, ref_ids=[r["id"] for r in refs])
    rows = per_sample(refs, preds)
    if per_sample_path is not None:
        write_per_sample(rows, per_sample_path)
    return summarize(rows, n_boot=n_boot, seed=seed)
