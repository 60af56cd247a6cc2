"""report.html: one self-contained page (inline CSS, images as data URIs, every text escaped) that
fits a 1280-px window: tables scroll inside their own box, long unbroken values are shortened with
the full value in a title attribute, and other long text wraps."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from harness.analysis.report.gallery import Gallery
from harness.analysis.report.markdown import CONTROL_INTRO, GALLERY_INTRO
from harness.analysis.report.methods import methods_blocks, methods_items
from harness.analysis.report.model import TableCell, Report, Table

# Hashes are 64 characters; a run id or a number is well under this.
LONG_TOKEN = 24
_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;
overflow-wrap:anywhere}.table-box{overflow-x:auto;max-width:100%;margin:0.5em 0 1.5em}
table{border-collapse:collapse}th,td{padding:3px 8px;text-align:right;overflow-wrap:normal}
td{white-space:nowrap}th.l,td.l{text-align:left}td.l{white-space:normal}
td.wrap{overflow-wrap:anywhere;min-width:24em}thead tr{border-top:2px solid #000;border-bottom:1px solid #000}
tbody tr:last-child{border-bottom:2px solid #000}caption{caption-side:bottom;text-align:left;font-size:90%;
color:#444;max-width:60em;padding-top:4px}pre{background:#f6f6f6;padding:8px;overflow-x:auto}
img{max-width:100%}figure{margin:1em 0}tr[title]:hover{background:#f0f4ff}
pre.text{white-space:pre-wrap;overflow-wrap:anywhere;margin:2px 0 10px}.who{font-weight:600;font-size:90%}
img.sample{max-height:320px;border:1px solid #ccc}ins{background:#d4f7d4;text-decoration:none}
del{background:#ffd6d6;text-decoration:line-through}.d{font-size:80%;color:#555}"""
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".webp": "image/webp"}


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _short(text: str) -> tuple[str, str | None]:
    """(text to show, full text for a title attribute or None): an unbroken value longer than
    LONG_TOKEN, such as a hash, is cut in the middle; text with spaces wraps instead."""
    if len(text) > LONG_TOKEN and not any(ch.isspace() for ch in text):
        return f"{text[:12]}…{text[-8:]}", text
    return text, None


# A number's spread (" ± 0.01", " [lo, hi]", " (min–max)") goes on a line of its own under the value,
# so that a table of many metric columns fits a 1280-px window without scrolling sideways.
_DETAIL_SEPARATORS = (" ± ", " [", " (")


def _split_detail(text: str) -> tuple[str, str | None]:
    cuts = [text.index(sep) for sep in _DETAIL_SEPARATORS if sep in text]
    if not cuts:
        return text, None
    return text[:min(cuts)], text[min(cuts) + 1:]


def _html_cell(cell: TableCell, left: bool = False) -> str:
    value, detail = (cell.text, None) if left else _split_detail(cell.text)
    shown, full = _short(value)
    text = _h(shown)
    if cell.bold:
        text = f"<strong>{text}</strong>"
    if cell.mark:
        text += f"<sup>{_h(cell.mark)}</sup>"
    if detail:
        text += f'<br><span class="d">{_h(detail)}</span>'
    attrs = (' class="l"' if left else "") + (f' title="{_h(full)}"' if full else "")
    return f"<td{attrs}>{text}</td>"


def _table_html(table: Table) -> list[str]:
    out = [f"<h2>{_h(table.title)}</h2>",
           f'<div class="table-box"><table id="{_h(table.key)}"><caption>{_h(table.caption)}</caption>'
           "<thead><tr>" + "".join(f'<th{" class=l" if i < table.label_cols else ""}>{_h(h)}</th>'
                                   for i, h in enumerate(table.header)) + "</tr></thead><tbody>"]
    for i, row in enumerate(table.rows):
        title = f' title="{_h("runs: " + ", ".join(table.row_runs[i]))}"' if table.row_runs else ""
        out.append(f"<tr{title}>" + "".join(_html_cell(c, j < table.label_cols) for j, c in enumerate(row))
                   + "</tr>")
    out.append("</tbody></table></div>")
    return out


def _data_uri(path: Path) -> str:
    mime = _MIME.get(path.suffix.lower(), "image/png")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def diff_html(ops: list[tuple[str, str]]) -> str:
    return "".join(_h(text) if op == "equal" else f"<del>{_h(text)}</del>" if op == "delete"
                   else f"<ins>{_h(text)}</ins>" for op, text in ops)


def _gallery_html(gallery: Gallery | None) -> list[str]:
    if gallery is None or not gallery.samples:
        return []
    out = ["<h2>Sample gallery</h2>",
           f"<p>{_h(GALLERY_INTRO)} Differences from the reference: <del>struck out</del> is in the "
           "reference but missing from the prediction, <ins>highlighted</ins> is in the prediction "
           "but not in the reference.</p>"]
    if gallery.cells_without_predictions:
        cells = ", ".join(gallery.cells_without_predictions)
        out.append(f"<p>No predictions with references for: {_h(cells)}.</p>")
    for sample in gallery.samples:
        kind = f" ({sample.kind})" if sample.kind else ""
        out.append(f"<section><h3>{_h(f'Sample {sample.id}{kind}')}</h3>")
        if sample.image is not None:
            out.append(f'<img class="sample" alt="{_h("test image " + sample.id)}" '
                       f'src="{_data_uri(sample.image)}">')
        else:
            out.append("<p>(image not available on this machine)</p>")
        out.append(f'<div class="who">Reference</div><pre class="text">{_h(sample.reference)}</pre>')
        for pred in sample.predictions:
            same = " — identical to the reference" if pred.text == sample.reference else ""
            out.append(f'<div class="who">{_h(f"{pred.cell} (seed {pred.seed}){same}")}</div>'
                       f'<pre class="text">{diff_html(pred.diff)}</pre>')
        out.append("</section>")
    return out


def render_html(report: Report) -> str:
    """A self-contained page: inline CSS, figures as base64 PNG, every text escaped."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_h(report.title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{_h(report.title)}</h1>",
           "<p>" + _h(f"{sum(report.status_counts.values())} run records: " +
                      ", ".join(f"{n} {s}" for s, n in sorted(report.status_counts.items())) +
                      ". Hover a table row to see the run ids it aggregates.") + "</p>"]
    for table in report.tables:
        out += _table_html(table)
    if report.controls:
        out += ["<h2>Negative control</h2>", f"<p>{_h(CONTROL_INTRO)}</p><ul>"]
        out += [f"<li><b>{_h(f.headline())}</b>: {_h(f.sentence())}</li>" for f in report.controls]
        out.append("</ul>")
    for fig in report.figures:
        caption = fig["title"] + (f". {fig['caption']}" if fig.get("caption") else "")
        out.append(f'<figure><img alt="{_h(fig["title"])}" src="{_data_uri(Path(fig["png"]))}">'
                   f"<figcaption>{_h(caption)}</figcaption></figure>")
    out += _gallery_html(report.gallery)
    out.append("<h2>Failed runs</h2>")
    if report.failed:
        out.append('<div class="table-box"><table><thead><tr>' +
                   "".join(f'<th class="l">{h}</th>' for h in ("run id", "cell", "status", "error")) +
                   "</tr></thead><tbody>")
        # the error text may be one long unbroken token: it wraps anywhere rather than widen the table
        out += ["<tr>" + "".join(f'<td class="l">{_h(f[k])}</td>' for k in ("run_id", "cell", "status"))
                + f'<td class="l wrap">{_h(f["error"])}</td></tr>' for f in report.failed]
        out.append("</tbody></table></div>")
    else:
        out.append("<p>None: every run finished ok.</p>")
    out.append("<h2>Methods</h2><ul>")
    out += [f"<li><b>{_h(label)}</b>: {_h(text)}</li>"
            for label, text in methods_items(report.methods, report.status_counts)]
    out.append("</ul>")
    out += [f"<p>{_h(caption)}</p><pre>{_h(text)}</pre>" for caption, _, text in methods_blocks(report.methods)]
    out.append("</body></html>")
    return "\n".join(out)
