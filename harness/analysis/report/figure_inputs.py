"""Plain numbers for the figures (harness.analysis.figures holds no statistics) and drawing them."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from harness.analysis import figures
from harness.analysis.report.memory_timeline import CAPTION as MEMORY_TIMELINE_CAPTION, timeline_input
from harness.analysis.report.model import Report, label
from harness.analysis.report.tables import MEMORY_LABELS, memory_metric
from harness.results.store import metric_values


def step_series(groups: dict[tuple, list[dict]], keys: Sequence[str], field: str = "loss") -> list[dict]:
    """Per cell, `field` of the per-step records against step: mean and min–max over ok seeds, on the
    steps every seed logged."""
    series = []
    for key, group in groups.items():
        logs = [{s["step"]: s[field] for s in (r.get("train") or {}).get("steps") or []
                 if isinstance(s.get(field), (int, float)) and not isinstance(s.get(field), bool)}
                for r in group if r["status"] == "ok"]
        logs = [log for log in logs if log]
        if not logs:
            continue
        steps = sorted(set.intersection(*(set(log) for log in logs)))
        if not steps:
            continue
        values = np.array([[log[s] for s in steps] for log in logs], dtype=float)
        cell = dict(zip(keys, key))
        series.append({"label": label(key), "framework": cell.get("framework"),
                       "alignment": cell.get("alignment"), "steps": steps,
                       "mean": values.mean(0).tolist(), "lo": values.min(0).tolist(),
                       "hi": values.max(0).tolist(), "n_seeds": len(logs)})
    return series


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
        points.append({"label": label(key), "framework": cell.get("framework"),
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
    title = ("Training loss, learning rate and gradient norm per cell" if lr or grad_norm
             else "Training loss per cell")
    return title, figures.loss_curves, {"series": series, "lr_series": lr, "grad_norm_series": grad_norm}


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
            labels.append(label(key))
            values.append(statistics.median(v))
            lows.append(min(v))
            highs.append(max(v))
            colors.append(figures.color_for(dict(zip(keys, key)).get("framework") or label(key)))
    if values:
        inputs["throughput"] = ("Training throughput", figures.bars,
                                {"labels": labels, "values": values, "lows": lows, "highs": highs,
                                 "colors": colors, "ylabel": "samples/s",
                                 "title": "Training throughput: median, bars = min–max over seeds"})
    timeline = timeline_input(groups, keys)
    if timeline:
        inputs["memory_timeline"] = timeline
    n = 0
    for doc in parity_docs:
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


# Figures that come with a paragraph under them (the others say everything in their title and axes).
FIGURE_CAPTIONS = {"memory_timeline": MEMORY_TIMELINE_CAPTION}


def draw_figures(report: Report, figures_dir: Path) -> None:
    for name, (title, draw, kwargs) in report.figure_inputs.items():
        png = draw(stem=figures_dir / name, **kwargs)
        report.figures.append({"name": name, "title": title, "png": png, "pdf": png.with_suffix(".pdf"),
                               "caption": FIGURE_CAPTIONS.get(name)})
