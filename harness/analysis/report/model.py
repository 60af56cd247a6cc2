"""What every renderer draws from: tables as data (`Table` of `TableCell`s), the report around them, and
the number formats shared by the table builders."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from harness.results.metric_table import METRIC_DIRECTION


@dataclasses.dataclass
class TableCell:
    text: str
    bold: bool = False
    mark: str = ""  # "*" significance, "†" bootstrap interval, "‡" timed under load


@dataclasses.dataclass
class Table:
    key: str  # short id, used for LaTeX labels and footnotes
    title: str
    caption: str
    header: list[str]
    rows: list[list[TableCell]] = dataclasses.field(default_factory=list)
    # run ids behind each row; empty for tables whose columns (not rows) are the cells
    row_runs: list[list[str]] = dataclasses.field(default_factory=list)
    row_labels: list[str] = dataclasses.field(default_factory=list)
    label_cols: int = 1  # leading text columns (left-aligned); the rest are numbers


@dataclasses.dataclass
class Report:
    title: str
    tables: list[Table]
    methods: dict
    failed: list[dict]  # {"run_id", "cell", "status", "error"}
    status_counts: dict[str, int]
    figure_inputs: dict  # name -> (title, draw function, kwargs[, caption]) for the figure modules
    figures: list[dict] = dataclasses.field(default_factory=list)  # {"name","title","png","pdf"}
    controls: list = dataclasses.field(default_factory=list)  # control.ControlFinding
    gallery: Any = None  # gallery.Gallery, or None when no predictions carry references


def fmt_quality(x: float) -> str:
    return f"{x:.4f}"


def fmt_cost(x: float) -> str:
    ax = abs(x)
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.4f}"


def fmt_number(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:.3g}" if (x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4)) else f"{x:.4f}"
    return str(x)


def best_index(means: Sequence[float | None], metric: str) -> set[int]:
    """The positions of the best value (ties included); none when every value ties, because a bold
    that marks a whole row (a column of zeros, say) tells the reader nothing."""
    valid = [(m, i) for i, m in enumerate(means) if m is not None]
    if not valid:
        return set()
    pick = max if METRIC_DIRECTION.get(metric, "higher") == "higher" else min
    best = pick(m for m, _ in valid)
    tied = {i for m, i in valid if math.isclose(m, best, rel_tol=1e-12, abs_tol=1e-15)}
    return tied if len(tied) < len(valid) else set()


def column_value(value: Any) -> str:
    """A cell key's value in its own table column ("-" when the cell does not set it); a cell's
    whole name comes from harness.analysis.cell_names."""
    return "-" if value is None else str(value)


def runs_cell(group: Sequence[Mapping]) -> TableCell:
    ok = sum(r["status"] == "ok" for r in group)
    return TableCell(f"{ok}/{len(group)}")


def roundtrip_cell(group: Sequence[Mapping]) -> TableCell:
    """Runs whose saved adapter, reloaded by every loader, matched the live model (harness.run.roundtrip)."""
    checked = [r["roundtrip"] for r in group if (r.get("roundtrip") or {}).get("ok") is not None]
    if not checked:
        return TableCell("—")
    passed = sum(bool(b["ok"]) for b in checked)
    return TableCell(f"{passed}/{len(checked)}", bold=passed < len(checked))


def shown_keys(records: Sequence[Mapping], keys: Sequence[str]) -> list[str]:
    """Cell keys worth a column: framework and alignment always, others only when they vary."""
    shown = []
    for k in keys:
        values = {json.dumps(r.get("cell", {}).get(k), sort_keys=True) for r in records}
        if k in ("framework", "alignment") or len(values) > 1:
            shown.append(k)
    return shown
