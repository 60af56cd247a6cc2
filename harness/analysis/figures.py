"""Report figures (matplotlib, no display needed): each function saves `<stem>.png` and `<stem>.pdf`.

Inputs are plain numbers prepared by harness.analysis.report, so the plotting code holds no statistics.
Figures are built with `matplotlib.figure.Figure` directly (not pyplot): no global state, no GUI
backend, safe to call from tests and workers. PDFs carry no creation date, so they are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before anything can pick an interactive backend
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from harness.analysis.figure_style import CELL_GID, cell_styles, point_styles, wrap  # noqa: E402

PNG_DPI = 150


def save(fig: Figure, stem: Path, layout_done: bool = False) -> Path:
    """Save png + pdf next to each other; returns the png path.

    layout_done: the caller laid the figure out and placed artists in display space; the layout is
    kept and the saved area grows to whatever lies outside the axes (a label pushed out). A figure
    made with a layout engine (constrained) lays itself out when drawn.
    """
    stem.parent.mkdir(parents=True, exist_ok=True)
    extra = {"bbox_inches": "tight", "pad_inches": 0.05} if layout_done else {}
    if not layout_done and fig.get_layout_engine() is None:
        fig.tight_layout()
    png = stem.with_suffix(".png")
    fig.savefig(png, dpi=PNG_DPI, metadata={"Software": None}, **extra)
    fig.savefig(stem.with_suffix(".pdf"), metadata={"CreationDate": None, "Creator": None,
                                                     "Producer": None}, **extra)
    return png


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower x, higher y), by x.

    A point is on the frontier when every point with x <= its x has a lower y.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    frontier, best_y = [], float("-inf")
    for i in order:
        if points[i][1] > best_y:
            frontier.append(i)
            best_y = points[i][1]
    return frontier


# Label placement: offsets (points) tried in rings around a point, nearest first; a label goes to
# the first offset where it overlaps no other label, no marker and no legend, inside the axes if it
# can. Identical or very close points thus get separate labels, joined to their point by a line.
_RING_STEP_PT = 10.0
_MARKER_RADIUS_PT = 4.0  # the filled marker (6 pt) with its edge; the hollow frontier ring may be crossed
_INSIDE_SEARCH_RINGS = 14


def _ring_offsets(ring: int) -> list[tuple[float, float, str, str]]:
    """(dx, dy, ha, va) in points on ring `ring` (>= 1), nearest the upper right first, the text
    aligned so that it extends away from its point."""
    radius = _RING_STEP_PT * ring
    n = 8 * ring
    preferred = math.pi / 4
    angles = sorted((preferred + 2 * math.pi * k / n for k in range(n)),
                    key=lambda a: abs(math.remainder(a - preferred, 2 * math.pi)))
    out = []
    for angle in angles:
        dx, dy = radius * math.cos(angle), radius * math.sin(angle)
        ha = "left" if dx > 0.3 * radius else "right" if dx < -0.3 * radius else "center"
        va = "bottom" if dy > 0.3 * radius else "top" if dy < -0.3 * radius else "center"
        out.append((dx, dy, ha, va))
    return out


def renderer_of(fig: Figure):
    """The figure's Agg renderer (a bare `Figure` has a canvas that cannot measure text)."""
    if not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    return fig.canvas.get_renderer()


def label_box(annotation, renderer):
    """Display-space box of an annotation's text alone (not its leader line)."""
    annotation.update_positions(renderer)  # the text's transform follows its offset only after this
    return Text.get_window_extent(annotation, renderer)


def place_labels(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], *,
                 fontsize: float = 8, avoid: Sequence = ()) -> list:
    """Annotate each (x, y) with its label so that no two label boxes overlap (see above).

    The figure's layout must be final (no tight_layout afterwards): positions are checked in display
    space. `avoid`: extra display-space boxes to keep clear (e.g. the legend). Returns the annotations.
    """
    renderer = renderer_of(ax.figure)
    px_per_pt = ax.figure.dpi / 72.0
    axes_box = ax.get_window_extent(renderer)
    r = _MARKER_RADIUS_PT * px_per_pt
    anchors = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]
    taken = [Bbox.from_extents(px - r, py - r, px + r, py + r) for px, py in anchors] + list(avoid)
    pad = 1.5 * px_per_pt
    annotations = []
    for (x, y), text in zip(zip(xs, ys), labels):
        probe = ax.annotate(text, (x, y), textcoords="offset points", xytext=(0, 0), fontsize=fontsize)
        chosen = None
        for inside in (True, False):
            ring = 1
            while chosen is None and (not inside or ring <= _INSIDE_SEARCH_RINGS):
                for dx, dy, ha, va in _ring_offsets(ring):
                    probe.set_position((dx, dy))
                    probe.set_ha(ha)
                    probe.set_va(va)
                    box = label_box(probe, renderer).padded(pad)
                    if inside and not (axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1
                                       and axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1):
                        continue
                    if not any(box.overlaps(other) for other in taken):
                        chosen = (dx, dy, ha, va, ring, box)
                        break
                ring += 1
            if chosen is not None:
                break
        dx, dy, ha, va, ring, box = chosen
        probe.remove()
        arrow = {"arrowstyle": "-", "color": "0.5", "lw": 0.6, "shrinkA": 0, "shrinkB": 3} if ring > 1 else None
        annotations.append(ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy),
                                       ha=ha, va=va, fontsize=fontsize, arrowprops=arrow))
        taken.append(box)
    return annotations


def pareto_figure(points: Sequence[dict], xlabel: str, ylabel: str) -> tuple[Figure, list]:
    """The Pareto figure and its label annotations (see `pareto`)."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for p, style in zip(points, point_styles(points)):
        xerr = None if not p.get("xerr") else [[p["x"] - p["xerr"][0]], [p["xerr"][1] - p["x"]]]
        yerr = None if not p.get("yerr") else [[p["y"] - p["yerr"][0]], [p["yerr"][1] - p["y"]]]
        # each point is named by its own label (place_labels); the marker tells apart cells of one colour
        line, _, _ = ax.errorbar([p["x"]], [p["y"]], xerr=xerr, yerr=yerr, fmt=style.marker,
                                 color=style.color, capsize=3, ms=6, ls="none")
        line.set_gid(CELL_GID + p["label"])
    front = pareto_frontier([(p["x"], p["y"]) for p in points])
    legend = None
    if front:
        xs = [points[i]["x"] for i in front]
        ys = [points[i]["y"] for i in front]
        # rings mark the frontier points, so a frontier of one point is visible too
        ax.plot(xs, ys, "k-", drawstyle="steps-post", lw=1, alpha=0.6, marker="o", ms=14,
                mfc="none", label="Pareto frontier")
        legend = ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Quality vs memory (up and left is better)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.25)  # room for labels pushed aside by close neighbours
    fig.tight_layout()  # the layout is final before labels are placed in display space
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    renderer = renderer_of(fig)
    avoid = [legend.get_window_extent(renderer)] if legend is not None else []
    labels = place_labels(ax, [p["x"] for p in points], [p["y"] for p in points],
                          [p["label"] for p in points], avoid=avoid)
    return fig, labels


def pareto(points: Sequence[dict], xlabel: str, ylabel: str, stem: Path) -> Path:
    """Quality against memory, one point per cell, the Pareto frontier drawn as a step line; labels
    never overlap (`place_labels`).

    points: [{"label", "framework", "x", "y", "xerr": (lo, hi) | None, "yerr": (lo, hi) | None}]
    with the error bars as absolute bounds.
    """
    fig, _ = pareto_figure(points, xlabel, ylabel)
    return save(fig, stem, layout_done=True)


def whiskers(values: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> list[list[float]]:
    """matplotlib's (below, above) error-bar lengths from absolute (low, high) bounds per bar."""
    return [[max(0.0, v - lo) for v, lo in zip(values, lows)], [max(0.0, hi - v) for v, hi in zip(values, highs)]]


def bars(labels: Sequence[str], values: Sequence[float], stem: Path, **kwargs) -> Path:
    """`bars_figure` saved as `<stem>.png` and `.pdf`."""
    return save(bars_figure(labels, values, **kwargs), stem)


def bars_figure(labels: Sequence[str], values: Sequence[float], *, ylabel: str, title: str,
                lows: Sequence[float] | None = None, highs: Sequence[float] | None = None,
                colors: Sequence[str] | None = None, horizontal: bool = False) -> Figure:
    """Bar chart with optional error bars given as absolute (low, high) bounds per bar; each bar
    named by its tick label."""
    n = len(labels)
    width = 6.4 if horizontal else min(8.0, max(5.0, 0.9 * n + 1.5))
    fig = Figure(figsize=(width, max(2.5, 0.45 * n + 1.2)) if horizontal else (width, 4.0), layout="constrained")
    ax = fig.add_subplot()
    err = whiskers(values, lows, highs) if lows is not None and highs is not None else None
    colors = list(colors) if colors else ["#4c72b0"] * n
    positions = range(n)
    if horizontal:
        ax.barh(positions, values, xerr=err, color=colors, capsize=3)
        ax.set_yticks(list(positions), labels)
        ax.invert_yaxis()  # first label on top
        ax.set_xlabel(ylabel)
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.bar(positions, values, yerr=err, color=colors, capsize=3)
        ax.set_xticks(list(positions), labels, rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    ax.set_title(wrap(title, width, 10), fontsize=10)  # a long title wraps instead of running off the figure
    return fig


EFFECT_COLOURS = {"factor": "#4c72b0", "noise": "#b8b8b8", "sum": "#dd8452", "whole": "#c44e52"}
EFFECT_KEYS = {"factor": "beyond the noise floor", "noise": "within it (~)", "sum": "sum of the single factors",
               "whole": "all at once"}


def effect_panels(labels: Sequence[str], kinds: Sequence[str], panels: Sequence[dict], stem: Path, *,
                  title: str) -> Path:
    """`effect_panels_figure` saved as `<stem>.png` and `.pdf`."""
    return save(effect_panels_figure(labels, kinds, panels, title=title), stem)


def effect_panels_figure(labels: Sequence[str], kinds: Sequence[str], panels: Sequence[dict], *,
                         title: str) -> Figure:
    """One horizontal-bar panel per outcome metric, the rows shared: each row's effect, whiskers from
    its lowest to its highest per-seed value, a grey band for ±the metric's noise floor.

    kinds: "factor" | "sum" | "whole" per row; a factor row drawn grey where panel["within"] says it
    lies within the floor. panels: [{"xlabel", "values", "lows", "highs", "within", "floor"}]; the
    "sum" and "whole" rows sit below a gap so the interaction (whole − sum) reads off the bars.
    """
    n = len(labels)
    gap = [0.6 if i and kinds[i] != "factor" and kinds[i - 1] == "factor" else 0.0 for i in range(n)]
    positions = [i + sum(gap[: i + 1]) for i in range(n)]
    fig = Figure(figsize=(3.4 * len(panels) + 2.2, max(3.0, 0.42 * n + 1.8)), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    used: set[str] = set()
    for ax, panel in zip(axes, panels):
        values = panel["values"]
        keys = ["noise" if kind == "factor" and within else kind for kind, within in zip(kinds, panel["within"])]
        used.update(keys)
        colours = [EFFECT_COLOURS[k] for k in keys]
        err = whiskers(values, panel["lows"], panel["highs"])
        if panel.get("floor"):
            ax.axvspan(-panel["floor"], panel["floor"], color="#999999", alpha=0.2, lw=0)
        ax.barh(positions, values, xerr=err, color=colours, capsize=2)
        ax.axvline(0.0, color="black", lw=0.6)
        ax.set_xlabel(panel["xlabel"])
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions, labels)
    axes[0].invert_yaxis()  # the largest effect on top
    shown = [k for k in EFFECT_KEYS if k in used]
    fig.legend(handles=[Patch(color=EFFECT_COLOURS[k], label=EFFECT_KEYS[k]) for k in shown],
               loc="outside lower center", ncols=len(shown), fontsize=8, frameon=False)
    fig.suptitle(wrap(title, fig.get_figwidth(), 10), fontsize=10)
    return fig


def metric_over_commits(commits: Sequence[str], series: Sequence[dict], stem: Path, *,
                        ylabel: str) -> Path:
    """One line per cell over commits (in order). series: [{"label", "values": [float|None]}]."""
    fig = Figure(figsize=(max(5.0, 0.8 * len(commits) + 2), 4.0))
    ax = fig.add_subplot()
    xs = list(range(len(commits)))
    for s, style in zip(series, cell_styles(series)):
        pts = [(x, v) for x, v in zip(xs, s["values"]) if v is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=s["label"], gid=CELL_GID + s["label"],
                    **{**style.line_kwargs(len(pts)), "marker": style.marker or "o", "markevery": 1})
    ax.set_xticks(xs, commits, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("commit (oldest first)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return save(fig, stem)
