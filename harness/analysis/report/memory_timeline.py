"""The memory-over-time figure: each cell's timeline sidecar as plain series for harness.analysis.figures.

A run keeps one series per process in `<run_id>.memory_timeline.jsonl` (harness.run.memory_timeline):
the training ranks (phases "load" and "train") and the eval worker ("eval"). A cell is drawn from its
first ok seed that has the file: rank 0's training process, then the eval process placed right after
it (it starts when training has ended). Records without a timeline (older runs, baselines, whose
sidecars are not bundled) are left out; with none at all there is no figure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from harness.analysis import figures
from harness.analysis.report.model import label
from harness.results.store import resolve_sidecar

TITLE = "Memory over time per cell"
CAPTION = ("One line per cell: its first ok seed, rank 0's training process, then the eval worker (a "
           "separate process, drawn from the moment training ended). Line style marks the phase: load "
           "(process start through imports, model loading and set-up to the first training hook), "
           "train, eval. CPU: anonymous memory (RssAnon: heap and tensors, no file-backed library "
           "pages); GPU (when run on one): memory allocated by PyTorch, summed over the process's "
           "devices. Each point is the maximum over its time bucket (at most 300 points per process), "
           "so peaks are kept.")


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


def timeline_input(groups: dict[tuple, list[dict]], keys: Sequence[str]) -> tuple | None:
    """(title, draw function, kwargs) for the figure, or None when no cell has a timeline."""
    lines = []
    for key, group in groups.items():
        ok = sorted((r for r in group if r["status"] == "ok"), key=lambda r: str(r.get("cell", {}).get("seed")))
        for record in ok:
            series = read_timeline(record)
            line = cell_series(record, series) if series else None
            if line:
                lines.append({"label": label(key), "framework": dict(zip(keys, key)).get("framework"), **line})
                break
    if not lines:
        return None
    return TITLE, figures.memory_timeline, {"series": lines}
