"""What a reader needs from a figure, checked on the matplotlib objects (the figure test's checker).

A line that draws a cell carries the gid `cell:<name>` (harness.analysis.figure_style); the checker
finds every such line and asks: is the cell named (legend entry, tick label, axes title or a text in
the axes); do two cells in one axes look alike (colour, line style and marker: the marker is part of
a line's style); does any text run off the figure; does any text show the internal key form
(`peft/aligned/-/-`).
"""

from __future__ import annotations

import re

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.text import Text

from harness.analysis.figure_style import CELL_GID

# framework/alignment/... with at least two slashes, or a "-" standing for an unset key
KEY_FORM = re.compile(r"\b[a-z][\w.+-]*/[\w.+ -]+/|/-(/|\b)")


def _texts(fig: Figure) -> list[Text]:
    """The texts a reader sees: tick labels only of ticks inside the axis' view (matplotlib keeps
    labels for ticks beyond it, undrawn), everything else that is visible and not empty."""
    ticks, shown = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            span = (high - low) * 1e-9
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                for label in (tick.label1, tick.label2):
                    ticks.add(id(label))
                    if label.get_visible() and low - span <= tick.get_loc() <= high + span:
                        shown.append(label)
    shown += [t for t in fig.findobj(Text) if id(t) not in ticks]
    return [t for t in shown if t.get_visible() and t.get_text().strip() and t.get_figure(root=True) is fig
            and (t.axes is None or t.axes.get_visible())]


def problems(fig: Figure) -> list[str]:
    """Everything a reader could not read in `fig`; empty when the figure is readable."""
    if not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # runs the layout engine, as saving does
    renderer = fig.canvas.get_renderer()
    found = []
    texts = _texts(fig)
    names = [" ".join(t.get_text().split()) for t in texts]  # a wrapped title reads as one line
    for ax in fig.axes:
        seen: dict[tuple, str] = {}
        for line in ax.get_lines():
            gid = line.get_gid() or ""
            if not gid.startswith(CELL_GID):
                continue
            cell = gid[len(CELL_GID):]
            if not any(name == cell or name.startswith(cell + " (") for name in names):
                found.append(f"cell {cell!r} is drawn but not named")
            style = (to_hex(line.get_color()), line.get_linestyle(), str(line.get_marker() or "None"))
            if seen.get(style, cell) != cell:
                found.append(f"cells {seen[style]!r} and {cell!r} share one style {style}")
            seen.setdefault(style, cell)
    figure_box = fig.bbox
    for text in texts:
        box = text.get_window_extent(renderer)
        if box.x0 < figure_box.x0 - 1 or box.x1 > figure_box.x1 + 1 or \
                box.y0 < figure_box.y0 - 1 or box.y1 > figure_box.y1 + 1:
            found.append(f"text {text.get_text()!r} runs off the figure")
        if KEY_FORM.search(text.get_text()):
            found.append(f"text {text.get_text()!r} shows an internal cell key")
    return found
