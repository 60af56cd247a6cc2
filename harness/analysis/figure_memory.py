"""The memory figures: peak memory per cell (measured beside the planner's estimate) and memory over
time as small multiples, one titled panel per cell.

Inputs are plain numbers from harness.analysis.report.memory_timeline and .memory_levers.
"""

from __future__ import annotations

import itertools

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from harness.analysis.figure_style import CELL_GID, cell_styles, wrap
from harness.analysis.figures import save

WIDTH_IN = 8.0  # shown unscaled in the HTML report (about 1200 px at 150 dpi)
PHASE_SHADES = {"load": "#e6e6e6", "eval": "#e3f2dd"}  # train is left white: it is where levers act
PHASE_NAMES = {"load": "load: imports done, model and set-up", "train": "train (unshaded)",
               "eval": "eval worker"}


def _spans(t: Sequence[float], phases: Sequence[str]) -> list[tuple[str, float, float]]:
    """(phase, start, end) of each run of one phase along the time axis."""
    spans: list[tuple[str, float, float]] = []
    for x, phase in zip(t, phases):
        if spans and spans[-1][0] == phase:
            spans[-1] = (phase, spans[-1][1], x)
        else:
            if spans:  # a phase ends where the next begins, so the shading has no gaps
                spans[-1] = (spans[-1][0], spans[-1][1], x)
            spans.append((phase, x, x))
    return spans


def timeline_figure(series: Sequence[dict], *, ylabel: str = "anonymous memory (MiB)") -> Figure:
    """series: [{"label", "framework", "alignment", "t": [s], "phase": [str], "cpu": [MiB],
    "gpu": [MiB | None] | None, "peak": {"t", "value", "where"}}]; one panel per series, y shared so
    panels compare, the peak marked and written with where it happened (a training step or a phase)."""
    n = len(series)
    ncols = 1 if n == 1 else 2 if n <= 4 else 3 if n <= 9 else 4
    nrows = math.ceil(n / ncols)
    panel_w = WIDTH_IN / ncols
    fig = Figure(figsize=(WIDTH_IN, 2.1 * nrows + 0.7), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    with_gpu = any(any(v is not None for v in s.get("gpu") or ()) for s in series)
    top = max(max((v for v in (s.get("gpu") if with_gpu else s["cpu"]) or () if v is not None), default=0.0)
              for s in series)
    for ax, s, style in zip(axes.flat, series, cell_styles(series)):
        for phase, start, end in _spans(s["t"], s["phase"]):
            if phase in PHASE_SHADES:
                ax.axvspan(start, end, color=PHASE_SHADES[phase], lw=0, zorder=0)
        values = s.get("gpu") if with_gpu else s["cpu"]
        pts = [(x, v) for x, v in zip(s["t"], values or ()) if v is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=style.color, lw=1.1, gid=CELL_GID + s["label"])
        peak = s.get("peak")
        if peak:
            ax.plot([peak["t"]], [peak["value"]], marker="v", color="black", ms=5, ls="none")
            ax.text(0.03, 0.95, f"peak {peak['value']:.0f} MiB, {peak['where']}", transform=ax.transAxes,
                    va="top", ha="left", fontsize=7)
        ax.set_title(wrap(s["label"], panel_w, 8), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylim(0, top * 1.25 or 1.0)  # shared: room above the highest peak for its note
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(ylabel if not with_gpu else "GPU allocated (MiB)", fontsize=7)
    fig.supxlabel("seconds since the training process started", fontsize=8)
    legend = [Patch(color=PHASE_SHADES["load"], label=PHASE_NAMES["load"]),
              Patch(facecolor="white", edgecolor="0.7", label=PHASE_NAMES["train"]),
              Patch(color=PHASE_SHADES["eval"], label=PHASE_NAMES["eval"]),
              Line2D([], [], marker="v", color="black", ls="none", label="peak")]
    fig.legend(handles=legend, loc="outside upper center", ncols=4, fontsize=7, frameon=False)
    return fig


def memory_timeline(series: Sequence[dict], stem: Path, **kwargs) -> Path:
    return save(timeline_figure(series, **kwargs), stem)


MEASURED_COLORS = ("#6baed6", "#08519c", "#9ecae1")
ESTIMATE_COLORS = ("#fdae6b", "#e6550d", "#a63603", "#fdd0a2")
RUNTIME_COLOR = "#d9d9d9"


def peak_bars_figure(cells: Sequence[dict], *, xlabel: str) -> Figure:
    """cells: [{"label", "measured": [(part, MiB)], "estimate": [(part, MiB)] | None}]: per cell a
    measured bar stacked by part and, beneath it, the planner's estimate stacked by its terms
    (hatched); the total written at the end of each bar."""
    n = len(cells)
    fig = Figure(figsize=(WIDTH_IN, 0.55 * n + 1.6), layout="constrained")
    ax = fig.add_subplot()
    measured_parts = list(dict.fromkeys(p for c in cells for p, _ in c["measured"]))
    estimate_parts = list(dict.fromkeys(p for c in cells for p, _ in c.get("estimate") or ()))
    # grey for the runtime term (not a planner term); the planner's own terms take the orange scale in order
    planner_parts = [p for p in estimate_parts if not p.startswith("runtime")]
    colors = {**dict(zip(measured_parts, itertools.cycle(MEASURED_COLORS))),
              **dict(zip(planner_parts, itertools.cycle(ESTIMATE_COLORS))),
              **{p: RUNTIME_COLOR for p in estimate_parts if p.startswith("runtime")}}
    any_estimate = bool(estimate_parts)
    height = 0.38 if any_estimate else 0.7
    right = 0.0
    for i, cell in enumerate(cells):
        for offset, parts, hatch in ((-height / 2 if any_estimate else 0.0, cell["measured"], None),
                                     (height / 2, cell.get("estimate") or (), "///")):
            left = 0.0
            for part, mib in parts:
                ax.barh(i + offset, mib, height=height, left=left, color=colors[part], hatch=hatch,
                        edgecolor="white" if hatch is None else "0.35", lw=0.5)
                left += mib
            if parts:
                ax.text(left, i + offset, f" {left:.0f}", va="center", ha="left", fontsize=7)
                right = max(right, left)
        if any_estimate and not cell.get("estimate"):
            ax.text(0, i + height / 2, " no estimate", va="center", ha="left", fontsize=7, color="0.4")
    ax.set_yticks(range(n), [c["label"] for c in cells], fontsize=8)
    ax.invert_yaxis()  # first cell on top
    ax.set_xlim(0, right * 1.12 or 1.0)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color=colors[p], label=f"measured: {p}") for p in measured_parts]
    handles += [Patch(facecolor=colors[p], hatch="///", edgecolor="0.35", label=f"estimate: {p}")
                for p in estimate_parts]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=7, frameon=False)
    return fig


def peak_bars(cells: Sequence[dict], stem: Path, **kwargs) -> Path:
    return save(peak_bars_figure(cells, **kwargs), stem)
