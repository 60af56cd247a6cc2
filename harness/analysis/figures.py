"""Report figures (matplotlib, no display needed): each function saves `<stem>.png` and `<stem>.pdf`.

Inputs are plain numbers prepared by harness.report, so the plotting code holds no statistics.
Figures are built with `matplotlib.figure.Figure` directly (not pyplot): no global state, no GUI
backend, safe to call from tests and workers. PDFs carry no creation date, so they are reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before anything can pick an interactive backend
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

PNG_DPI = 150
# One colour per framework, the same in every figure; other labels cycle through the rest.
FRAMEWORK_COLORS = {"peft": "#1f77b4", "swift": "#d62728", "torch": "#2ca02c"}
_EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#ff7f0e")
ALIGNMENT_STYLES = {"aligned": "-", "native": "--"}


def color_for(name: str | None, _assigned: dict = {}) -> str:  # noqa: B006 - a deliberate memo
    """A stable colour for a framework (or any label)."""
    if name in FRAMEWORK_COLORS:
        return FRAMEWORK_COLORS[name]
    if name not in _assigned:
        _assigned[name] = _EXTRA_COLORS[len(_assigned) % len(_EXTRA_COLORS)]
    return _assigned[name]


def _save(fig: Figure, stem: Path) -> Path:
    """Save png + pdf next to each other; returns the png path."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    png = stem.with_suffix(".png")
    fig.savefig(png, dpi=PNG_DPI, metadata={"Software": None})
    fig.savefig(stem.with_suffix(".pdf"), metadata={"CreationDate": None, "Creator": None,
                                                     "Producer": None})
    return png


def loss_curves(series: Sequence[dict], stem: Path, band: str = "min–max over seeds") -> Path:
    """Training loss against step, one line per cell with a shaded band.

    series: [{"label", "framework", "alignment", "steps": [int], "mean": [float], "lo": [float],
    "hi": [float], "n_seeds": int}]; colour by framework, line style by alignment.
    """
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for s in series:
        color = color_for(s.get("framework") or s["label"])
        style = ALIGNMENT_STYLES.get(s.get("alignment"), ":")
        ax.plot(s["steps"], s["mean"], style, color=color, lw=1.5,
                label=f"{s['label']} (n={s['n_seeds']})")
        if s["n_seeds"] > 1:
            ax.fill_between(s["steps"], s["lo"], s["hi"], color=color, alpha=0.15, lw=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"Training loss: mean over seeds, band = {band}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, stem)


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


def pareto(points: Sequence[dict], xlabel: str, ylabel: str, stem: Path) -> Path:
    """Quality against memory, one point per cell, the Pareto frontier drawn as a step line.

    points: [{"label", "framework", "x", "y", "xerr": (lo, hi) | None, "yerr": (lo, hi) | None}]
    with the error bars as absolute bounds.
    """
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for p in points:
        xerr = None if not p.get("xerr") else [[p["x"] - p["xerr"][0]], [p["xerr"][1] - p["x"]]]
        yerr = None if not p.get("yerr") else [[p["y"] - p["yerr"][0]], [p["yerr"][1] - p["y"]]]
        marker = "o" if p.get("alignment") != "native" else "s"
        ax.errorbar([p["x"]], [p["y"]], xerr=xerr, yerr=yerr, fmt=marker,
                    color=color_for(p.get("framework") or p["label"]), capsize=3, ms=6)
        ax.annotate(p["label"], (p["x"], p["y"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    front = pareto_frontier([(p["x"], p["y"]) for p in points])
    if front:
        xs = [points[i]["x"] for i in front]
        ys = [points[i]["y"] for i in front]
        # rings mark the frontier points, so a frontier of one point is visible too
        ax.plot(xs, ys, "k-", drawstyle="steps-post", lw=1, alpha=0.6, marker="o", ms=14,
                mfc="none", label="Pareto frontier")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Quality vs memory (up and left is better)", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, stem)


def bars(labels: Sequence[str], values: Sequence[float], stem: Path, *, ylabel: str, title: str,
         lows: Sequence[float] | None = None, highs: Sequence[float] | None = None,
         colors: Sequence[str] | None = None, horizontal: bool = False) -> Path:
    """Bar chart with optional error bars given as absolute (low, high) bounds per bar."""
    n = len(labels)
    fig = Figure(figsize=(6.4, max(2.5, 0.45 * n + 1.2)) if horizontal else (max(5.0, 0.9 * n + 1.5), 4.0))
    ax = fig.add_subplot()
    err = None
    if lows is not None and highs is not None:
        err = [[max(0.0, v - lo) for v, lo in zip(values, lows)],
               [max(0.0, hi - v) for v, hi in zip(values, highs)]]
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
    ax.set_title(title, fontsize=10)
    return _save(fig, stem)


def metric_over_commits(commits: Sequence[str], series: Sequence[dict], stem: Path, *,
                        ylabel: str) -> Path:
    """One line per cell over commits (in order). series: [{"label", "values": [float|None]}]."""
    fig = Figure(figsize=(max(5.0, 0.8 * len(commits) + 2), 4.0))
    ax = fig.add_subplot()
    xs = list(range(len(commits)))
    for s in series:
        pts = [(x, v) for x, v in zip(xs, s["values"]) if v is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=s["label"],
                    color=color_for(s.get("framework") or s["label"]))
    ax.set_xticks(xs, commits, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("commit (oldest first)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return _save(fig, stem)
