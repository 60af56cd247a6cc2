"""The report's outcome ablation (`parity --ablate --profiles A,B --outcome`): a table and a figure."""

from __future__ import annotations

import json
from collections.abc import Mapping

from harness.analysis.attribution import DATA_ORDER, describe_budget
from harness.analysis.report.model import Table, TableCell

LABELS = {"heldout_loss": "held-out loss", "field_f1": "field F1", "field_anls": "ANLS", "cer": "CER"}


def _effect(row: Mapping, metric: str) -> str:
    value = (row.get("effect") or {}).get(metric)
    if value is None:
        return "—"
    within = (row.get("within_noise") or {}).get(metric)
    sign = "" if row.get("factor") == DATA_ORDER else "+"
    return f"{value:{sign}.3g}" + ("~" if within else "")


def _value(values: Mapping | None, name: str) -> str:
    if not values or name not in values:
        return "—"
    shown = values[name]
    return json.dumps(shown[0] if isinstance(shown, list) and len(shown) == 1 else shown)


def outcome_table(doc: Mapping, title: str, doc_label: str) -> Table:
    """One row per factor (ranked by effect, data order among them), then the whole other recipe."""
    a, b, metrics = doc.get("first"), doc.get("second"), list(doc.get("metrics") or [])
    floor = (doc.get("noise_floor") or {}).get("values") or {}
    inter = doc.get("interaction") or {}
    floors = ", ".join(f"{LABELS.get(m, m)} {floor[m]:.3g}" for m in metrics if floor.get(m) is not None)
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
        values = row.get("values")
        t.rows.append([TableCell(str(row.get("factor"))), TableCell(_value(values, str(a))),
                       TableCell(_value(values, str(b))), *cells])
        t.row_runs.append([doc_label])
        t.row_labels.append(str(row.get("factor")))
    return t


def outcome_figure(doc: Mapping) -> dict:
    """figures.bars inputs: each factor's effect on the ranking metric, bars from the lowest to the highest
    per-seed difference, ranked as in the table (data order: the range between the baseline's seeds)."""
    metric = str(doc.get("rank_metric"))
    rows = [r for r in doc.get("effects") or [] if (r.get("effect") or {}).get(metric) is not None]
    values = [float(r["effect"][metric]) for r in rows]
    lows, highs = [], []
    for r, v in zip(rows, values):
        per_seed = (r.get("per_seed") or {}).get(metric) or [v]
        spread = r.get("factor") == DATA_ORDER
        lows.append(v if spread else min(per_seed))
        highs.append(v if spread else max(per_seed))
    floor = ((doc.get("noise_floor") or {}).get("values") or {}).get(metric)
    return {"labels": [str(r.get("factor")) for r in rows], "values": values, "lows": lows, "highs": highs,
            "ylabel": f"Δ {LABELS.get(metric, metric)} vs {doc.get('first')}", "horizontal": True,
            # short: the axis is narrowed by the factor names, and the caption says the rest
            "title": f"Effect on the {LABELS.get(metric, metric)}"
                     + (f", noise floor {floor:.3g}" if floor is not None else ", one seed: no noise floor")}
