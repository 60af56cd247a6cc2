"""How a cell looks in every figure, and figure text that fits.

A framework keeps one colour in every figure; the alignment (or profile) sets the line style; cells
that share both (a negative control, a lever, a cell with its own step count) are told apart by a
marker. A line drawn for a cell carries the gid `cell:<its name>`, so a reader of the figure object
(the report's figure test) knows which cell each line draws.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Mapping, Sequence

FRAMEWORK_COLORS = {"peft": "#1f77b4", "swift": "#d62728", "torch": "#2ca02c", "llamafactory": "#ff7f0e"}
_EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
ALIGNMENT_LINESTYLES = {"aligned": "-", "native": "--"}
_OTHER_LINESTYLES = (":", "-.")  # named profiles (swift-default, minicpmv-official, ...) in order of appearance
MARKERS = ("", "o", "s", "^", "D", "v", "x", "P", "*", "<", ">")
CELL_GID = "cell:"


def color_for(name: str | None, _assigned: dict = {}) -> str:  # noqa: B006 - a deliberate memo
    """A stable colour for a framework (or any other name)."""
    if name in FRAMEWORK_COLORS:
        return FRAMEWORK_COLORS[name]
    if name not in _assigned:
        _assigned[name] = _EXTRA_COLORS[len(_assigned) % len(_EXTRA_COLORS)]
    return _assigned[name]


@dataclasses.dataclass(frozen=True)
class CellStyle:
    color: str
    linestyle: str
    marker: str  # "" for none

    def line_kwargs(self, n_points: int) -> dict:
        """Keyword arguments for `Axes.plot`; markers every few points so a long curve stays a line."""
        kwargs: dict = {"color": self.color, "linestyle": self.linestyle}
        if self.marker:
            kwargs.update(marker=self.marker, markersize=4, markevery=max(1, n_points // 12))
        return kwargs


def cell_styles(cells: Sequence[Mapping]) -> list[CellStyle]:
    """One style per cell ({"framework", "alignment"}, in drawing order), no two alike."""
    profile_styles = dict(ALIGNMENT_LINESTYLES)
    taken: set[tuple[str, str, str]] = set()
    styles = []
    for cell in cells:
        alignment = cell.get("alignment")
        if alignment not in profile_styles:
            used = len(profile_styles) - len(ALIGNMENT_LINESTYLES)
            profile_styles[alignment] = _OTHER_LINESTYLES[used % len(_OTHER_LINESTYLES)]
        color = color_for(cell.get("framework") or cell.get("label"))
        linestyle = profile_styles[alignment]
        marker = next((m for m in MARKERS if (color, linestyle, m) not in taken), MARKERS[-1])
        taken.add((color, linestyle, marker))
        styles.append(CellStyle(color, linestyle, marker))
    return styles


POINT_MARKERS = {"aligned": "o", "native": "s"}
_OTHER_POINT_MARKERS = ("^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def point_styles(cells: Sequence[Mapping]) -> list[CellStyle]:
    """One style per cell drawn as a point: colour by framework, marker by alignment or profile,
    the next free marker for a cell whose colour and marker are taken (no line style)."""
    taken: set[tuple[str, str]] = set()
    styles = []
    for cell in cells:
        color = color_for(cell.get("framework") or cell.get("label"))
        preferred = POINT_MARKERS.get(cell.get("alignment"), _OTHER_POINT_MARKERS[0])
        marker = next((m for m in (preferred, *_OTHER_POINT_MARKERS) if (color, m) not in taken), "o")
        taken.add((color, marker))
        styles.append(CellStyle(color, "None", marker))
    return styles


def wrap(text: str, width_in: float, fontsize: float) -> str:
    """`text` broken into lines that fit `width_in` inches at `fontsize` points (average glyph ≈ 0.55 em)."""
    chars = max(12, int(width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.wrap(text, chars)) or text
