"""`lorabench regress --format markdown`: a table for CI job summaries, same verdicts and exit codes."""

from __future__ import annotations

import copy

import pytest


from tests import fixtures_records as fx

from harness.analysis.regress import compare_to_baseline, format_markdown  # noqa: E402
from harness.cli import main  # noqa: E402
from harness.results.store import load_records, write_record  # noqa: E402


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("regress-md")
    fx.write_suite(root / "current", frameworks=("peft", "swift"), alignments=("aligned",))
    baseline = root / "baseline.json"
    assert main(["baseline", "update", "--suite", "default", "--from", str(root / "current"),
                 "--to", str(baseline)]) == 0
    return root, baseline


def _worse_cer(records, out_dir):
    for record in records:
        record = copy.deepcopy({k: v for k, v in record.items() if not k.startswith("_")})
        if record["cell"]["framework"] == "peft":
            record["metrics"]["cer"] += 0.5
            record["metrics"]["cer_ci"] = [v + 0.5 for v in record["metrics"]["cer_ci"]]
        write_record(out_dir, record)
    return out_dir


def _table_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split(" | ")]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| cell ")]


def test_no_regression_is_one_line_and_a_collapsed_table(suite, capsys):
    root, baseline = suite
    assert main(["regress", "--baseline", str(baseline), "--current", str(root / "current"),
                 "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("### lorabench regress: no regression (") and "same)" in lines[0]
    assert "Every metric is within its threshold or the noise." in out
    assert "<details><summary>all " in out and out.rstrip().endswith("</details>")
    rows = _table_rows(out)
    assert rows and all(len(r) == 8 and r[-1] == "same" for r in rows)
    assert lines[lines.index("| cell | metric | baseline | current | ratio | noise | threshold | verdict |") + 1] \
        == "|---|---|---:|---:|---:|---:|---:|---|"


def test_a_regression_leads_the_summary_in_bold_and_exits_1(suite, capsys, tmp_path):
    root, baseline = suite
    current = _worse_cer(load_records(root / "current"), tmp_path / "worse")
    assert main(["regress", "--baseline", str(baseline), "--current", str(current),
                 "--format", "markdown"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("### lorabench regress: REGRESSED (")
    changed = _table_rows(out.split("<details>")[0])
    assert changed == [[changed[0][0], "cer", *changed[0][2:7], "**WORSE**"]]
    assert changed[0][0] == "peft · aligned"


def test_pipes_in_labels_and_warnings_are_escaped():
    result = {"regressed": True, "warnings": ["packages.torch: 2.14 | 2.15"], "rows": [
        {"cell": {}, "cell_label": "a|b", "metric": None, "baseline": None, "current": None, "ratio": None,
         "delta": None, "threshold": None, "noise": None, "n_baseline": 1, "n_current": 0,
         "verdict": "missing", "note": "no ok run in the current results (failed)"}]}
    text = format_markdown(result)
    assert "| a\\|b | (cell) | - | - | - | - | - | **MISSING** (no ok run in the current results (failed)) |" in text
    assert "- packages.torch: 2.14 \\| 2.15" in text


def test_markdown_matches_the_comparison(suite):
    root, baseline = suite
    result = compare_to_baseline(load_records(baseline), load_records(root / "current"))
    rows = _table_rows(format_markdown(result).split("<details>")[1])
    assert [(r[0], r[1], r[-1]) for r in rows] == \
        [(r["cell_label"], r["metric"] or "(cell)", r["verdict"]) for r in result["rows"]]


def test_json_flag_still_works(suite, capsys):
    root, baseline = suite
    assert main(["regress", "--baseline", str(baseline), "--current", str(root / "current"), "--json"]) == 0
    assert capsys.readouterr().out.lstrip().startswith("{")
