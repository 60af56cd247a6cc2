"""`lorabench score` through harness.cli.main: plain table, --json, --per-sample, error paths."""

from __future__ import annotations

import json

import pytest

from harness.cli import main

REFS = [
    {"id": "s1", "text": "abcd", "fields": {"total": "12.50", "n": 2}},
    {"id": "s2", "text": "hello world", "fields": {"name": "Bob"}},
    {"id": "s3", "text": "same text"},
]
PREDS = [
    {"id": "s1", "prediction": 'abxd {"total": "12.50", "n": 3}'},
    {"id": "s3", "prediction": "same text"},
]  # s2 missing -> ""


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture
def files(tmp_path):
    return _write_jsonl(tmp_path / "refs.jsonl", REFS), _write_jsonl(tmp_path / "preds.jsonl", PREDS)


# Hand-computed corpus values for REFS / PREDS:
#   CER: s1 "abcd" vs 'abxd {"total": "12.50", "n": 3}' = 1 sub + 27 inserted chars = 28 edits / 4;
#        s2 11 deletions / 11; s3 0 / 9  ->  39 / 24
#   WER: s1 1 sub + 4 inserted words / 1; s2 2 / 2; s3 0 / 2  ->  7 / 5
#   fields: s1 pred {total 12.50, n 3} vs ref {total 12.50, n 2}: TP 1, pred 2, ref 2;
#           s2 no prediction: 0, 0, 1; s3 no fields: pred "same text" unparsable: 0, 0, 0
#           P = 1/2, R = 1/3, F1 = 2/5; JSON valid 1/3
#   ANLS over the 3 reference fields: total 1, n ("3" vs "2": distance 1/1) 0, name (missing) 0 -> 1/3
EXPECTED = {"cer": 39 / 24, "wer": 7 / 5, "exact_match": 1 / 3, "field_precision": 0.5,
            "field_recall": 1 / 3, "field_f1": 0.4, "json_valid_rate": 1 / 3, "field_anls": 1 / 3}


def test_json_output_has_metrics_n_and_intervals(files, capsys):
    assert main(["score", *files, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 3
    for name, value in EXPECTED.items():
        assert result[name] == pytest.approx(value), name
        low, high = result[f"{name}_ci"]
        assert low <= high
    assert set(result) == {"n", *EXPECTED, *(f"{name}_ci" for name in EXPECTED)}


def test_plain_output_is_an_aligned_table(files, capsys):
    assert main(["score", *files]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["metric", "value", "95%", "CI"]
    table = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert table["n"] == "3"
    assert table["cer"] == f"{39 / 24:.4f}"
    assert table["field_f1"] == "0.4000"
    value_columns = {line.index(line.split()[1]) + len(line.split()[1]) for line in lines[1:]}
    assert len(value_columns) == 1  # values right-aligned in one column


def test_no_fields_means_no_field_metrics(tmp_path, capsys):
    refs = _write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "text": "abcd"}])
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prediction": "abxd"}])
    assert main(["score", refs, preds, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"n", "cer", "wer", "exact_match", "cer_ci", "wer_ci", "exact_match_ci"}
    assert result["cer"] == 0.25


def test_per_sample_file(files, tmp_path, capsys):
    out = tmp_path / "per_sample.jsonl"
    assert main(["score", *files, "--per-sample", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["s1", "s2", "s3"]
    assert rows[0]["cer"] == pytest.approx(28 / 4) and rows[0]["wer"] == 5.0
    assert rows[1]["cer"] == 1.0 and rows[1]["exact_match"] is False
    assert rows[2]["cer"] == 0.0 and rows[2]["exact_match"] is True
    counts = [(r["field_tp"], r["field_pred"], r["field_ref"], r["json_valid"]) for r in rows]
    assert counts == [(1, 2, 2, True), (0, 0, 1, False), (0, 0, 0, False)]


def test_blank_lines_are_skipped(tmp_path, capsys):
    refs = tmp_path / "r.jsonl"
    refs.write_text('\n{"id": "a", "text": "abcd"}\n\n')
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prediction": "abcd"}])
    assert main(["score", str(refs), preds, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exact_match"] == 1.0


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("lorabench: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("which, line, expected", [
    ("refs", "not json", "refs.jsonl:2: not valid JSON"),
    ("refs", '{"id": "x"}', "refs.jsonl:2: reference is missing 'text'"),
    ("refs", '{"id": "x", "text": 5}', "refs.jsonl:2: reference 'text' must be a string"),
    ("refs", '{"id": "x", "text": "y", "fields": "k=v"}', "refs.jsonl:2: reference 'fields' must"),
    ("refs", '{"id": "s1", "text": "dup"}', "refs.jsonl:2: duplicate reference id 's1'"),
    ("refs", '{"id": "x", "text": "   "}', "refs.jsonl:2: reference 'x' has an empty text"),
    ("refs", '["id", "text"]', "refs.jsonl:2: a reference must be a JSON object"),
    ("preds", '{"id": "s3"}', "preds.jsonl:2: prediction is missing 'prediction'"),
    ("preds", '{"id": "s3", "prediction": null}', "preds.jsonl:2: prediction 'prediction' must"),
    ("preds", '{"id": "s1", "prediction": "again"}', "preds.jsonl:2: duplicate prediction id 's1'"),
    ("preds", '{"id": "ghost", "prediction": "x"}', "preds.jsonl:2: prediction id 'ghost' is not in"),
])
def test_bad_line_exits_2_naming_file_and_line(tmp_path, capsys, which, line, expected):
    first = {"refs": REFS[0], "preds": PREDS[0]}[which]
    bad = tmp_path / f"{which}.jsonl"
    bad.write_text(json.dumps(first) + "\n" + line + "\n")
    good = {"refs": REFS, "preds": PREDS}["preds" if which == "refs" else "refs"]
    other = _write_jsonl(tmp_path / ("preds.jsonl" if which == "refs" else "refs.jsonl"), good)
    args = [str(bad), other] if which == "refs" else [other, str(bad)]
    assert main(["score", *args]) == 2
    assert expected in _error(capsys)


def test_missing_file_exits_2(tmp_path, capsys):
    refs = _write_jsonl(tmp_path / "r.jsonl", REFS)
    assert main(["score", refs, str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in _error(capsys)


def test_empty_refs_file_exits_2(tmp_path, capsys):
    refs = tmp_path / "r.jsonl"
    refs.write_text("")
    preds = _write_jsonl(tmp_path / "p.jsonl", [])
    assert main(["score", str(refs), preds]) == 2
    assert "no references" in _error(capsys)


def test_unwritable_per_sample_path_exits_2(files, tmp_path, capsys):
    assert main(["score", *files, "--per-sample", str(tmp_path / "no" / "dir" / "x.jsonl")]) == 2
    assert "cannot write" in _error(capsys)


def test_an_empty_prediction_file_is_a_user_error_not_a_score_of_zero(tmp_path, capsys):
    refs = _write_jsonl(tmp_path / "refs.jsonl", REFS)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["score", refs, str(empty)]) == 2
    err = capsys.readouterr().err
    assert err == f"lorabench: error: {empty}: no predictions\n"
