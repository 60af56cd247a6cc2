"""The text table `parity --ablate --profiles A,B --outcome` prints (its JSON: outcome_ablation.json)."""

from __future__ import annotations

from harness.analysis.attribution import DATA_ORDER, OUTCOME_LABELS as LABELS, describe_budget
from harness.config.profiles import factor_setting

MARK = "~"  # within the noise floor


def _num(value, signed: bool = True) -> str:
    if value is None:
        return "—"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _cells(row: dict, metrics: list[str]) -> str:
    out = ""
    for m in metrics:
        effect = row["effect"].get(m)
        mark = MARK if row["within_noise"].get(m) else " "
        out += f"{_num(effect, signed=row['factor'] != DATA_ORDER):>13}{mark}"
    return out


def format_outcome_ablation(doc: dict) -> str:
    a, b, metrics = doc["first"], doc["second"], doc["metrics"]
    floor = doc["noise_floor"]["values"]
    base = doc["baseline_mean"]
    out = [f"Why {a} and {b} end differently, on {doc['framework']}: {describe_budget(doc)}, under data seeds "
           f"{', '.join(str(s) for s in doc['seeds'])}, then evaluated on the held-out split.",
           f"Effect = mean over seeds of (arm − {a}) under the same data seed; ranked by |Δ "
           f"{LABELS.get(doc['rank_metric'], doc['rank_metric'])}|.",
           f"{a} itself (mean over seeds): " + ", ".join(f"{LABELS[m]} {_num(base[m], False)}" for m in metrics),
           f"Noise floor ({doc['noise_floor']['statistic']}): "
           + ", ".join(f"{LABELS[m]} {_num(floor[m], False)}" for m in metrics),
           f"{MARK} = within the noise floor: not distinguishable from data order.", "",
           f"{'factor':<28}" + "".join(f"{'Δ ' + LABELS[m]:>14}" for m in metrics) + f"  {a} -> {b}"]
    for row in doc["effects"]:
        if "error" in row:
            out.append(f"{row['factor']:<28}" + "".join(f"{'—':>14}" for _ in metrics) + f"  ({row['error']})")
            continue
        factor, values = row["factor"], row.get("values")
        shown = f"  {factor_setting(factor, values[a])} -> {factor_setting(factor, values[b])}" if values else ""
        if factor == DATA_ORDER:
            shown = "  range between the baseline's seeds"
        out.append(f"{factor:<28}{_cells(row, metrics)}{shown}")
    out += ["", f"All of {b} at once:"]
    for row in doc["totals"]:
        if "error" in row:
            out.append(f"  {row['factor']:<26} ({row['error']})")
        else:
            out.append(f"  {row['factor']:<26}{_cells(row, metrics)}")
    inter = doc.get("interaction")
    if inter:
        left_out = f" (sum leaves out {', '.join(inter['excluded'])}: they did not run)" if inter["excluded"] else ""
        out += ["", f"Interaction: {inter['whole']} − the sum of the single-factor effects{left_out}"]
        for m in metrics:
            mark = f" {MARK}" if inter["within_noise"].get(m) else ""
            out.append(f"  {LABELS[m]:<14} whole {_num(inter['whole_effect'][m])}, "
                       f"sum {_num(inter['sum_of_factors'][m])}, interaction {_num(inter['interaction'][m])}{mark}")
        out.append("  (the sum carries every arm's seed noise: the floor is a lower bound for the interaction's)")
        if inter.get("note"):
            out.append(f"  note: {inter['note']}")
    prov = doc.get("provenance") or {}
    if doc.get("reused"):
        commits = ", ".join(str(c)[:10] for c in prov.get("git_commits") or [])
        out += ["", f"{len(doc['reused'])} arm runs reused from earlier runs; the arms ran at commit(s) {commits}"
                    + (f" on {'; '.join(map(str, prov['cpus']))}" if prov.get("cpus") else "")]
    return "\n".join(out)
