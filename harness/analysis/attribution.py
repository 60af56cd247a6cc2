"""Attribution by outcome: which factor changes what a fine-tune ends up with, above the data-order noise.

Input: the held-out outcome of every arm under every data seed (arms: the baseline recipe, the baseline
with one factor switched, the whole other recipe). Pure arithmetic on those numbers, so it is tested on
synthetic ones:

- effect of an arm = mean over seeds of (arm − baseline) under the same data seed: the pairing cancels
  what the seed's data order does to both arms alike;
- noise floor (per metric) = the largest range, max − min over the data seeds, of any one arm's outcome:
  how far data order alone moves a result of this budget. With 2 seeds that is |seed 1 − seed 0|; it
  grows with more seeds, as a floor should. An effect with |effect| ≤ floor is marked "not
  distinguishable from data order";
- data order is a factor like the others: its row is the range between the baseline's own seeds;
- interaction = the whole-recipe effect − the sum of the single-factor effects (0 when the factors add up).
  It carries the seed noise of every arm in the sum, so the floor of one arm is a lower bound for its
  noise: an interaction marked within the floor is surely noise, one just above it may be noise too.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

OUTCOME_METRICS = ("heldout_loss", "field_f1", "field_anls", "cer")
OUTCOME_LABELS = {"heldout_loss": "held-out loss", "field_f1": "field F1", "field_anls": "ANLS", "cer": "CER"}
LOWER_IS_BETTER = {"heldout_loss": True, "field_f1": False, "field_anls": False, "cer": True}
NOISE_STATISTIC = ("largest range (max − min) over the data seeds of any one arm's outcome; with 2 seeds, "
                   "the largest |seed 1 − seed 0|")
DATA_ORDER = "data order (seeds)"  # the seeds' own spread; not the recipe's `data_order` setting
WITHIN_NOISE = "not distinguishable from data order"

Outcomes = Mapping[int, Mapping[str, float | None]]  # data seed -> metric -> value


def outcome_of(summary: Mapping) -> dict[str, float | None]:
    """The outcome metrics of an eval.json (None where the task has no such metric)."""
    metrics = summary.get("metrics") or {}
    loss = (summary.get("heldout_loss") or {}).get("loss")
    return {"heldout_loss": loss, **{m: metrics.get(m) for m in OUTCOME_METRICS if m != "heldout_loss"}}


def _values(outcomes: Outcomes, metric: str) -> list[float]:
    return [float(v) for o in outcomes.values() if (v := o.get(metric)) is not None]


def seed_range(outcomes: Outcomes, metric: str) -> float | None:
    """max − min of one arm's metric over its seeds (None with fewer than two)."""
    values = _values(outcomes, metric)
    return max(values) - min(values) if len(values) >= 2 else None


def paired_effect(arm: Outcomes, baseline: Outcomes, metric: str) -> tuple[float | None, list[float]]:
    """(mean over shared seeds of arm − baseline, the per-seed differences)."""
    diffs = [float(a) - float(b) for seed in sorted(arm)
             if seed in baseline and (a := arm[seed].get(metric)) is not None
             and (b := baseline[seed].get(metric)) is not None]
    return (statistics.fmean(diffs) if diffs else None), diffs


def noise_floor(arms: Mapping[str, Outcomes], metrics: Sequence[str]) -> dict[str, float | None]:
    """Per metric, the largest seed range of any arm (None when no arm has two seeds with a value)."""
    floor: dict[str, float | None] = {}
    for m in metrics:
        ranges = [r for o in arms.values() if (r := seed_range(o, m)) is not None]
        floor[m] = max(ranges) if ranges else None
    return floor


def within(value: float | None, floor: float | None) -> bool | None:
    """|value| ≤ floor; None when either is unknown."""
    if value is None or floor is None:
        return None
    return abs(value) <= floor


def attribute(arms: Mapping[str, Outcomes], baseline: str, factors: Sequence[str], wholes: Sequence[str],
              metrics: Sequence[str] = OUTCOME_METRICS, rank_metric: str = "heldout_loss") -> dict:
    """Effects, noise floor and interaction from arm label -> data seed -> metric -> value.

    `factors`: the single-factor arms; `wholes`: the whole-other-recipe arms, the first on the same
    framework as the factors (its effect is compared with the sum of theirs). Arms missing from `arms`
    (they could not run) are left out of the effects and named in the interaction's `excluded`."""
    base = arms[baseline]
    floor = noise_floor(arms, metrics)

    def row(label: str) -> dict:
        effect, per_seed = {}, {}
        for m in metrics:
            effect[m], per_seed[m] = paired_effect(arms[label], base, m)
        return {"factor": label, "effect": effect, "per_seed": per_seed,
                "seed_range": {m: seed_range(arms[label], m) for m in metrics},
                "within_noise": {m: within(effect[m], floor[m]) for m in metrics}}

    rows = [row(f) for f in factors if f in arms]
    order = {m: seed_range(base, m) for m in metrics}
    rows.append({"factor": DATA_ORDER, "effect": order, "per_seed": {m: _values(base, m) for m in metrics},
                 "seed_range": order, "within_noise": {m: within(order[m], floor[m]) for m in metrics},
                 "note": f"the range between {baseline}'s own data seeds; part of the noise floor by construction"})
    rows.sort(key=lambda r: -abs(r["effect"].get(rank_metric) or 0.0))
    totals = [row(w) for w in wholes if w in arms]
    singles = [r for r in rows if r["factor"] != DATA_ORDER]
    interaction = None
    if totals:
        whole = totals[0]
        summed = {m: sum(v for r in singles if (v := r["effect"][m]) is not None) for m in metrics}
        gap = {m: (whole["effect"][m] - summed[m]) if whole["effect"][m] is not None else None for m in metrics}
        interaction = {"whole": whole["factor"], "whole_effect": whole["effect"], "sum_of_factors": summed,
                       "interaction": gap, "within_noise": {m: within(gap[m], floor[m]) for m in metrics},
                       "excluded": [f for f in factors if f not in arms]}
    return {"metrics": list(metrics), "rank_metric": rank_metric, "baseline": baseline,
            "baseline_mean": {m: statistics.fmean(v) if (v := _values(base, m)) else None for m in metrics},
            "noise_floor": {"statistic": NOISE_STATISTIC, "values": floor,
                            "per_arm": {label: {m: seed_range(o, m) for m in metrics} for label, o in arms.items()}},
            "effects": rows, "totals": totals, "interaction": interaction}


def describe_budget(doc: Mapping) -> str:
    """How long each arm of an outcome ablation trained, for a caption."""
    budget = doc.get("budget") or {}
    steps = f"{doc.get('first')} {doc.get('steps')} steps"
    if budget.get("kind") == "samples":
        return (f"every arm trained on {budget.get('samples')} samples ({steps}; an arm with another global "
                "batch takes as many steps as it needs for the same samples)")
    return f"every arm trained {doc.get('steps')} steps, whatever its global batch"
