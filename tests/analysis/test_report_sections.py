"""Report sections built from the newer record keys: per-field and per-kind tables, the negative
control, the sample gallery, Holm-corrected marks, step curves, and an HTML page that fits 1280 px."""

from __future__ import annotations

import hashlib
import json
import re
import statistics

import pytest


from tests import fixtures_records as fx

from harness.analysis import report as rep  # noqa: E402
from harness.analysis.report import significance  # noqa: E402
from harness.analysis.report.gallery import char_diff  # noqa: E402
from harness.analysis.report.markdown import marked_diff  # noqa: E402
from harness.results.store import load_records  # noqa: E402

CONTROL = "lr / 20"
OTHER_KEYS = "keys not in the references (distinct names)"
HASH = "f" * 8 + "0123456789abcdef" * 3 + "e" * 8  # 64 characters, like a checksum
PARITY_LONG = {
    "settings_diff": [
        {"setting": "model.checksum", "values": {"peft": HASH, "swift": HASH.upper()}, "differs": True},
        {"setting": "lora.target_modules",
         "values": {"peft": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                    "swift": "all-linear"}, "differs": True}],
    "max_abs_dloss": 0.1, "first_divergent_step": 3,
}


def _write_detailed_suite(root, control_field_hit: float | None = 0.3):
    """peft and swift, aligned, seeds 0 and 1, with the newer keys; plus a peft control cell."""
    fx.write_suite(root, frameworks=("peft", "swift"), alignments=("aligned",), seeds=(0, 1), detail=True)
    if control_field_hit is not None:
        for seed in (0, 1):
            record, rows = fx.make_record("peft", "aligned", seed, extra_cell={"control": CONTROL},
                                          field_hit=control_field_hit, detail=True)
            fx.write_run(root, record, rows)
    return load_records(root)


def _cell(record) -> tuple:
    return record["cell"]["framework"], record["cell"].get("control")


@pytest.fixture(scope="module")
def detailed(tmp_path_factory):
    root = tmp_path_factory.mktemp("detailed")
    records = _write_detailed_suite(root / "results")
    (root / "results" / "parity.json").write_text(json.dumps(PARITY_LONG))
    out = root / "out"
    paths = rep.write_report(records, out, [PARITY_LONG])
    return {"records": records, "out": out, "md": paths["md"].read_text(),
            "html": paths["html"].read_text(), "tex": paths["tex"].read_text()}


def _section(md: str, heading: str) -> str:
    return md.split(heading, 1)[1].split("\n## ", 1)[0]


def _md_table(section: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")]


def test_per_field_table_is_the_mean_over_seeds(detailed):
    rows = _md_table(_section(detailed["md"], "Quality per field"))
    header, body = rows[0], {r[0]: r for r in rows[1:]}
    assert header == ["field", "n", "peft · aligned", "peft · aligned · control: lr ÷ 20", "swift · aligned"]
    assert sorted(body) == sorted([*fx.FIELD_NAMES, OTHER_KEYS])
    assert body[OTHER_KEYS][2:] == ["0", "0", "0"]  # no invented keys in the fixtures
    peft = [r for r in detailed["records"] if _cell(r) == ("peft", None)]
    f1 = statistics.fmean(r["eval"]["per_field"]["total"]["f1"] for r in peft)
    anls = statistics.fmean(r["eval"]["per_field"]["total"]["anls"] for r in peft)
    assert body["total"][1] == "40"
    assert body["total"][2].strip("*") == f"{f1:.4f} / {anls:.4f}"


def test_invented_keys_are_one_row_not_hundreds(tmp_path):
    """Keys no reference has (a half-trained model's "aieac") are counted in the last row; a row of
    the schema where every cell ties carries no bold."""
    records = _write_detailed_suite(tmp_path / "results", control_field_hit=None)
    invented = {"n": 0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "anls": 0.0}
    for r in records:
        if r["cell"]["framework"] == "swift":  # seed 0 invents 3 names, seed 1 invents 2
            names = ("aieac", "Sexires", "Totl") if r["cell"]["seed"] == 0 else ("aieac", "Totl")
            r["eval"]["per_field"].update({name: dict(invented) for name in names})
        r["eval"]["per_field"]["vendor"]["f1"] = 0.5  # the same in every cell: a tie
    md = rep.write_report(records, tmp_path / "out", [])["md"].read_text()
    rows = _md_table(_section(md, "Quality per field"))
    body = {r[0]: r for r in rows[1:]}
    assert sorted(body) == sorted([*fx.FIELD_NAMES, OTHER_KEYS])
    assert body[OTHER_KEYS][1:] == ["0", "0", "2.5"]  # peft none; swift 3 and 2, mean 2.5
    assert "**" not in body["vendor"][2] + body["vendor"][3]


def test_per_kind_table_shows_f1_and_cer(detailed):
    rows = _md_table(_section(detailed["md"], "Quality per document kind"))
    body = {r[0]: r for r in rows[1:]}
    assert sorted(body) == sorted(fx.KINDS)
    swift = [r for r in detailed["records"] if _cell(r) == ("swift", None)]
    f1 = statistics.fmean(r["eval"]["per_kind"]["invoice"]["field_f1"] for r in swift)
    cer = statistics.fmean(r["eval"]["per_kind"]["invoice"]["cer"] for r in swift)
    assert body["invoice"][1] == "14"  # ids 0..39, every third starting at 0
    assert body["invoice"][4].strip("*") == f"{f1:.4f} / {cer:.4f}"


def test_control_detected_with_the_paired_test(detailed):
    section = _section(detailed["md"], "## Negative control")
    assert "- **Detected**: control peft · aligned · control: lr ÷ 20 against peft · aligned: field F1" in section
    control = [r for r in detailed["records"] if _cell(r) == ("peft", CONTROL)]
    reference = [r for r in detailed["records"] if _cell(r) == ("peft", None)]
    # field F1 and CER are both tested, Holm-corrected together; the detection on F1 is reported
    from harness.results.stats import holm_adjust

    pooled = rep.pooled_sample_columns(control), rep.pooled_sample_columns(reference)
    p_f1, p_cer = (rep.paired_pvalue(*pooled, metric) for metric in ("field_f1", "cer"))
    assert f"p = {holm_adjust([p_f1, p_cer])[0]:.4f} after Holm's correction over 2 control tests" in section
    assert "40 test samples, 2 seeds of the control and 2 of the reference, 20 steps" in section
    assert "% Negative control. Detected:" in detailed["tex"]


def test_control_not_detected_says_the_benchmark_lacks_power(tmp_path):
    # the control's samples equal its reference's: no difference to find
    records = _write_detailed_suite(tmp_path / "r", control_field_hit=fx.PROFILES["peft", "aligned"]["field_hit"])
    md = rep.render_markdown(rep.build_report(records))
    section = _section(md, "## Negative control")
    assert "- **Not detected**:" in section and "(Δ +0.0000), p = 1.0000" in section
    assert ("At this size (40 test samples, 2 seeds of the control and 2 of the reference, 20 steps) "
            "the benchmark lacks the power to tell cells apart") in section


def test_control_without_reference_is_not_tested(tmp_path):
    for seed in (0, 1):
        record, rows = fx.make_record("swift", "aligned", seed, extra_cell={"control": CONTROL}, detail=True)
        fx.write_run(tmp_path, record, rows)
    record, rows = fx.make_record("peft", "aligned", 0, detail=True)
    fx.write_run(tmp_path, record, rows)
    report = rep.build_report(load_records(tmp_path))
    (finding,) = report.controls
    assert finding.verdict == "untestable" and "no ok run of an ordinary cell" in finding.sentence()


def test_records_without_the_new_keys_skip_the_new_sections(tmp_path):
    fx.write_suite(tmp_path, frameworks=("peft", "swift"), alignments=("aligned",), seeds=(0,))
    report = rep.build_report(load_records(tmp_path))
    assert [t.key for t in report.tables] == ["quality", "cost"]
    assert report.controls == [] and report.gallery is None
    md = rep.render_markdown(report)
    assert "Negative control" not in md and "Sample gallery" not in md


def test_gallery_same_samples_for_every_cell(detailed):
    md = detailed["md"]
    gallery = _section(md, "## Sample gallery")
    ids = re.findall(r"^### Sample (doc-\d{4}) \((\w+)\)$", gallery, flags=re.M)
    all_ids = [f"doc-{i:04d}" for i in range(40)]
    expected = sorted(all_ids, key=lambda s: hashlib.sha256(s.encode()).hexdigest())[:4]
    assert [i for i, _ in ids] == expected
    assert all(kind == fx.sample_kind(int(i[4:])) for i, kind in ids)
    for sample_id in expected:
        assert f"![test image {sample_id}](figures/sample-{sample_id}.png)" in gallery
        assert (detailed["out"] / "figures" / f"sample-{sample_id}.png").read_bytes()[:4] == b"\x89PNG"
    # every cell once per sample, from its seed 0
    assert gallery.count("**peft · aligned** (seed 0)") == 4
    assert gallery.count("**peft · aligned · control: lr ÷ 20** (seed 0)") == 4


def test_gallery_marks_the_changed_characters(detailed):
    first = sorted((f"doc-{i:04d}" for i in range(40)), key=lambda s: hashlib.sha256(s.encode()).hexdigest())[0]
    index = int(first[4:])
    control = next(r for r in detailed["records"] if _cell(r) == ("peft", CONTROL) and r["cell"]["seed"] == 0)
    rows = fx.make_per_sample("peft", "aligned", 0, field_hit=0.3, detail=True)
    row = rows[index]
    assert row["json_valid"]  # a whole answer, so the only edits are the missed fields
    expected = fx.reference_text(index)
    for name, score in row["field_scores"].items():  # a missed field: its first character replaced
        if not score["tp"]:
            value = fx.reference_fields(index)[name]
            expected = expected.replace(f'"{value}"', f'"[-{value[0]}-]{{+X+}}{value[1:]}"')
    block = detailed["md"].split(f"### Sample {first}", 1)[1].split(
        "**peft · aligned · control: lr ÷ 20** (seed 0)", 1)[1]
    assert block.split("```text\n", 1)[1].split("\n```", 1)[0] == expected
    assert control["eval"]["per_field"]  # the control really is a detail record


def test_char_diff_by_hand():
    ops = char_diff("total 41.50", "total 47.5")
    assert ops == [("equal", "total 4"), ("delete", "1"), ("insert", "7"), ("equal", ".5"), ("delete", "0")]
    assert marked_diff(ops) == "total 4[-1-]{+7+}.5[-0-]"
    assert marked_diff(char_diff("same", "same")) == "same"


def test_html_gallery_embeds_images_and_marks_edits(detailed):
    page = detailed["html"]
    images = re.findall(r'<img class="sample" alt="test image (doc-\d{4})" src="data:image/png;base64,', page)
    assert len(images) == 4
    assert "&quot;<del>V</del><ins>X</ins>endor" in page  # quotes escaped, edits marked
    assert "src=\"figures/" not in page


def test_html_shortens_long_values_and_boxes_tables(detailed):
    page = detailed["html"]
    assert f'<td class="l" title="{HASH}">{HASH[:12]}…{HASH[-8:]}</td>' in page
    assert page.count('<div class="table-box"><table') == len(re.findall(r"<h2>Table ", page))


def test_holm_correction_removes_marks_that_raw_p_would_give(tmp_path, monkeypatch):
    fx.write_suite(tmp_path, frameworks=("peft", "swift"), alignments=("aligned", "native"), seeds=(0,))
    records = load_records(tmp_path)
    monkeypatch.setattr(significance, "paired_pvalue", lambda a, b, metric, n_boot=1000: 0.04)
    quality = rep.build_report(records).tables[0]
    marks = [c.mark for row in quality.rows for c in row]
    # every comparison has p = 0.04 < 0.05, but m of them at once: Holm gives min(1, m * 0.04)
    assert not any("*" in m for m in marks)
    comparisons = int(re.search(r"all (\d+) comparisons", quality.caption).group(1))
    # 4 cells: each metric column without a tie for best compares the 3 others with the best
    assert comparisons > 1 and comparisons % 3 == 0
    monkeypatch.setattr(significance, "paired_pvalue", lambda a, b, metric, n_boot=1000: 0.001)
    quality = rep.build_report(records).tables[0]
    assert sum("*" in c.mark for row in quality.rows for c in row) == comparisons  # m * 0.001 < 0.05


def test_resamples_grow_with_the_family():
    assert significance.resamples_for(1) == 1000
    assert significance.resamples_for(100) == 4000  # smallest Holm p: 100 / 4001 < 0.05


def test_step_curves_carry_lr_and_grad_norm(detailed):
    report = rep.build_report(detailed["records"])
    title, _, kwargs, _ = report.figure_inputs["loss_curves"]
    assert title == "Training loss, learning rate and gradient norm per cell"
    peft = [r for r in detailed["records"] if _cell(r) == ("peft", None)]
    lr = next(s for s in kwargs["lr_series"] if s["label"] == "peft · aligned")
    grad = next(s for s in kwargs["grad_norm_series"] if s["label"] == "peft · aligned")
    assert lr["mean"] == [pytest.approx(1e-4)] * 20
    assert grad["mean"][0] == pytest.approx(statistics.fmean(r["train"]["steps"][0]["grad_norm"] for r in peft))
    assert grad["lo"][0] == min(r["train"]["steps"][0]["grad_norm"] for r in peft)
