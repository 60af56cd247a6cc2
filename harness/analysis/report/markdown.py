"""report.md: tables with run-id footnotes, the negative control, figures, gallery, failures, methods."""

from __future__ import annotations

import html
import re
from typing import Any

from harness.analysis.report.methods import methods_blocks, methods_items
from harness.analysis.report.model import TableCell, Report, Table

CONTROL_INTRO = ("A negative control is a cell run with a deliberately harmful setting, equal to an "
                 "ordinary cell otherwise; a benchmark that can tell cells apart finds it worse.")
GALLERY_INTRO = ("Test samples chosen without looking at any prediction (the ids every cell predicted, "
                 "ordered by a hash of the id), the same for every cell; each cell shows its first ok "
                 "seed.")
DIFF_CONVENTION = ("Differences from the reference: `[-x-]` is in the reference but missing from the "
                   "prediction, `{+x+}` is in the prediction but not in the reference.")


def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell: no raw HTML, no column breaks, one line."""
    s = html.escape(str(text), quote=False).replace("|", "\\|")
    return " ".join(s.split())


def _md_cell(cell: TableCell) -> str:
    text = _md(cell.text)
    if cell.bold:
        text = f"**{text}**"
    mark = cell.mark.replace("*", "\\*")
    return text + mark


def _fenced(text: str) -> list[str]:
    """A code block that holds `text` verbatim, whatever backticks it contains."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}text", text, fence]


def marked_diff(ops: list[tuple[str, str]]) -> str:
    """The prediction with its differences from the reference as [-deleted-] and {+inserted+}."""
    return "".join(text if op == "equal" else f"[-{text}-]" if op == "delete" else f"{{+{text}+}}"
                   for op, text in ops)


def _table_md(table: Table, footnotes: list[str]) -> list[str]:
    traceable = bool(table.row_runs)
    out = [f"## {_md(table.title)}", "", _md(table.caption), ""]
    runs_head = " runs |" if traceable else ""
    out.append("| " + " | ".join(_md(h) for h in table.header) + " |" + runs_head)
    out.append("|" + "---|" * (len(table.header) + traceable))
    for i, row in enumerate(table.rows):
        line = "| " + " | ".join(_md_cell(c) for c in row) + " |"
        if traceable:
            note = f"{table.key}-{i + 1}"
            line += f" [^{note}] |"
            footnotes.append(f"[^{note}]: {_md(table.title.split('.')[0])}, {_md(table.row_labels[i])}: "
                             + ", ".join(_md(r) for r in table.row_runs[i]))
        out.append(line)
    return out + [""]


def _controls_md(report: Report) -> list[str]:
    if not report.controls:
        return []
    out = ["## Negative control", "", CONTROL_INTRO, ""]
    out += [f"- **{finding.headline()}**: {_md(finding.sentence())}" for finding in report.controls]
    return out + [""]


def _gallery_md(report: Report, figures_rel: str) -> list[str]:
    gallery = report.gallery
    if gallery is None or not gallery.samples:
        return []
    out = ["## Sample gallery", "", GALLERY_INTRO + " " + DIFF_CONVENTION, ""]
    if gallery.cells_without_predictions:
        out += ["No predictions with references for: " +
                ", ".join(_md(c) for c in gallery.cells_without_predictions) + ".", ""]
    for sample in gallery.samples:
        kind = f" ({_md(sample.kind)})" if sample.kind else ""
        out += [f"### Sample {_md(sample.id)}{kind}", ""]
        if sample.figure_name:
            out += [f"![test image {_md(sample.id)}]({figures_rel}/{sample.figure_name})", ""]
        else:
            out += ["(image not available on this machine)", ""]
        out += ["Reference:", "", *_fenced(sample.reference), ""]
        for pred in sample.predictions:
            same = " — identical to the reference" if pred.text == sample.reference else ""
            out += [f"**{_md(pred.cell)}** (seed {_md(pred.seed)}){same}:", "",
                    *_fenced(marked_diff(pred.diff)), ""]
    return out


def _methods_md(facts: dict, counts: dict[str, int]) -> list[str]:
    out = ["## Methods", ""]
    out += [f"- **{label}**: {_md(text)}" for label, text in methods_items(facts, counts)]
    for caption, lang, text in methods_blocks(facts):
        out += ["", caption, "", f"```{lang}", text, "```"]
    return out + [""]


def render_markdown(report: Report, figures_rel: str = "figures") -> str:
    out = [f"# {_md(report.title)}", ""]
    total = sum(report.status_counts.values())
    out.append(f"Generated from {total} run records: " +
               ", ".join(f"{n} {s}" for s, n in sorted(report.status_counts.items())) +
               ". Every table row links (footnote) to the run ids it aggregates.")
    if any(not t.row_runs for t in report.tables):
        out[-1] += " In the per-field and per-kind tables the columns are the cells (same runs as Table 1)."
    out.append("")
    footnotes: list[str] = []
    for table in report.tables:
        out += _table_md(table, footnotes)
    out += _controls_md(report)
    for fig in report.figures:
        out += [f"### Figure: {_md(fig['title'])}", "",
                f"![{_md(fig['title'])}]({figures_rel}/{fig['png'].name})", ""]
        if fig.get("caption"):
            out += [_md(fig["caption"]), ""]
    out += _gallery_md(report, figures_rel)
    out += ["## Failed runs", ""]
    if report.failed:
        out += ["Not ok runs are counted in the 'ok runs' columns and left out of every mean. The "
                "error line is the first line of the error, or the exception of a traceback.", "",
                "| run id | cell | status | error |", "|---|---|---|---|"]
        out += [f"| {_md(f['run_id'])} | {_md(f['cell'])} | {_md(f['status'])} | {_md(f['error'])} |"
                for f in report.failed]
    else:
        out.append("None: every run finished ok.")
    out.append("")
    out += _methods_md(report.methods, report.status_counts)
    out += ["## Run ids per table row", ""] + footnotes + [""]
    return "\n".join(out)
