"""Paper-style report from run records: report.md, tables.tex (booktabs), report.html, figures/.

Flow: `build_report(records, parity_docs)` (build.py) computes every table as data (`Table` of
`TableCell`s, with the run ids behind each row), the negative-control findings, the sample gallery, the
figure inputs and the methods facts; `write_report` draws the figures and renders the same data
three ways (markdown.py, latex.py, html.py), so the Markdown, LaTeX and HTML can never disagree.

Statistics (stated again in each caption; docs/report.md explains them):
- Quality: mean over seeds ± the 95 % t-interval half-width when a cell has >= 2 ok seeds; with one
  seed, the record's bootstrap-over-samples 95 % interval `[lo, hi]`, marked †.
- Best value per column in bold (direction from the metric table).
- `*`: the cell differs from the best cell at p < 0.05 after Holm's correction over all the
  comparisons the table makes; paired bootstrap over test samples, each cell's per-sample counts
  averaged over its seeds per sample id and paired by id (significance.py). Needs the per-sample
  files; without them no marks, and the caption says so.
- Negative control: a cell with a `control` key is compared with its reference cell on field F1 by
  the same test, Holm-corrected over the controls (control.py).
- Cost: median over ok seeds with the (min–max) range over seeds.
Failed runs are counted in every row ("2/3" ok), listed with their error line, and never dropped.
"""

from harness.analysis.report.build import build_report, write_report
from harness.analysis.report.html import render_html
from harness.analysis.report.latex import render_latex
from harness.analysis.report.markdown import render_markdown
from harness.analysis.report.methods import error_line, methods_facts
from harness.analysis.report.model import TableCell, Report, Table
from harness.analysis.report.significance import paired_pvalue, pooled_sample_columns
from harness.results.stats import mean_t_interval

__all__ = ["TableCell", "Report", "Table", "build_report", "error_line", "mean_t_interval", "methods_facts",
           "paired_pvalue", "pooled_sample_columns", "render_html", "render_latex", "render_markdown",
           "write_report"]
