"""The training-curves figure: loss, learning rate and gradient norm per cell.

Inputs are plain numbers from harness.analysis.report.figure_inputs, which decides what is comparable:
the x axis (steps, or samples seen when the cells' global batches differ), which cells share a loss
definition (one loss panel per definition), and which curves coincide (drawn wide underneath).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness.analysis.figure_style import CELL_GID, cell_styles, wrap
from harness.analysis.figures import save

WIDTH_IN = 8.0  # the HTML report shows a figure up to about 1200 px: 8 in at 150 dpi, unscaled


def _draw(ax, series: Sequence[dict], styles: dict, underlay: set[str]) -> None:
    for s in series:
        style = styles[s["label"]]
        if s["label"] in underlay:  # a curve another one covers exactly: wide and pale beneath it
            ax.plot(s["x"], s["mean"], color=style.color, lw=5, alpha=0.35, solid_capstyle="butt",
                    gid=CELL_GID + s["label"])
        else:
            ax.plot(s["x"], s["mean"], lw=1.3, gid=CELL_GID + s["label"], **style.line_kwargs(len(s["x"])))
        if s["n_seeds"] > 1:
            ax.fill_between(s["x"], s["lo"], s["hi"], color=style.color, alpha=0.15, lw=0)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)


def training_figure(series: Sequence[dict], *, xlabel: str, panels: Sequence[str],
                    lr_series: Sequence[dict] = (), grad_norm_series: Sequence[dict] = (),
                    underlay: Sequence[str] = ()) -> Figure:
    """series: [{"label", "framework", "alignment", "x": [float], "mean", "lo", "hi": [float],
    "n_seeds": int, "panel": str}]: one loss panel per name in `panels` (in that order), each with
    the series whose "panel" it is; the learning rate and gradient norm (same keys, no "panel")
    below. `underlay`: labels of curves drawn wide beneath the others (they coincide with one)."""
    styles = dict(zip((s["label"] for s in series), cell_styles(series)))
    extra = [(s, name) for s, name in ((lr_series, "learning rate"), (grad_norm_series, "gradient norm")) if s]
    rows = 1 + bool(extra)
    fig = Figure(figsize=(WIDTH_IN, 3.0 * rows + 0.35 * (len(series) + 1) // 2 + 0.4), layout="constrained")
    top, *bottom = fig.subfigures(rows, 1, height_ratios=[1] * rows) if rows > 1 else [fig]
    loss_axes = top.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(loss_axes, panels):
        _draw(ax, [s for s in series if s["panel"] == panel], styles, set(underlay))
        # a panel's share of the width less its axis labels and the gap to the next panel
        ax.set_title(wrap(panel, WIDTH_IN / len(panels) - 0.5, 9), fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
    loss_axes[0].set_ylabel("training loss", fontsize=8)
    if bottom:
        for ax, (s, name) in zip(bottom[0].subplots(1, len(extra), squeeze=False)[0], extra):
            _draw(ax, s, styles, set(underlay))
            ax.set_title(f"{name[0].upper()}{name[1:]}", fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            if name == "learning rate":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    handles = []
    for s in series:
        style, name = styles[s["label"]], f"{s['label']} ({s['n_seeds']} seed{'s' if s['n_seeds'] > 1 else ''})"
        look = {"color": style.color, "lw": 5, "alpha": 0.35} if s["label"] in underlay else \
            {"lw": 1.3, **style.line_kwargs(3)}
        handles.append(Line2D([], [], label=name, **look))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return fig


def loss_curves(series: Sequence[dict], stem: Path, **kwargs) -> Path:
    """`training_figure` saved as `<stem>.png` and `.pdf`."""
    return save(training_figure(series, **kwargs), stem)
