"""harness.eval.metrics: every scoring rule with hand-computed values, bootstrap and paired p-value."""

from __future__ import annotations

import json
import time

import jiwer
import numpy as np
import pytest

from harness.eval import metrics as metrics
from harness.errors import UserError
from harness.eval.score_inputs import load_refs
from harness.results.stats import bootstrap_ci, bootstrap_distribution, paired_bootstrap_pvalue
from harness.eval.metrics import (
    HIGHER_IS_BETTER,
    STATISTICS,
    columns,
    field_pairs,
    normalize,
    parse_json_object,
    per_sample,
    score,
)

# ---------------------------------------------------------------------------------------------
# normalize


def test_normalize_nfkc_full_width_digits_and_ligature():
    assert normalize("１２.５０") == "12.50"
    assert normalize("ﬁeld") == "field"


def test_normalize_strips_and_collapses_whitespace_runs():
    assert normalize("  Main \t St.\n\n 5  ") == "Main St. 5"
    assert normalize("a\u3000b") == "a b"  # ideographic space: NFKC -> space


def test_normalize_keeps_case():
    assert normalize("Bob") == "Bob"
    assert normalize("Bob") != normalize("bob")


# ---------------------------------------------------------------------------------------------
# parse_json_object


def test_parse_whole_string_object():
    assert parse_json_object('  {"a": 1}\n') == {"a": 1}


def test_parse_first_balanced_object_in_prose():
    assert parse_json_object('Sure! ```json\n{"a": "x"}\n``` done') == {"a": "x"}


def test_parse_braces_and_escaped_quotes_inside_strings():
    text = 'Here: {"note": "a } b { c", "q": "say \\"}\\" ok"} and {"other": 1}'
    assert parse_json_object(text) == {"note": "a } b { c", "q": 'say "}" ok'}


def test_parse_escaped_backslash_before_closing_quote():
    assert parse_json_object('x {"p": "c:\\\\"} y') == {"p": "c:\\"}


def test_parse_only_the_first_brace_is_tried():
    # documented decision: the first balanced {...} is not JSON, so no later '{' is tried
    assert parse_json_object('text {broken} then {"a": 1}') is None


def test_parse_unbalanced_or_absent_is_none():
    assert parse_json_object('oops {"a": 1') is None
    assert parse_json_object("no json here") is None
    assert parse_json_object("") is None


def test_parse_whole_non_object_falls_back_to_first_balanced_object():
    assert parse_json_object("[1, 2]") is None
    assert parse_json_object('[{"a": 1}, {"b": 2}]') == {"a": 1}


def test_parse_duplicate_keys_last_wins():
    assert parse_json_object('{"k": "old", "k": "new"}') == {"k": "new"}


# ---------------------------------------------------------------------------------------------
# field_pairs


def test_field_pairs_non_string_scalars_compare_by_json_text():
    assert field_pairs({"n": 12.5, "ok": True, "x": None, "i": 3}) == {
        ("n", "12.5"), ("ok", "true"), ("x", "null"), ("i", "3")}
    assert field_pairs({"n": 12.5}) == field_pairs({"n": "12.5"})
    assert field_pairs({"n": 12}) != field_pairs({"n": 12.0})  # "12" vs "12.0"


def test_field_pairs_nested_values_are_sorted_compact_json():
    pairs = field_pairs({"items": [{"b": 1, "a": "x"}], "o": {"z": None, "y": [1, 2]}})
    assert pairs == {("items", '[{"a":"x","b":1}]'), ("o", '{"y":[1,2],"z":null}')}


def test_field_pairs_normalises_keys_and_values():
    assert field_pairs({" ﬁeld ": "１２  3\n"}) == {("field", "12 3")}


def test_field_pairs_keys_equal_after_normalisation_last_wins():
    assert field_pairs({"total": "1", " total ": "2"}) == {("total", "2")}


def test_field_pairs_of_unparsable_is_empty():
    assert field_pairs(None) == set()


# ---------------------------------------------------------------------------------------------
# text metrics


TEXT_REFS = [
    {"id": "r1", "text": "abcd"},
    {"id": "r2", "text": "hello world"},
    {"id": "r3", "text": "  same text "},
]
TEXT_PREDS = {"r1": "abxd", "r3": "same text\n"}  # r2 missing -> scored as ""


def test_text_metrics_hand_computed():
    # r1: 1 substitution / 4 chars, 1 of 1 word; r2: 11 deletions / 11 chars, 2 of 2 words;
    # r3: stripped texts equal -> 0 of 9 chars, 0 of 2 words.
    result = score(TEXT_REFS, TEXT_PREDS, n_boot=50)
    assert result["n"] == 3
    assert result["cer"] == pytest.approx(12 / 24)
    assert result["wer"] == pytest.approx(3 / 5)
    assert result["exact_match"] == pytest.approx(1 / 3)


def test_text_metrics_equal_jiwer_corpus_values():
    refs = [r["text"].strip() for r in TEXT_REFS]
    hyps = [TEXT_PREDS.get(r["id"], "").strip() for r in TEXT_REFS]
    result = score(TEXT_REFS, TEXT_PREDS, n_boot=10)
    assert result["cer"] == pytest.approx(jiwer.cer(refs, hyps), abs=1e-15)
    assert result["wer"] == pytest.approx(jiwer.wer(refs, hyps), abs=1e-15)


def test_per_sample_rows_and_missing_prediction_is_empty():
    rows = per_sample(TEXT_REFS, TEXT_PREDS)
    assert [r["id"] for r in rows] == ["r1", "r2", "r3"]
    assert (rows[0]["cer"], rows[0]["wer"], rows[0]["exact_match"]) == (0.25, 1.0, False)
    assert rows[1]["cer"] == 1.0 and rows[1]["char_edits"] == 11 and rows[1]["ref_chars"] == 11
    assert rows[1]["wer"] == 1.0 and rows[1]["ref_words"] == 2
    assert (rows[2]["cer"], rows[2]["wer"], rows[2]["exact_match"]) == (0.0, 0.0, True)
    assert "field_tp" not in rows[0] and "json_valid" not in rows[0]


def test_wer_collapses_space_runs_but_cer_does_not():
    # jiwer's default transforms: WER removes repeated spaces, CER compares characters as they are
    row = per_sample([{"id": "a", "text": "a  b"}], {"a": "a b"})[0]
    assert row["wer"] == 0.0
    assert row["cer"] == 0.25
    assert row["exact_match"] is False


def test_exact_match_is_case_sensitive():
    assert per_sample([{"id": "a", "text": "Total"}], {"a": "total"})[0]["exact_match"] is False


def test_preds_as_list_of_records_equals_mapping():
    as_list = [{"id": k, "prediction": v} for k, v in TEXT_PREDS.items()]
    assert score(TEXT_REFS, as_list, n_boot=20) == score(TEXT_REFS, TEXT_PREDS, n_boot=20)


def test_no_fields_in_refs_means_no_field_metrics():
    result = score(TEXT_REFS, TEXT_PREDS, n_boot=20)
    assert set(result) == {"n", "cer", "wer", "exact_match", "cer_ci", "wer_ci", "exact_match_ci"}


# ---------------------------------------------------------------------------------------------
# field metrics

FIELD_REFS = [
    {"id": "s1", "text": "t1", "fields": {"total": "12.50", "date": "2024-01-02"}},
    {"id": "s2", "text": "t2", "fields": {"name": "Bob", "qty": 3}},
    {"id": "s3", "text": "t3", "fields": {"a": 1, "b": 2}},
]
FIELD_PREDS = {
    "s1": 'Result: {"total": "12.50", "date": "2024-01-03"} done',  # 2 predicted, 1 TP
    "s2": '{"name": "bob", "qty": 3, "x": null}',  # 3 predicted, 1 TP (case-sensitive name)
    "s3": "no json",  # unparsable: 0 predicted
}


def test_field_metrics_hand_computed():
    # TP = 2, predicted = 5, reference = 6 -> P = 0.4, R = 1/3, F1 = 2PR/(P+R) = 4/11
    result = score(FIELD_REFS, FIELD_PREDS, n_boot=50)
    assert result["field_precision"] == pytest.approx(0.4)
    assert result["field_recall"] == pytest.approx(1 / 3)
    assert result["field_f1"] == pytest.approx(4 / 11)
    assert result["json_valid_rate"] == pytest.approx(2 / 3)
    for name in ("field_precision", "field_recall", "field_f1", "json_valid_rate"):
        assert len(result[f"{name}_ci"]) == 2


def test_field_per_sample_counts():
    rows = per_sample(FIELD_REFS, FIELD_PREDS)
    counts = [(r["field_tp"], r["field_pred"], r["field_ref"], r["json_valid"]) for r in rows]
    assert counts == [(1, 2, 2, True), (1, 3, 2, True), (0, 0, 2, False)]


def test_field_match_after_nfkc_whitespace_and_scalar_text():
    refs = [{"id": "a", "text": "t", "fields": {
        "ﬁeld": "１２.５０", "addr": "Main   St.\n5", "n": 12.5, "ok": True, "x": None}}]
    pred = '{"field": "12.50", "addr": " Main St. 5 ", "n": "12.5", "ok": true, "x": "null"}'
    result = score(refs, {"a": pred}, n_boot=10)
    assert (result["field_precision"], result["field_recall"], result["field_f1"]) == (1.0, 1.0, 1.0)


def test_refs_without_fields_count_as_no_reference_pairs_when_others_have_fields():
    refs = [{"id": "a", "text": "t", "fields": {"k": "v"}}, {"id": "b", "text": "u"}]
    rows = per_sample(refs, {"a": '{"k": "v"}', "b": '{"k": "v"}'})
    assert [(r["field_tp"], r["field_pred"], r["field_ref"]) for r in rows] == [(1, 1, 1), (0, 1, 0)]


def test_no_pairs_at_all_gives_zero_not_nan():
    # documented: 0/0 -> 0.0 for precision, recall and F1
    result = score([{"id": "a", "text": "t", "fields": {}}], {"a": "{}"}, n_boot=10)
    assert (result["field_precision"], result["field_recall"], result["field_f1"]) == (0.0, 0.0, 0.0)
    assert result["json_valid_rate"] == 1.0


def test_missing_prediction_counts_as_invalid_json():
    result = score(FIELD_REFS[:1], {}, n_boot=10)
    assert result["json_valid_rate"] == 0.0 and result["field_recall"] == 0.0
    assert result["cer"] == 1.0


def test_reference_duplicate_keys_last_wins(tmp_path):
    path = tmp_path / "refs.jsonl"
    path.write_text('{"id": "a", "text": "t", "fields": {"k": "old", "k": "new"}}\n')
    refs = load_refs(path)
    assert field_pairs(refs[0]["fields"]) == {("k", "new")}
    assert score(refs, {"a": '{"k": "new"}'}, n_boot=10)["field_f1"] == 1.0


# ---------------------------------------------------------------------------------------------
# input errors (in-memory API)


@pytest.mark.parametrize("refs, preds, message", [
    ([{"id": "a", "text": ""}], {}, "empty text"),
    ([{"id": "a", "text": "  \n"}], {}, "empty text"),
    ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], {}, "duplicate reference id 'a'"),
    ([{"id": "a", "text": "x"}], {"zz": "y"}, "'zz' is not in the references"),
    ([{"id": "a", "text": "x"}], [{"id": "a", "prediction": "p"}, {"id": "a", "prediction": "q"}],
     "duplicate prediction id 'a'"),
    ([{"id": "a"}], {}, "missing 'text'"),
    ([{"id": 1, "text": "x"}], {}, "'id' must be a string"),
    ([{"id": "a", "text": "x", "fields": ["k"]}], {}, "'fields' must be a JSON object"),
    ([{"id": "a", "text": "x"}], [{"id": "a", "prediction": 3}], "'prediction' must be a string"),
    ([], {}, "no references"),
])
def test_api_input_errors(refs, preds, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        score(refs, preds, n_boot=10)


# ---------------------------------------------------------------------------------------------
# corpus statistics and bootstrap


def _random_corpus(n: int, seed: int):
    rng = np.random.default_rng(seed)
    alphabet = list("abc de")
    refs, preds = [], {}
    for i in range(n):
        text = "".join(rng.choice(alphabet, size=rng.integers(1, 30))).strip() or "x"
        hyp = list(text)
        for _ in range(rng.integers(0, 4)):  # a few random edits
            pos = int(rng.integers(0, len(hyp) + 1))
            hyp.insert(pos, str(rng.choice(alphabet)))
        refs.append({"id": f"s{i}", "text": text})
        preds[f"s{i}"] = "".join(hyp) if i % 7 else ""
    return refs, preds


def test_sum_of_per_sample_counts_equals_jiwer_corpus_value():
    refs, preds = _random_corpus(300, seed=1)
    rows = per_sample(refs, preds)
    cols = columns(rows)
    ref_texts = [r["text"].strip() for r in refs]
    hyp_texts = [preds[r["id"]].strip() for r in refs]
    assert float(STATISTICS["cer"](cols)) == pytest.approx(jiwer.cer(ref_texts, hyp_texts), abs=1e-12)
    assert float(STATISTICS["wer"](cols)) == pytest.approx(jiwer.wer(ref_texts, hyp_texts), abs=1e-12)
    # and each per-sample value is jiwer's value for that sample alone
    for row, ref, hyp in list(zip(rows, ref_texts, hyp_texts))[:20]:
        assert row["cer"] == pytest.approx(jiwer.cer(ref, hyp))
        assert row["wer"] == pytest.approx(jiwer.wer(ref, hyp))


def test_bootstrap_ci_is_the_seed0_percentile_interval():
    values = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    low, high = bootstrap_ci(values, lambda v: v.mean(-1), n_boot=1000, seed=0)
    idx = np.random.default_rng(0).integers(0, len(values), size=(1000, len(values)))
    expected = np.percentile(values[idx].mean(-1), [2.5, 97.5])
    assert (low, high) == (pytest.approx(expected[0]), pytest.approx(expected[1]))
    assert low < values.mean() < high


def test_bootstrap_ci_is_deterministic_and_degenerate_for_constant_data():
    refs, preds = _random_corpus(50, seed=2)
    assert score(refs, preds, n_boot=200) == score(refs, preds, n_boot=200)
    assert bootstrap_ci(np.full(7, 0.25), lambda v: v.mean(-1), n_boot=100) == (0.25, 0.25)
    one = score([{"id": "a", "text": "abcd"}], {"a": "abxd"}, n_boot=100)
    assert one["cer_ci"] == [0.25, 0.25]


def test_bootstrap_ci_recomputes_corpus_ratio_not_mean_of_ratios():
    # two samples: 0/1 and 10/10 edits/chars. Corpus CER of {a, b} is 10/11, mean of ratios 0.5.
    cols = {"char_edits": np.array([0.0, 10.0]), "ref_chars": np.array([1.0, 10.0])}
    dist = bootstrap_distribution(cols, STATISTICS["cer"], n_boot=500, seed=0)
    assert set(np.round(dist, 6)) <= {0.0, 1.0, round(10 / 11, 6)}
    assert round(10 / 11, 6) in set(np.round(dist, 6))


def test_bootstrap_is_fast_for_1000_samples_and_1000_resamples():
    refs, preds = _random_corpus(1000, seed=3)
    refs = [dict(r, fields={"k": r["text"][:3]}) for r in refs]
    preds = {k: json.dumps({"k": v[:3]}) for k, v in preds.items()}
    start = time.perf_counter()
    result = score(refs, preds, n_boot=1000, seed=0)
    assert time.perf_counter() - start < 10.0
    for name in ("cer", "wer", "exact_match", "field_f1", "json_valid_rate"):
        low, high = result[f"{name}_ci"]
        assert low <= result[name] <= high


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(np.ones(3), lambda v: v.mean(-1), n_boot=0)
    with pytest.raises(ValueError, match="length"):
        bootstrap_ci({"a": np.ones(3), "b": np.ones(4)}, lambda c: c["a"].mean(-1))


def test_paired_pvalue_identical_systems_is_one():
    cols = {"char_edits": np.array([1.0, 0.0, 3.0, 2.0]), "ref_chars": np.array([4.0, 5.0, 6.0, 7.0])}
    assert paired_bootstrap_pvalue(cols, cols, STATISTICS["cer"], n_boot=200) == 1.0


def test_paired_pvalue_for_a_constant_gap_is_the_minimum():
    # A is always right, B always wrong: every resample gap equals the observed gap -> no resample
    # of the centred null is as extreme -> p = 1 / (1 + n_boot)
    a = np.zeros(20)
    b = np.ones(20)
    p = paired_bootstrap_pvalue(a, b, lambda v: v.mean(-1), n_boot=999, seed=0)
    assert p == pytest.approx(1 / 1000)


def test_paired_pvalue_small_noisy_gap_is_not_significant():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 2, size=200).astype(float)
    b = a.copy()
    b[:2] = 1 - b[:2]  # flip two of 200 samples
    p = paired_bootstrap_pvalue(a, b, lambda v: v.mean(-1), n_boot=1000, seed=0)
    assert 0.05 < p <= 1.0


def test_paired_pvalue_needs_same_samples():
    with pytest.raises(ValueError, match="same samples"):
        paired_bootstrap_pvalue(np.ones(3), np.ones(4), lambda v: v.mean(-1))


def test_higher_is_better_table():
    assert HIGHER_IS_BETTER == {
        "cer": False, "wer": False, "exact_match": True, "field_precision": True,
        "field_recall": True, "field_f1": True, "json_valid_rate": True, "field_anls": True}
    assert set(STATISTICS) == set(HIGHER_IS_BETTER)


# ---------------------------------------------------------------------------------------------
# ANLS, per-field and per-kind scores (hand-computed)


@pytest.mark.parametrize("pred, ref, expected", [
    ("Acme", "Acme", 1.0),
    ("ACME  ltd ", "acme ltd", 1.0),  # DocVQA normalisation: case-folded, whitespace collapsed
    ("abce", "abcd", 0.75),  # 1 edit / 4 chars
    ("abc", "abcd", 0.75),  # 1 deletion / longer length 4
    ("ab", "abcd", 0.0),  # NL = 2/4 = 0.5: at the threshold scores 0
    ("wxyz", "abcd", 0.0),
    (None, "abcd", 0.0),  # missing field
    ("", "", 1.0),
])
def test_anls_follows_the_docvqa_rule(pred, ref, expected):
    assert metrics.anls(pred, ref) == pytest.approx(expected)


def test_per_field_counts_mark_missing_and_extra_keys():
    counts = metrics.per_field_counts({"a": "abce", "z": "1"}, {"a": "abcd", "b": "xy"})
    assert counts == {"a": {"tp": 0, "pred": 1, "ref": 1, "anls": 0.75},
                      "b": {"tp": 0, "pred": 0, "ref": 1, "anls": 0.0},
                      "z": {"tp": 0, "pred": 1, "ref": 0, "anls": 0.0}}


def test_field_anls_is_the_mean_over_reference_fields():
    refs = [{"id": "1", "text": "x", "fields": {"a": "abcd", "b": "xy"}, "kind": "form"},
            {"id": "2", "text": "y", "fields": {"a": "q"}, "kind": "receipt"}]
    preds = {"1": '{"a": "abce"}', "2": "not json at all"}
    rows = per_sample(refs, preds)
    assert rows[0]["field_anls_sum"] == pytest.approx(0.75) and rows[1]["field_anls_sum"] == 0.0
    assert rows[1]["json_valid"] is False
    assert rows[1]["field_scores"] == {"a": {"tp": 0, "pred": 0, "ref": 1, "anls": 0.0}}
    out = score(refs, preds, n_boot=50)
    assert out["field_anls"] == pytest.approx(0.75 / 3)
    by_field = metrics.per_field_scores(rows)
    assert by_field["a"] == {"n": 2, "precision": 0.0, "recall": 0.0, "f1": 0.0, "anls": pytest.approx(0.375)}
    assert by_field["b"]["n"] == 1 and by_field["b"]["anls"] == 0.0
    by_kind = metrics.per_kind_scores(rows)
    assert set(by_kind) == {"form", "receipt"} and by_kind["form"]["n"] == 1
    assert by_kind["form"]["field_anls"] == pytest.approx(0.375) and by_kind["receipt"]["json_valid_rate"] == 0.0


def test_per_field_scores_of_a_perfect_prediction():
    refs = [{"id": "1", "text": "t", "fields": {"total": "12.50", "date": "2020-01-02"}}]
    rows = per_sample(refs, {"1": '{"total":"12.50","date":"2020-01-02"}'})
    assert metrics.per_field_scores(rows) == {
        "date": {"n": 1, "precision": 1.0, "recall": 1.0, "f1": 1.0, "anls": 1.0},
        "total": {"n": 1, "precision": 1.0, "recall": 1.0, "f1": 1.0, "anls": 1.0}}
    assert metrics.per_kind_scores(rows) == {}  # no kinds given


def test_holm_adjusts_step_down_and_keeps_order():
    from harness.results.stats import holm_adjust

    # sorted: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04); monotone; None passes through
    expected = [pytest.approx(0.04), None, pytest.approx(0.03), pytest.approx(0.04)]
    assert holm_adjust([0.04, None, 0.01, 0.02]) == expected
    assert holm_adjust([0.5, 0.6]) == [1.0, 1.0]
    assert holm_adjust([]) == []
