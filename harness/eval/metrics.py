"""Quality metrics: CER, WER, exact match, field precision/recall/F1, JSON validity, bootstrap CIs.

Inputs
  references: `{"id": str, "text": str, "fields": {str: value}}` (`fields` optional)
  predictions: `{"id": str, "prediction": str}`, or a mapping id -> prediction
  Files of other tools (ms-swift's `swift infer` output, lm-eval samples) are read through
  `InputKeys` by the loaders (`load_refs`, `load_preds`, `load_pairs`) into these two forms.

Rules (the `lorabench score` contract; each choice that is ours, not a standard's, is marked DECISION)
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
from harness.results.metric_table import HIGHER_IS_BETTER  # noqa: F401 (part of this module's API)
from harness.eval.score_inputs import check_refs, coerce_preds, load_preds, load_refs, loads_object
from harness.results.stats import CI_LEVEL, as_sample_arrays, resample_indices, take_samples

# Direction of every metric this module reports: the metric table's quality rows.
TEXT_METRICS = ("cer", "wer", "exact_match")
FIELD_METRICS = ("field_precision", "field_recall", "field_f1", "json_valid_rate", "field_anls")
ANLS_THRESHOLD = 0.5  # DocVQA: a value whose normalised edit distance is >= 0.5 scores 0

# Per-sample count columns (the keys of a `per_sample` row that the statistics read).
TEXT_COLUMNS = ("char_edits", "ref_chars", "word_edits", "ref_words", "exact_match")
FIELD_COLUMNS = ("field_tp", "field_pred", "field_ref", "json_valid", "field_anls_sum")


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


def parse_json_object(text: str) -> dict | None:
    """The JSON object in a prediction, or None when it has none by the rules in the module doc."""
    whole = loads_object(text)
    if whole is not None:
        return whole
    span = _first_balanced_object(text)
    return None if span is None else loads_object(span)


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


def anls_normalize(s: str) -> str:
    """The DocVQA ANLS normalisation on top of `normalize`: case-folded (NFKC, stripped, one space)."""
    return normalize(s).lower()


def levenshtein(a: str, b: str) -> int:
    """Character edit distance (insertions, deletions, substitutions all cost 1)."""
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.distance(a, b)


def anls(prediction: str | None, reference: str) -> float:
    """Field-level ANLS (DocVQA): 1 - NL when NL < 0.5, else 0, with NL = edit distance / longer length.

    Both sides go through `anls_normalize`. A missing prediction (None) scores 0; two empty strings 1.
    """
    if prediction is None:
        return 0.0
    a, b = anls_normalize(prediction), anls_normalize(reference)
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    nl = levenshtein(a, b) / longest
    return 1.0 - nl if nl < ANLS_THRESHOLD else 0.0


def per_field_counts(predicted: Mapping[str, str], expected: Mapping[str, str]) -> dict[str, dict]:
    """For each key on either side: tp, pred, ref (0/1 each) and the ANLS of the predicted value.

    Inputs are normalised key -> value maps (`dict(field_pairs(obj))`). A predicted key the
    reference lacks is a false positive of that key (pred 1, ref 0, anls 0).
    """
    out = {}
    for key in sorted(set(predicted) | set(expected)):
        has_pred, has_ref = key in predicted, key in expected
        out[key] = {"tp": int(has_pred and has_ref and predicted[key] == expected[key]),
                    "pred": int(has_pred), "ref": int(has_ref),
                    "anls": anls(predicted.get(key), expected[key]) if has_ref else 0.0}
    return out


def per_field_scores(rows: Iterable[Mapping]) -> dict[str, dict]:
    """Per field name over `per_sample` rows: n (reference count), precision, recall, F1, ANLS."""
    totals: dict[str, dict[str, float]] = {}
    for row in rows:
        for key, c in (row.get("field_scores") or {}).items():
            t = totals.setdefault(key, {"tp": 0, "pred": 0, "ref": 0, "anls": 0.0})
            for name in t:
                t[name] += c[name]
    out = {}
    for key, t in sorted(totals.items()):
        p = t["tp"] / t["pred"] if t["pred"] else 0.0
        r = t["tp"] / t["ref"] if t["ref"] else 0.0
        out[key] = {"n": int(t["ref"]), "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                    "anls": t["anls"] / t["ref"] if t["ref"] else 0.0}
    return out


def per_kind_scores(rows: list[Mapping]) -> dict[str, dict]:
    """Corpus metrics (no intervals) per document kind, for rows that carry a `kind`."""
    by_kind: dict[str, list] = {}
    for row in rows:
        if row.get("kind") is not None:
            by_kind.setdefault(str(row["kind"]), []).append(row)
    out = {}
    for kind, kind_rows in sorted(by_kind.items()):
        cols = columns(kind_rows)
        names = metric_names(cols)
        out[kind] = {"n": len(kind_rows), **{name: float(STATISTICS[name](cols)) for name in names}}
    return out


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

    refs = check_refs((f"refs[{i}]", r) for i, r in enumerate(refs))
    if not refs:
        raise UserError("no references to score")
    pred_by_id = coerce_preds(preds, {r["id"] for r in refs})
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
            by_field = per_field_counts(dict(predicted), dict(expected))
            row.update(
                field_tp=len(predicted & expected),
                field_pred=len(predicted),
                field_ref=len(expected),
                json_valid=parsed is not None,
                field_anls_sum=sum(c["anls"] for c in by_field.values()),
                field_scores=by_field,
            )
        if ref.get("kind") is not None:
            row["kind"] = ref["kind"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Corpus statistics over count columns. Each takes columns shaped (n,) or (B, n) and reduces the
# last axis, so the same function gives the full-set value and a whole bootstrap batch at once.


def columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """Per-sample count columns (float arrays of length n) from `per_sample` rows."""
    names = TEXT_COLUMNS + tuple(c for c in FIELD_COLUMNS if rows and c in rows[0])
    return {name: np.array([float(row[name]) for row in rows]) for name in names}


def metric_names(cols: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    """The metrics these columns can give (records written before ANLS existed lack its column)."""
    names = TEXT_METRICS + (FIELD_METRICS if "field_tp" in cols else ())
    return tuple(n for n in names if n != "field_anls" or "field_anls_sum" in cols)


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
    "field_anls": lambda c: _ratio(c["field_anls_sum"].sum(-1), c["field_ref"].sum(-1)),
}


# ---------------------------------------------------------------------------------------------
# Corpus summary


def summarize(rows: list[dict], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """The `--json` object from `per_sample` rows: n, each metric, and `<metric>_ci: [low, high]`."""
    cols = columns(rows)
    names = metric_names(cols)
    result: dict[str, Any] = {"n": len(rows)}
    for name in names:
        result[name] = float(STATISTICS[name](cols))
    # One index matrix per batch serves every metric, so all intervals use the same resamples.
    dists: dict[str, list[np.ndarray]] = {name: [] for name in names}
    stats, n = as_sample_arrays(cols)
    for idx in resample_indices(n, n_boot, seed):
        resampled = take_samples(stats, idx)
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
