"""The memory timeline of a run: a short series of memory over time per process, and its sidecar file.

The meter (harness.run.meters) feeds it one sample every 10 ms; the runner writes the series of all
processes of a run (training ranks, then the eval worker) beside the record as
`<run_id>.memory_timeline.jsonl`, which the report draws.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.results.store import write_text_atomic

MIB = 1024 * 1024
TIMELINE_MAX_POINTS = 300


class MemoryTimeline:
    """A memory series that stays short and keeps the peaks.

    Samples fall into time buckets and each point holds the maximum of every figure over its bucket,
    so downsampling never hides a peak. A phase change starts a new point. When the points reach
    twice `max_points`, neighbours of the same phase merge (maximum again) and the bucket doubles:
    any duration fits in bounded memory. `points()` merges once more, down to `max_points`.
    """

    def __init__(self, max_points: int = TIMELINE_MAX_POINTS, bucket_s: float = 0.05):
        self.max_points = max_points
        self.bucket_s = bucket_s
        # each point: [t_s, phase, anon_bytes, rss_bytes, [(allocated, reserved) per GPU]]
        self._points: list[list] = []
        self._open: list | None = None

    def add(self, t_s: float, phase: str, anon: int, rss: int, gpu=()) -> None:
        point = self._open
        if point is not None and point[1] == phase and t_s - point[0] < self.bucket_s:
            self._open = _merged(point, [t_s, phase, anon, rss, list(gpu)])
            return
        if point is not None:
            self._points.append(point)
            if len(self._points) >= 2 * self.max_points:
                self._points = _halved(self._points)
                self.bucket_s *= 2
        self._open = [t_s, phase, anon, rss, list(gpu)]

    def points(self) -> list[dict]:
        """The series, at most `max_points` long (more only when phases alternate that often):
        [{"t_s", "phase", "anon_mib", "rss_mib", "gpu": [{"device", "allocated_mib", "reserved_mib"}]}],
        "gpu" only where CUDA was in use."""
        points = self._points + ([self._open] if self._open is not None else [])
        while len(points) > self.max_points:
            fewer = _halved(points)
            if len(fewer) == len(points):
                break
            points = fewer
        return [_point_dict(p) for p in points]


def _merged(a: list, b: list) -> list:
    """One point for two neighbours: the first one's time, the maximum of each figure."""
    gpu = [(max(x[0], y[0]), max(x[1], y[1])) for x, y in zip(a[4], b[4])] or a[4] or b[4]
    return [a[0], a[1], max(a[2], b[2]), max(a[3], b[3]), gpu]


def _halved(points: list[list]) -> list[list]:
    out, i = [], 0
    while i < len(points):
        if i + 1 < len(points) and points[i][1] == points[i + 1][1]:
            out.append(_merged(points[i], points[i + 1]))
            i += 2
        else:
            out.append(points[i])
            i += 1
    return out


def _point_dict(p: list) -> dict:
    out = {"t_s": round(p[0], 3), "phase": p[1], "anon_mib": round(p[2] / MIB, 2), "rss_mib": round(p[3] / MIB, 2)}
    if p[4]:
        out["gpu"] = [{"device": d, "allocated_mib": round(a / MIB, 2), "reserved_mib": round(r / MIB, 2)}
                      for d, (a, r) in enumerate(p[4])]
    return out


def timeline_series(ranks: list[dict], eval_memory: dict | None) -> list[dict]:
    """The lines of a run's `<run_id>.memory_timeline.jsonl`: one series per process, training ranks
    first, then the eval worker: {"process", "rank", "phase_peaks", "points"}."""
    series = [{"process": "train", "rank": r["rank"], "phase_peaks": r["memory"].get("phase_peaks", {}),
               "points": r["memory"]["timeline"]}
              for r in sorted(ranks, key=lambda r: r["rank"]) if r["memory"].get("timeline")]
    if eval_memory and eval_memory.get("timeline"):
        series.append({"process": "eval", "rank": 0, "phase_peaks": eval_memory.get("phase_peaks", {}),
                       "points": eval_memory["timeline"]})
    return series


def save_timeline(runs_dir, run_id: str, ranks: list[dict], eval_memory_file) -> str | None:
    """Write the timeline beside the record (temp file + rename); returns its name, relative to the
    record's directory, or None when no process kept one. JSON lines, like the other sidecars, so
    the record loader (which reads runs/*.json) never mistakes it for a record."""
    eval_path = Path(eval_memory_file) if eval_memory_file else None
    eval_memory = json.loads(eval_path.read_text()) if eval_path and eval_path.is_file() else None
    series = timeline_series(ranks, eval_memory)
    if not series:
        return None
    name = f"{run_id}.memory_timeline.jsonl"
    write_text_atomic(Path(runs_dir) / name, "".join(json.dumps(s) + "\n" for s in series))
    return name

