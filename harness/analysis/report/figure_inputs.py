"""Plain numbers for the figures (harness.analysis.figures holds no statistics) and drawing them."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from harness.analysis import figure_training, figures
from harness.analysis.figure_style import color_for
from harness.analysis.report.memory_levers import peak_bars_input
from harness.analysis.report.memory_timeline import timeline_input
from harness.analysis.report.model import Report
from harness.analysis.report.outcome_ablation import outcome_figure
from harness.analysis.cell_names import global_batch, group_label
from harness.analysis.report.tables import MEMORY_LABELS, memory_metric
from harness.results.store import metric_values


LOSS_MASKS = {"answer": "the answer tokens", "all": "every non-pad token"}
LOSS_NORMS = {"tokens": "per token over the accumulated batch", "mean_of_means": "mean of micro-batch means"}


def loss_definition(record: Mapping) -> str:
    """What a record's training loss is taken over and how it is normalised, as read back from the
    run (its effective settings), else as its spec asked."""
    settings, train = record.get("effective_settings") or {}, (record.get("spec") or {}).get("train") or {}
    mask = settings.get("label_mask") or train.get("label_mask") or "answer"
    norm = settings.get("loss_norm") or train.get("loss_norm") or "tokens"
    return f"loss over {LOSS_MASKS.get(mask, mask)}, {LOSS_NORMS.get(norm, norm)}"


def step_series(groups: dict[tuple, list[dict]], keys: Sequence[str], field: str = "loss") -> list[dict]:
    """Per cell, `field` of the per-step records against step: mean and min–max over ok seeds, on the
    steps every seed logged; with the samples seen by the end of each step (all processes) and the
    cell's loss definition."""
    series = []
    for key, group in groups.items():
        ok = [r for r in group if r["status"] == "ok"]
        logs = [{s["step"]: s[field] for s in (r.get("train") or {}).get("steps") or []
                 if isinstance(s.get(field), (int, float)) and not isinstance(s.get(field), bool)}
                for r in ok]
        logs = [log for log in logs if log]
        if not logs:
            continue
        steps = sorted(set.intersection(*(set(log) for log in logs)))
        if not steps:
            continue
        values = np.array([[log[s] for s in steps] for log in logs], dtype=float)
        cell = dict(zip(keys, key))
        first = next(r for r in ok if (r.get("train") or {}).get("steps"))
        batch = global_batch(first) or _samples_per_step(first)
        series.append({"label": group_label(key, keys, group), "framework": cell.get("framework"),
                       "alignment": cell.get("alignment"), "steps": steps, "global_batch": batch,
                       "samples": [s * batch for s in steps] if batch else None,
                       "panel": loss_definition(first),
                       "mean": values.mean(0).tolist(), "lo": values.min(0).tolist(),
                       "hi": values.max(0).tolist(), "n_seeds": len(logs)})
    return series


def _samples_per_step(record: Mapping) -> int | None:
    """Rank 0's samples per step times the processes: for records from before the global batch was read back."""
    steps = (record.get("train") or {}).get("steps") or []
    world = int((record.get("memory") or {}).get("world_size") or 1)
    return int(steps[0]["samples"]) * world if steps and steps[0].get("samples") else None


def coinciding(series: Sequence[dict], rel: float = 1e-4) -> list[tuple[str, str, float]]:
    """(first, second, largest |Δ|) for each later series that retraces an earlier one on the same x
    within `rel` of the curve's range: drawn one over the other, only the top one would show."""
    out, covered = [], set()
    for j, b in enumerate(series):
        for a in series[:j]:
            if a["label"] in covered or a["x"] != b["x"] or a.get("panel") != b.get("panel"):
                continue
            gap = float(np.max(np.abs(np.subtract(a["mean"], b["mean"]))))
            scale = float(np.ptp(a["mean"])) or 1.0
            if gap <= rel * scale:
                out.append((a["label"], b["label"], gap))
                covered.add(a["label"])
                break
    return out


def pareto_points(groups: dict[tuple, list[dict]], keys: Sequence[str]) -> tuple[list[dict], str, str]:
    all_records = [r for g in groups.values() for r in g]
    mem = memory_metric(all_records)
    use_f1 = bool(metric_values(all_records, "field_f1"))
    points = []
    for key, group in groups.items():
        x = metric_values(group, mem)
        y = metric_values(group, "field_f1" if use_f1 else "cer")
        if not x or not y:
            continue
        if not use_f1:
            y = [1 - v for v in y]
        cell = dict(zip(keys, key))
        points.append({"label": group_label(key, keys, group), "framework": cell.get("framework"),
                       "alignment": cell.get("alignment"),
                       "x": statistics.fmean(x), "y": statistics.fmean(y),
                       "xerr": (min(x), max(x)) if len(x) > 1 else None,
                       "yerr": (min(y), max(y)) if len(y) > 1 else None})
    ylabel = "field F1 (mean over seeds)" if use_f1 else "1 − CER (mean over seeds)"
    xlabel = f"{MEMORY_LABELS[mem]} (MiB), bars: min–max over seeds"
    return points, xlabel, ylabel


def _training_input(groups: dict[tuple, list[dict]], keys: Sequence[str]) -> tuple | None:
    series = step_series(groups, keys, "loss")
    if not series:
        return None
    lr, grad_norm = step_series(groups, keys, "lr"), step_series(groups, keys, "grad_norm")
    batches = {s["global_batch"] for s in series}
    # steps compare only when every cell's step is the same number of samples
    by_samples = len(batches) > 1 and all(s["samples"] for s in series)
    for s in (*series, *lr, *grad_norm):
        s["x"] = s["samples"] if by_samples else s["steps"]
    xlabel = "samples seen (all processes)" if by_samples else \
        f"step ({batches.pop()} samples each)" if len(batches) == 1 and None not in batches else "step"
    # the panel with the most cells first; ties by name, so that the same runs always give the same
    # figure (a set's order changes with the process's string hashing)
    panels = sorted({s["panel"] for s in series}, key=lambda p: (-sum(s["panel"] == p for s in series), p))
    same = coinciding(series)
    caption = ("Mean over seeds; band: min–max over seeds. Colour: framework; line style: alignment or "
               "profile; a marker tells apart cells that share both.")
    if by_samples:
        caption += (" The x axis is samples seen, not steps: the cells' global batches differ ("
                    + ", ".join(f"{s['label']}: {s['global_batch']}" for s in series) + " samples per step).")
    if len(panels) > 1:
        caption += (" The loss is defined differently across cells, so each definition has its own panel "
                    "and only curves within a panel compare.")
    for first, second, gap in same:
        caption += (f" {first} and {second} coincide (largest difference {gap:.2g}): {first} is drawn wide "
                    f"and pale beneath {second}.")
    title = ("Training loss, learning rate and gradient norm per cell" if lr or grad_norm
             else "Training loss per cell")
    return title, figure_training.loss_curves, {"series": series, "lr_series": lr, "grad_norm_series": grad_norm,
                                                "xlabel": xlabel, "panels": panels,
                                                "underlay": [a for a, _, _ in same]}, caption


def figure_inputs(groups: dict[tuple, list[dict]], keys: Sequence[str],
                  parity_docs: Sequence[Mapping]) -> dict:
    inputs = {}
    training = _training_input(groups, keys)
    if training:
        inputs["loss_curves"] = training
    points, xlabel, ylabel = pareto_points(groups, keys)
    if points:
        inputs["pareto"] = ("Quality against peak memory, Pareto frontier", figures.pareto,
                            {"points": points, "xlabel": xlabel, "ylabel": ylabel})
    labels, values, lows, highs, colors = [], [], [], [], []
    for key, group in groups.items():
        v = metric_values(group, "train_samples_per_s")
        if v:
            labels.append(group_label(key, keys, group))
            values.append(statistics.median(v))
            lows.append(min(v))
            highs.append(max(v))
            colors.append(color_for(dict(zip(keys, key)).get("framework") or labels[-1]))
    if values:
        inputs["throughput"] = ("Training throughput", figures.bars,
                                {"labels": labels, "values": values, "lows": lows, "highs": highs,
                                 "colors": colors, "ylabel": "samples/s",
                                 "title": "Training throughput: median, bars = min–max over seeds"})
    peaks = peak_bars_input(groups, keys)
    if peaks:
        inputs["memory_peaks"] = peaks
    timeline = timeline_input(groups, keys)
    if timeline:
        inputs["memory_timeline"] = timeline
    n = n_outcome = 0
    for doc in parity_docs:
        if doc.get("mode") == "outcome":
            n_outcome += 1
            inputs["outcome_ablation" if n_outcome == 1 else f"outcome_ablation_{n_outcome}"] = (
                f"Outcome ablation ({doc.get('_label', '')})", figures.effect_panels, outcome_figure(doc),
                f"Each factor of {doc.get('first')} set alone to {doc.get('second')}'s value, ranked as in the table. "
                "Bars: the effect (mean over data seeds of arm − baseline); whiskers: the lowest and highest per-seed "
                "difference; grey band: the noise floor, and grey bars lie within it (not distinguishable from data "
                "order). Below: the sum of the single-factor effects and the whole recipe at once; where the two "
                "differ, the factors interact. Left: the ranking metric; right: the extraction metric whose effects "
                "stand furthest above its noise floor.")
            continue
        rows = doc.get("ablation") or [r for r in doc.get("factors") or [] if r.get("max_abs_dloss") is not None]
        ablation = sorted(rows, key=lambda r: -(r.get("max_abs_dloss") or 0.0))
        if not ablation:
            continue
        n += 1
        inputs["ablation" if n == 1 else f"ablation_{n}"] = (
            f"Ablation ({doc.get('_label', '')})", figures.bars,
            {"labels": [str(r.get("factor")) for r in ablation],
             "values": [float(r.get("max_abs_dloss") or 0.0) for r in ablation],
             "ylabel": "max |Δloss| vs aligned" if doc.get("ablation") else f"max |Δloss| vs {doc.get('first')}",
             "horizontal": True,
             "title": "Ablation: loss gap when one factor reverts to native" if doc.get("ablation") else
                      f"Ablation: loss gap when one factor of {doc.get('first')} takes {doc.get('second')}'s value"})
    return inputs


def draw_figures(report: Report, figures_dir: Path) -> None:
    """Draw each figure input: (title, draw function, kwargs), with a caption as a fourth item
    when the figure needs a paragraph under it (the others say everything in their title and axes)."""
    for name, (title, draw, kwargs, *caption) in report.figure_inputs.items():
        png = draw(stem=figures_dir / name, **kwargs)
        report.figures.append({"name": name, "title": title, "png": png, "pdf": png.with_suffix(".pdf"),
                               "caption": caption[0] if caption else None})
