"""Quality broken down by field and by document kind: rows are fields (kinds), columns are cells.

Read from `record["eval"]["per_field"]` and `["per_kind"]`, which the runner writes per run; each
entry is the mean over the cell's ok seeds that have it. Records written before these keys existed
give no table (the report skips the section).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from harness.analysis.report.model import TableCell, Table, best_index, fmt_quality
from harness.analysis.cell_names import group_label


def _breakdown(group: Sequence[Mapping], section: str) -> list[Mapping]:
    """The `eval[section]` dicts of the ok runs of one cell."""
    out = []
    for record in group:
        value = (record.get("eval") or {}).get(section) if record.get("status") == "ok" else None
        if isinstance(value, Mapping) and value:
            out.append(value)
    return out


def _mean(values: list) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.fmean(numbers) if numbers else None


def _pair_text(first: float | None, second: float | None) -> str:
    if first is None and second is None:
        return "—"
    return " / ".join("—" if v is None else fmt_quality(v) for v in (first, second))


def _occurrences(per_cell: Mapping[tuple, list[Mapping]], name: str) -> list[int]:
    """The `n` every run recorded for `name`: its occurrences in the test references."""
    return [run[name]["n"] for runs in per_cell.values() for run in runs
            if isinstance(run.get(name), Mapping) and isinstance(run[name].get("n"), int)]


def _breakdown_table(groups: dict[tuple, list[dict]], keys: Sequence[str], shown: Sequence[str], *,
                     section: str, row_name: str, first: str, second: str, key: str, title: str,
                     caption: str, reference_rows_only: bool = False) -> Table | None:
    per_cell = {k: _breakdown(g, section) for k, g in groups.items()}
    per_cell = {k: v for k, v in per_cell.items() if v}
    if not per_cell:
        return None
    names = sorted({name for runs in per_cell.values() for run in runs for name in run})
    occurrences = {n: _occurrences(per_cell, n) for n in names}
    extra: list[str] = []
    if reference_rows_only:
        # a half-trained model invents keys ("aieac", "Sexires"): one row each would bury the
        # schema's fields under hundreds of rows of zeros, so they are counted in one row instead
        extra = [n for n in names if not any(occurrences[n])]
        names = [n for n in names if any(occurrences[n])]
    table = Table(key, title, caption, [row_name, "n", *(group_label(k, keys, groups[k]) for k in per_cell)])
    for name in names:
        firsts, cells = [], []
        for runs in per_cell.values():
            entries = [run[name] for run in runs if isinstance(run.get(name), Mapping)]
            a, b = _mean([e.get(first) for e in entries]), _mean([e.get(second) for e in entries])
            firsts.append(a)
            cells.append(TableCell(_pair_text(a, b)))
        for i in best_index(firsts, "field_f1"):
            cells[i].bold = True
        counts = occurrences[name]
        table.rows.append([TableCell(str(name)), TableCell(str(max(counts)) if counts else "—"), *cells])
        table.row_labels.append(str(name))
    if reference_rows_only:
        label = "keys not in the references (distinct names)"
        invented = [_mean([sum(1 for name in extra if name in run) for run in runs]) for runs in per_cell.values()]
        table.rows.append([TableCell(label), TableCell("0"),
                           *(TableCell(f"{c:g}" if c == int(c) else f"{c:.1f}") for c in invented)])
        table.row_labels.append(label)
    return table


def per_field_table(groups: dict[tuple, list[dict]], keys: Sequence[str], shown: Sequence[str],
                    number: int) -> Table | None:
    return _breakdown_table(
        groups, keys, shown, section="per_field", row_name="field", first="f1", second="anls",
        key="per_field", title=f"Table {number}. Quality per field",
        caption="Each entry: field F1 / ANLS of that field, mean over the cell's ok seeds. n: the "
                "field's occurrences in the test references. Bold: highest F1 of the row (none when "
                "every cell ties). The last row counts the key names a cell predicted that no "
                "reference has (each a false positive), mean over seeds. Columns are the cells of "
                "Table 1 (same runs).", reference_rows_only=True)


def per_kind_table(groups: dict[tuple, list[dict]], keys: Sequence[str], shown: Sequence[str],
                   number: int) -> Table | None:
    return _breakdown_table(
        groups, keys, shown, section="per_kind", row_name="document kind", first="field_f1",
        second="cer", key="per_kind", title=f"Table {number}. Quality per document kind",
        caption="Each entry: field F1 / CER over the test documents of that kind, mean over the "
                "cell's ok seeds. n: test documents of the kind. Bold: highest field F1 of the row "
                "(none when every cell ties). Columns are the cells of Table 1 (same runs).")
