"""The report's outcome ablation (`parity --ablate --profiles A,B --outcome`): a table and a figure."""

from __future__ import annotations

import math
from collections.abc import Mapping

from harness.analysis.attribution import DATA_ORDER, OUTCOME_LABELS as LABELS, describe_budget
from harness.analysis.report.model import Table, TableCell
from harness.config.profiles import factor_setting


def _effect(row: Mapping, metric: str) -> str:
    value = (row.get("effect") or {}).get(metric)
    if value is None:
        return "—"
    within = (row.get("within_noise") or {}).get(metric)
    sign = "" if row.get("factor") == DATA_ORDER else "+"
    return f"{value:{sign}.3g}" + ("~" if within else "")


def _floors(floor: Mapping, metrics: list[str]) -> str:
    """Each metric's noise floor, as the table's caption and the figure's title name it."""
    return ", ".join(f"{LABELS.get(m, m)} {floor[m]:.3g}" for m in metrics if floor.get(m) is not None)


def outcome_table(doc: Mapping, title: str, doc_label: str) -> Table:
    """One row per factor (ranked by effect, data order among them), then the whole other recipe."""
    a, b, metrics = doc.get("first"), doc.get("second"), list(doc.get("metrics") or [])
    floor = (doc.get("noise_floor") or {}).get("values") or {}
    inter = doc.get("interaction") or {}
    floors = _floors(floor, metrics)
    caption = (f"On {doc.get('framework')}: {describe_budget(doc)}, under data seeds "
               f"{', '.join(str(s) for s in doc.get('seeds') or [])}, then evaluated on the held-out split. "
               f"Effect = mean over seeds of (arm − {a}) under the same data seed; largest |Δ "
               f"{LABELS.get(str(doc.get('rank_metric')), doc.get('rank_metric'))}| first. Noise floor "
               f"({(doc.get('noise_floor') or {}).get('statistic')}): {floors or '—'}. ~ = within the floor: "
               "not distinguishable from data order. Data order: the range between the baseline's own seeds. "
               f"The last rows run all of {b} at once.")
    if inter:
        parts = [f"{LABELS.get(m, m)} {inter['interaction'][m]:+.3g}" + ("~" if inter["within_noise"].get(m) else "")
                 for m in metrics if inter.get("interaction", {}).get(m) is not None]
        caption += (f" Interaction ({inter.get('whole')} − the sum of the single-factor effects): "
                    f"{', '.join(parts) or '—'}.")
        if inter.get("excluded"):
            caption += f" The sum leaves out {', '.join(inter['excluded'])} (did not run)."
    t = Table(f"outcome-{a}-{b}", f"{title}. Why {a} and {b} end differently (held-out outcome)", caption,
              ["factor", str(a), str(b), *(f"Δ {LABELS.get(m, m)}" for m in metrics)], label_cols=3)
    for row in [*(doc.get("effects") or []), *(doc.get("totals") or [])]:
        if "error" in row:
            cells = [TableCell("—") for _ in metrics]
        else:
            cells = [TableCell(_effect(row, m)) for m in metrics]
        factor, values = str(row.get("factor")), row.get("values") or {}
        t.rows.append([TableCell(factor), TableCell(factor_setting(factor, values.get(str(a)))),
                       TableCell(factor_setting(factor, values.get(str(b)))), *cells])
        t.row_runs.append([doc_label])
        t.row_labels.append(factor)
    return t


def _quality_metric(doc: Mapping, rows: list[Mapping]) -> str | None:
    """The extraction metric whose effects stand furthest above its own noise floor (none when no
    effect leaves it): the figure's second panel."""
    floor = (doc.get("noise_floor") or {}).get("values") or {}
    best, best_ratio = None, 1.0
    for metric in doc.get("metrics") or []:
        if metric == doc.get("rank_metric"):
            continue
        largest = max((abs((r.get("effect") or {}).get(metric) or 0.0) for r in rows), default=0.0)
        ratio = largest / floor[metric] if floor.get(metric) else (math.inf if largest else 0.0)
        if ratio > best_ratio:
            best, best_ratio = metric, ratio
    return best


def outcome_figure(doc: Mapping) -> dict:
    """figures.effect_panels inputs: each factor's effect (ranked as in the table; data order: the range
    between the baseline's seeds) on the ranking metric and on the extraction metric that moved most,
    whiskers from the lowest to the highest per-seed difference; then the sum of the single-factor
    effects and the whole other recipe, so that their difference (the interaction) reads off the bars."""
    metric = str(doc.get("rank_metric"))
    rows = [r for r in doc.get("effects") or [] if (r.get("effect") or {}).get(metric) is not None]
    wholes = [r for r in doc.get("totals") or [] if (r.get("effect") or {}).get(metric) is not None]
    summed = (doc.get("interaction") or {}).get("sum_of_factors")
    metrics = [metric, *([m] if (m := _quality_metric(doc, rows + wholes)) else [])]
    floor = (doc.get("noise_floor") or {}).get("values") or {}
    # one (label, kind, row) per bar, top to bottom; the sum of the single factors is a bare effect
    bars = [(str(r.get("factor")), "factor", r) for r in rows]
    if summed:
        bars.append(("sum of the single factors", "sum", {"effect": summed}))
    bars += [(f"{r.get('factor')} (all at once)", "whole", r) for r in wholes]
    panels = []
    for m in metrics:
        values, lows, highs, within = [], [], [], []
        for _, _, r in bars:
            v = float((r.get("effect") or {}).get(m) or 0.0)
            per_seed = [] if r.get("factor") == DATA_ORDER else (r.get("per_seed") or {}).get(m) or []
            values.append(v)
            lows.append(min(per_seed, default=v))
            highs.append(max(per_seed, default=v))
            within.append(bool((r.get("within_noise") or {}).get(m)))
        panels.append({"xlabel": f"Δ {LABELS.get(m, m)} vs {doc.get('first')}", "values": values, "lows": lows,
                       "highs": highs, "within": within, "floor": floor.get(m)})
    labels, kinds = [b[0] for b in bars], [b[1] for b in bars]
    floors = _floors(floor, metrics)
    return {"labels": labels, "kinds": kinds, "panels": panels,
            "title": f"Why {doc.get('first')} and {doc.get('second')} end differently: effect of each setting "
                     + (f"(noise floor, grey band: {floors})" if floors else "(one seed: no noise floor)")}
