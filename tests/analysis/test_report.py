"""`lorabench report`: files written, numbers traceable to records, HTML escaped and self-contained."""

from __future__ import annotations

import base64
import html.parser
import json
import math
import re
import statistics

import pytest


from tests import fixtures_records as fx

from harness.analysis import report as rep  # noqa: E402
from harness.cli import main  # noqa: E402
from harness.analysis.figures import pareto_frontier  # noqa: E402
from harness.results.store import load_records  # noqa: E402

INJECTED = "RuntimeError: CUDA out of memory <script>alert('x')</script>"
PARITY = {
    "settings_diff": [{"setting": "lora.alpha", "values": {"peft": 8, "swift": 32}, "differs": True},
                      {"setting": "lora.r", "values": {"peft": 8, "swift": 8}, "differs": False}],
    "ablation": [{"factor": "optimizer.beta2", "max_abs_dloss": 0.004, "final_loss_gap": 0.001},
                 {"factor": "lora.alpha", "max_abs_dloss": 0.31, "final_loss_gap": 0.12},
                 {"factor": "lr", "max_abs_dloss": 0.05, "final_loss_gap": -0.02}],
    "max_abs_dloss": 0.31, "first_divergent_step": 1,
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    results_dir = root / "results"
    failed = {("swift", "native", 2): "Traceback (most recent call last):\n  File \"w.py\", line 1\n"
              + INJECTED}
    fx.write_suite(results_dir, failed=failed)
    (results_dir / "parity.json").write_text(json.dumps(PARITY))
    out = root / "out"
    assert main(["report", str(results_dir), "--out", str(out)]) == 0
    return {"results": results_dir, "out": out, "records": load_records(results_dir),
            "md": (out / "report.md").read_text(), "html": (out / "report.html").read_text(),
            "tex": (out / "tables.tex").read_text()}


def _table_rows(md: str, title_prefix: str) -> dict[str, list[str]]:
    """Rows of the Markdown table under the heading starting with `title_prefix`, by 'fw/align'."""
    section = md.split(f"## {title_prefix}", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and not line.startswith("|---") and cells[0] not in ("framework",):
            rows[f"{cells[0]}/{cells[1]}"] = cells
    return rows


def _number_pair(text: str) -> tuple[float, float]:
    m = re.search(r"([0-9.]+) ± ([0-9.]+)", text)
    return float(m.group(1)), float(m.group(2))


def test_writes_every_file(rendered):
    out = rendered["out"]
    for name in ("report.md", "tables.tex", "report.html"):
        assert (out / name).stat().st_size > 0
    for fig in ("loss_curves", "pareto", "throughput", "ablation"):
        assert (out / "figures" / f"{fig}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / "figures" / f"{fig}.pdf").read_bytes()[:5] == b"%PDF-"


def test_quality_numbers_match_the_records(rendered):
    rows = _table_rows(rendered["md"], "Table 1")
    recs = [r for r in rendered["records"] if r["cell"]["framework"] == "peft"
            and r["cell"]["alignment"] == "aligned"]
    cer = [r["metrics"]["cer"] for r in recs]
    mean = statistics.fmean(cer)
    half = 4.303 * statistics.stdev(cer) / math.sqrt(3)  # t_{0.975, 2}
    shown_mean, shown_half = _number_pair(rows["peft/aligned"][3])
    assert shown_mean == pytest.approx(mean, abs=5e-5)
    assert shown_half == pytest.approx(half, abs=5e-5)
    assert rows["peft/aligned"][2] == "3/3"
    assert rows["swift/native"][2] == "2/3"  # the failed seed is counted, not dropped


def test_best_value_is_bold_in_its_direction(rendered):
    rows = _table_rows(rendered["md"], "Table 1")
    cer_means = {cell: _number_pair(r[3])[0] for cell, r in rows.items()}
    f1_means = {cell: _number_pair(r[5])[0] for cell, r in rows.items()}
    best_cer = min(cer_means, key=cer_means.get)
    best_f1 = max(f1_means, key=f1_means.get)
    assert rows[best_cer][3].startswith("**")
    assert rows[best_f1][5].startswith("**")
    assert sum(r[3].startswith("**") for r in rows.values()) == 1


def test_cost_numbers_are_median_and_range(rendered):
    rows = _table_rows(rendered["md"], "Table 2")
    recs = [r for r in rendered["records"] if r["cell"]["framework"] == "torch"
            and r["cell"]["alignment"] == "native"]
    above = [r["metrics"]["peak_rss_above_baseline_mib"] for r in recs]
    assert rows["torch/native"][3].strip("*") == (
        f"{statistics.median(above):.0f} ({min(above):.0f}–{max(above):.0f})")
    rss = [r["metrics"]["peak_rss_mib"] for r in recs]
    assert rows["torch/native"][4].strip("*") == (
        f"{statistics.median(rss):.0f} ({min(rss):.0f}–{max(rss):.0f})")


def test_significance_marks_and_caption(rendered):
    md = rendered["md"]
    assert "paired bootstrap" in md and "p &lt; 0.05" in md
    assert "after Holm's correction for all " in md  # the marks are corrected for many comparisons
    rows = _table_rows(md, "Table 1")
    # peft/native reads much worse than the best cell (swift/native) in the fixture profiles
    assert rows["peft/native"][3].endswith("\\*")


def test_every_run_id_is_traceable_and_failed_run_listed(rendered):
    md = rendered["md"]
    for record in rendered["records"]:
        assert record["run_id"] in md
    failed_section = md.split("## Failed runs", 1)[1].split("\n## ", 1)[0]
    # the summary line of a traceback is its exception, and raw HTML never reaches the Markdown
    assert "RuntimeError: CUDA out of memory &lt;script&gt;" in failed_section
    assert "<script>" not in md
    assert "[^quality-1]: Table 1, peft · aligned:" in md


def test_parity_tables_sorted_largest_first(rendered):
    md = rendered["md"]
    assert "## Table 3a. Effective settings" in md and "## Table 3b. Ablation" in md
    ablation = md.split("## Table 3b", 1)[1].split("\n## ", 1)[0]
    order = [f for f in ("lora.alpha", "lr", "optimizer.beta2") if f in ablation]
    assert order == ["lora.alpha", "lr", "optimizer.beta2"]
    assert ablation.index("lora.alpha") < ablation.index("| lr ") < ablation.index("optimizer.beta2")


def test_methods_section(rendered):
    methods = rendered["md"].split("## Methods", 1)[1]
    assert "lorabench-tiny-qwen2vl (checksum 9f00ba11)" in methods
    assert "synthdocs (checksum d5e7a1c0)" in methods
    assert "torch 2.14.1" in methods and "Seeds**: 0, 1, 2" in methods
    assert "lora.r: 8" in methods  # constant spec key
    assert "lora.alpha:\n- 8\n- 16\n- 32" in methods  # varying spec key with its values
    assert "lorabench run suites/default.yaml" in methods
    assert "1 failed, 17 ok" in methods


class _Collector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.titles = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "tr" and "title" in attrs:
            self.titles.append(attrs["title"])


def test_html_is_self_contained_and_escaped(rendered):
    page = rendered["html"]
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert "script" not in parser.tags  # the injected error did not become a tag
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert len(parser.images) == 4
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    assert "src=\"figures/" not in page and "http" not in page  # nothing to fetch
    assert any(rendered["records"][0]["run_id"] in t for t in parser.titles)


def test_latex_is_booktabs(rendered):
    tex = rendered["tex"]
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") >= 4
    assert r"\textbf{" in tex and r"$\pm$" in tex and "<script>" not in tex
    assert r"\label{tab:quality}" in tex


def test_one_seed_shows_bootstrap_interval(tmp_path):
    fx.write_suite(tmp_path / "r", frameworks=("peft", "swift"), alignments=("aligned",), seeds=(0,))
    records = load_records(tmp_path / "r")
    md = rep.render_markdown(rep.build_report(records))
    peft = next(r for r in records if r["cell"]["framework"] == "peft")
    lo, hi = peft["metrics"]["cer_ci"]
    row = next(line for line in md.splitlines() if line.startswith("| peft | aligned |"))
    cer_cell = row.split("|")[4].strip()
    assert cer_cell.strip("*†") == f"{peft['metrics']['cer']:.4f} [{lo:.4f}, {hi:.4f}]"
    assert cer_cell.endswith("†")
    assert "only one ok seed" in md


def test_all_runs_failed_still_reports(tmp_path):
    fx.write_suite(tmp_path / "r", frameworks=("peft",), alignments=("aligned",), seeds=(0, 1),
                   failed={("peft", "aligned", 0): "OOM", ("peft", "aligned", 1): "OOM"})
    assert main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "2 failed" in md
    assert "| peft | aligned | 0/2 | failed | failed |" in md  # Table 1, every metric failed
    failed_section = md.split("## Failed runs", 1)[1].split("\n## ", 1)[0]
    assert failed_section.count("| OOM |") == 2


def test_report_of_nothing_is_a_user_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no run records" in capsys.readouterr().err


def test_memory_levers_table(tmp_path):
    rows = []
    for lever, rss in (("baseline", 2000.0), ("zero3+offload", 800.0)):
        for seed in (0, 1):
            record, per_sample = fx.make_record("peft", "aligned", seed, extra_cell={"lever": lever},
                                                rss_mib=rss)
            fx.write_run(tmp_path, record, per_sample)
            rows.append(record)
    report = rep.build_report(load_records(tmp_path))
    table = next(t for t in report.tables if t.key == "levers")
    med = {lv: statistics.median(r["metrics"]["peak_rss_above_baseline_mib"] for r in rows if r["cell"]["lever"] == lv)
           for lv in ("baseline", "zero3+offload")}
    zero3 = next(r for r in table.rows if r[table.header.index("lever")].text == "zero3+offload")
    assert zero3[table.header.index("memory ratio")].text == f"{med['zero3+offload'] / med['baseline']:.2f}×"


def test_parity_from_a_record_key(tmp_path):
    record, per_sample = fx.make_record()
    record["parity"] = PARITY
    fx.write_run(tmp_path, record, per_sample)
    from harness.results.store import load_parity_docs
    docs = load_parity_docs(tmp_path, load_records(tmp_path))
    assert len(docs) == 1 and docs[0]["_label"] == record["run_id"]
    report = rep.build_report(load_records(tmp_path), docs)
    assert [t.key for t in report.tables] == ["quality", "cost", "parity1", "ablation1"]


def test_small_statistics_by_hand():
    mean, half = rep.mean_t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3))
    assert rep.mean_t_interval([5.0]) == (5.0, None)
    assert pareto_frontier([(1, 0.5), (2, 0.7), (3, 0.6), (0.5, 0.2)]) == [3, 0, 1]
    assert rep.error_line("Traceback (most recent call last):\n  File x\nValueError: bad") == "ValueError: bad"
    assert rep.error_line("worker timed out after 600 s\nmore") == "worker timed out after 600 s"


def test_paired_pvalue_identical_and_different():
    rows = fx.make_per_sample("peft", "aligned", 0)
    same = {r["id"]: {k: float(v) for k, v in r.items() if k != "id"} for r in rows}
    assert rep.paired_pvalue(same, same, "cer") == 1.0
    worse = {sid: {**cols, "char_edits": cols["char_edits"] + 10} for sid, cols in same.items()}
    assert rep.paired_pvalue(same, worse, "cer") < 0.01


def test_damaged_inputs_cost_detail_not_the_report(tmp_path):
    """A broken per-sample file, a record without step log, a list-valued cell key: still a report."""
    for seed in (0, 1):
        record, rows = fx.make_record("peft", "aligned", seed, extra_cell={"targets": ["q", "v"]})
        fx.write_run(tmp_path / "r", record, rows)
    other, rows = fx.make_record("swift", "aligned", 0, extra_cell={"targets": ["all"]})
    del other["train"]["steps"]
    path = fx.write_run(tmp_path / "r", other, rows)
    (path.parent / other["per_sample_file"]).write_text('{"id": "doc-0000", "cer": \n')
    assert main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert 'No per-sample file (so no significance test) for: swift · aligned · targets ["all"].' in md
    assert '| peft | aligned | ["q", "v"] | 2/2 |' in md
