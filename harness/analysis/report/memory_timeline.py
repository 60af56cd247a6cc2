"""The memory-over-time figure: each cell's timeline sidecar as plain series for
harness.analysis.figure_memory, one panel per cell with its peak and where it happened.

A run keeps one series per process in `<run_id>.memory_timeline.jsonl` (harness.run.memory_timeline):
the training ranks (phases "load" and "train") and the eval worker ("eval"). A cell is drawn from its
first ok seed that has the file: rank 0's training process, then the eval process placed right after
it (it starts when training has ended). Records without a timeline (older runs, baselines, whose
sidecars are not bundled) are left out; with none at all there is no figure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from harness.analysis import figure_memory
from harness.analysis.cell_names import group_label
from harness.results.store import resolve_sidecar

TITLE = "Memory over time per cell"
CAPTION = ("One panel per cell, all on one memory scale: its first ok seed, rank 0's training process, "
           "then the eval worker (a separate process, drawn from the moment training ended). Shading "
           "marks the phase: load (process start through imports, model loading and set-up to the "
           "first training hook), train (unshaded), eval. The triangle marks the peak, written with the "
           "training step it fell in (from the steps' own times) or the phase. CPU: anonymous memory "
           "(RssAnon: heap and tensors, no file-backed library pages); GPU (when run on one): memory "
           "allocated by PyTorch, summed over the process's devices, drawn instead. Each point is the "
           "maximum over its time bucket (at most 300 points per process), so peaks are kept.")


def read_timeline(record: Mapping) -> list[dict] | None:
    """The series of a record's timeline sidecar; None when it has none or it cannot be read."""
    path = resolve_sidecar(record, (record.get("memory") or {}).get("timeline_file"))
    if path is None:
        return None
    try:
        series = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    return series if all(isinstance(s, dict) and isinstance(s.get("points"), list) for s in series) else None


def _gpu_total(point: Mapping) -> float | None:
    gpu = point.get("gpu")
    return sum(g.get("allocated_mib") or 0.0 for g in gpu) if gpu else None


def cell_series(record: Mapping, series: Sequence[Mapping]) -> dict | None:
    """One line: rank 0's training points, then the eval points shifted to start where training ended."""
    train = next((s for s in series if s.get("process") == "train" and s.get("rank") == 0), None)
    if train is None or not train["points"]:
        return None
    points = list(train["points"])
    offset = points[-1]["t_s"]
    for s in series:
        if s.get("process") == "eval":
            points += [{**p, "t_s": offset + p["t_s"]} for p in s["points"]]
    return {"t": [p["t_s"] for p in points], "phase": [p.get("phase") for p in points],
            "cpu": [p.get("anon_mib") for p in points], "gpu": [_gpu_total(p) for p in points],
            "run_id": record["run_id"]}


def peak_of(record: Mapping, line: Mapping) -> dict | None:
    """The highest point of the line drawn (GPU when it has GPU values, else CPU) and where it fell:
    `step k` when in training (the step whose cumulative time, from the first training point, holds
    it), else the phase."""
    field = "gpu" if any(v is not None for v in line["gpu"]) else "cpu"
    points = [(v, t, ph) for v, t, ph in zip(line[field], line["t"], line["phase"]) if v is not None]
    if not points:
        return None
    value, t, phase = max(points, key=lambda p: p[0])
    where = f"in {phase}"
    train_start = next((x for x, ph in zip(line["t"], line["phase"]) if ph == "train"), None)
    steps = (record.get("train") or {}).get("steps") or []
    if phase == "train" and train_start is not None and steps:
        elapsed, step = t - train_start, steps[-1].get("step")
        for s in steps:
            elapsed -= s.get("seconds") or 0.0
            if elapsed <= 0:
                step = s.get("step")
                break
        where = f"step {step}"
    return {"t": t, "value": value, "where": where}


def timeline_input(groups: dict[tuple, list[dict]], keys: Sequence[str]) -> tuple | None:
    """(title, draw function, kwargs, caption) for the figure, or None when no cell has a timeline."""
    lines = []
    for key, group in groups.items():
        ok = sorted((r for r in group if r["status"] == "ok"), key=lambda r: str(r.get("cell", {}).get("seed")))
        for record in ok:
            series = read_timeline(record)
            line = cell_series(record, series) if series else None
            if line:
                cell = dict(zip(keys, key))
                lines.append({"label": group_label(key, keys, group), "framework": cell.get("framework"),
                              "alignment": cell.get("alignment"), "peak": peak_of(record, line), **line})
                break
    if not lines:
        return None
    return TITLE, figure_memory.memory_timeline, {"series": lines}, CAPTION
