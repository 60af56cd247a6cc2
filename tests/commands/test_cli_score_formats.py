"""`lorabench score` on other tools' files: ms-swift's `swift infer` output and lm-eval-style samples."""

from __future__ import annotations

import json

import pytest

from harness.cli import main


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


# What `swift infer --result_path` writes: the answer, the dataset's answer as `labels`, the
# conversation and images; no id.
SWIFT_ROWS = [
    {"response": '{"total": "12.50"}', "labels": '{"total": "12.50"}', "logprobs": None,
     "messages": [{"role": "user", "content": "<image>Extract fields as JSON."},
                  {"role": "assistant", "content": '{"total": "12.50"}'}], "images": ["a.png"]},
    {"response": '{"total": "9.00"}', "labels": '{"total": "9.50"}', "logprobs": None,
     "messages": [], "images": ["b.png"]},
]


def _score(capsys, *argv):
    code = main(["score", *argv, "--json", "--n-boot", "10"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_swift_infer_output_alone_scores_response_against_labels(tmp_path, capsys):
    code, result, err = _score(capsys, _write_jsonl(tmp_path / "infer.jsonl", SWIFT_ROWS))
    assert code == 0
    assert result["n"] == 2 and result["exact_match"] == 0.5
    # labels that are JSON objects give the reference fields: 1 of 2 pairs right
    assert result["field_precision"] == 0.5 and result["field_recall"] == 0.5
    assert "each row's 'response' is scored against its 'labels'" in err


def test_swift_infer_predictions_are_matched_to_references_by_order(tmp_path, capsys):
    refs = _write_jsonl(tmp_path / "refs.jsonl", [
        {"id": "a", "text": '{"total": "12.50"}', "fields": {"total": "12.50"}},
        {"id": "b", "text": '{"total": "9.50"}', "fields": {"total": "9.50"}}])
    per_sample = tmp_path / "per_sample.jsonl"
    code = main(["score", refs, _write_jsonl(tmp_path / "infer.jsonl", SWIFT_ROWS), "--json",
                 "--per-sample", str(per_sample)])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["exact_match"] == 0.5
    assert "'response' is the prediction" in err
    assert "has no 'id': predictions are matched to references by order (row n with row n)" in err
    rows = [json.loads(line) for line in per_sample.read_text().splitlines()]
    assert [(r["id"], r["exact_match"]) for r in rows] == [("a", True), ("b", False)]


def test_rows_matched_by_order_must_be_as_many(tmp_path, capsys):
    refs = _write_jsonl(tmp_path / "refs.jsonl", [{"id": "a", "text": "x"}])
    code, _, err = _score(capsys, refs, _write_jsonl(tmp_path / "infer.jsonl", SWIFT_ROWS))
    assert code == 2
    assert "2 predictions for 1 references: rows without an id are matched by order" in err


def test_lm_eval_samples_through_pred_ref_and_id_keys(tmp_path, capsys):
    samples = _write_jsonl(tmp_path / "samples.jsonl", [
        {"doc_id": 0, "doc": {"question": "q"}, "target": "Paris", "resps": [["Paris"]],
         "filtered_resps": ["Paris"]},
        {"doc_id": 1, "doc": {"question": "q"}, "target": "Rome", "resps": [["Roma"]],
         "filtered_resps": ["Roma"]},
    ])
    per_sample = tmp_path / "per_sample.jsonl"
    code = main(["score", samples, "--pred-key", "filtered_resps", "--ref-key", "target",
                 "--id-key", "doc_id", "--json", "--per-sample", str(per_sample)])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["n"] == 2 and result["exact_match"] == 0.5
    assert result["cer"] == pytest.approx(1 / 9)  # "Roma" vs "Rome": 1 edit over 5 + 4 characters
    assert [json.loads(line)["id"] for line in per_sample.read_text().splitlines()] == ["0", "1"]


def test_nested_keys_are_dotted_paths(tmp_path, capsys):
    path = _write_jsonl(tmp_path / "x.jsonl", [{"out": {"text": "abc"}, "gold": {"text": "abc"}}])
    code, result, _ = _score(capsys, path, "--pred-key", "out.text", "--ref-key", "gold.text")
    assert code == 0 and result["exact_match"] == 1.0


@pytest.mark.parametrize("rows, argv, message", [
    ([{"answer": "x", "gold": "x"}], [], "one file needs --pred-key and --ref-key"),
    ([{"answer": "x"}], ["--pred-key", "answer", "--ref-key", "gold"], "x.jsonl:1: reference is missing 'gold'"),
    ([{"answer": 3, "gold": "x"}], ["--pred-key", "answer", "--ref-key", "gold"],
     "x.jsonl:1: prediction 'answer' must be a string, got int"),
    ([{"response": "x", "labels": None}], [], "x.jsonl:1: reference 'labels' must be a string, got NoneType"),
    ([{"id": "a", "response": "x", "labels": "x"}, {"id": "a", "response": "y", "labels": "y"}], [],
     "x.jsonl:2: duplicate reference id 'a'"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, rows, argv, message):
    code, _, err = _score(capsys, _write_jsonl(tmp_path / "x.jsonl", rows), *argv)
    assert code == 2
    error_lines = [line for line in err.splitlines() if not line.startswith("lorabench: note: ")]
    assert len(error_lines) == 1 and error_lines[0].startswith("lorabench: error: ")
    assert message in error_lines[0]
