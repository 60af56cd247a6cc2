"""Build the report model from records, and write it as Markdown, LaTeX and HTML with its figures."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.analysis.report.control import control_findings
from harness.analysis.report.figure_inputs import draw_figures, figure_inputs
from harness.analysis.report.gallery import build_gallery, copy_images
from harness.analysis.report.html import render_html
from harness.analysis.report.latex import render_latex
from harness.analysis.report.markdown import render_markdown
from harness.analysis.report.methods import error_line, methods_facts
from harness.analysis.report.model import Report, Table, shown_keys
from harness.analysis.cell_names import record_label
from harness.analysis.report.quality_views import per_field_table, per_kind_table
from harness.analysis.report.releases import release_tables
from harness.analysis.report.tables import cost_table, levers_table, parity_tables, phase_table, quality_table
from harness.results.store import cell_keys, group_cells


def build_report(records: Sequence[Mapping], parity_docs: Sequence[Mapping] = ()) -> Report:
    """Every table, finding and figure input of the report, from records (any status, any mix)."""
    records = sorted(records, key=lambda r: (r.get("started_at") or "", r["run_id"]))
    keys = cell_keys(records)
    groups = group_cells(records, keys)
    shown = shown_keys(records, keys)
    tables: list[Table] = []
    # numbered in this order; the breakdowns come after cost so that records written before they
    # existed keep the numbering they always had
    for make in (quality_table, cost_table, phase_table, per_field_table, per_kind_table):
        table = make(groups, keys, shown, len(tables) + 1)
        if table:
            tables.append(table)
    number = len(tables) + 1
    parity = parity_tables(parity_docs, number)
    if parity:
        tables += parity
        number += 1
    levers = levers_table(records, keys, number)
    if levers:
        tables.append(levers)
    tables += release_tables(records, number + bool(levers))
    failed = [{"run_id": r["run_id"], "cell": record_label(r),
               "status": r["status"], "error": error_line(r.get("error"))}
              for r in records if r["status"] != "ok"]
    facts = methods_facts(records)
    suites = ", ".join(str(s) for s in facts["suites"])
    return Report(title=f"lorabench report: {suites}", tables=tables, methods=facts, failed=failed,
                  status_counts=dict(collections.Counter(r["status"] for r in records)),
                  figure_inputs=figure_inputs(groups, keys, parity_docs),
                  controls=control_findings(groups, keys, shown),
                  gallery=build_gallery(groups, keys, shown))


def write_report(records: Sequence[Mapping], out_dir: str | Path,
                 parity_docs: Sequence[Mapping] = ()) -> dict[str, Path]:
    """Write report.md, tables.tex, report.html and figures/*.png|pdf under `out_dir`.

    Returns {"md", "tex", "html", "figures_dir"} paths. Records of any status are accepted; a
    suite where every run failed still gets a report that says so.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(records, parity_docs)
    figures_dir = out_dir / "figures"
    draw_figures(report, figures_dir)
    copy_images(report.gallery, figures_dir)
    paths = {"md": out_dir / "report.md", "tex": out_dir / "tables.tex", "html": out_dir / "report.html",
             "figures_dir": figures_dir}
    paths["md"].write_text(render_markdown(report), encoding="utf-8")
    paths["tex"].write_text(render_latex(report), encoding="utf-8")
    paths["html"].write_text(render_html(report), encoding="utf-8")
    return paths
