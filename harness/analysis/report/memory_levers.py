"""Peak memory per cell at a glance: what each cell measured, split by what the record knows, beside
what the memory planner (harness.planner) estimates for the same set-up.

Measured (the cell's first ok seed, the largest rank): the peak above the post-import baseline, the
figure the levers table leads with. With a timeline sidecar its load-phase peak splits the bar into
"model load and set-up" (weights, LoRA, optimizer and engine set-up) and what training added on top
(activations, gradients, optimizer states, transient buffers); without one the bar is one piece.

Estimate: the planner's terms for the run's own batch and longest sequence, the way `lorabench plan
--validate` compares them (harness.planner.validate.plan_input_for): weights, gradients and optimizer
states, activations and buffers, and on the CPU the host-side (offloaded) states per process. The
planner does not model the runtime's own state (data, processor, Trainer, allocator caches); in a
suite of levers that term is measured once on each framework's `baseline` lever and added to every
estimate of that framework, as the validation's "calibrated" estimate does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from harness.analysis import figure_memory
from harness.analysis.report.memory_timeline import read_timeline
from harness.analysis.cell_names import group_label
from harness.errors import UserError
from harness.planner.hf_shape import shape_from_hf_config
from harness.planner.memory import estimate
from harness.planner.validate import plan_input_for

MIB = 1024 * 1024
TITLE = "Peak memory per cell: measured and planned"
LOAD_PART = "model load and set-up"
TRAIN_PART = "added by training"
WHOLE_PART = "peak (no load-phase peak to split at)"
RUNTIME_PART = "runtime state (from the baseline)"
# the planner's terms, folded into what a reader asks about
ESTIMATE_PARTS = {"weights": ("frozen_weights", "lora_weights", "trained_base_weights"),
                  "gradients and optimizer states": ("gradients", "optimizer_states", "optimizer_step"),
                  "activations and buffers": ("activations", "transient", "zero_buffers")}
HOST_PART = "host-side states, per process"
MEASURED_CAPTION = ("Upper bar of each pair: the peak anonymous memory above the post-import baseline that the "
                    "cell measured (its first ok seed, the largest rank), split at the load phase's peak into "
                    "model load and set-up and what training added on top (activations, gradients, optimizer "
                    "states, transient buffers). ")
PLANNED_CAPTION = ("Lower, hatched bar: the memory planner's estimate for the same set-up (the run's batch and "
                   "longest sequence, as `lorabench plan --validate` compares them), by term. The planner does "
                   "not model the runtime's own state (data, processor, Trainer, allocator caches); where the "
                   "suite has a lever named baseline, that term is measured once on each framework's baseline "
                   "and added to its estimates (grey).")
NO_PLAN_CAPTION = ("No planner estimate: the planner could not rebuild these set-ups here (the model directory "
                   "the runs used is not on this machine).")


def _largest_rank(record: Mapping) -> Mapping | None:
    ranks = [r for r in (record.get("memory") or {}).get("per_rank") or []
             if r.get("peak_anon_above_baseline_mib") is not None]
    return max(ranks, key=lambda r: r["peak_anon_above_baseline_mib"]) if ranks else None


def measured_parts(record: Mapping) -> list[tuple[str, float]] | None:
    """The measured peak above imports, split at the load phase's peak when the timeline has it."""
    rank = _largest_rank(record)
    if rank is None:
        return None
    total = rank["peak_anon_above_baseline_mib"]
    series = read_timeline(record) or []
    train = next((s for s in series if s.get("process") == "train" and s.get("rank") == rank.get("rank")), None)
    load_peak = ((train or {}).get("phase_peaks") or {}).get("load", {}).get("peak_anon_mib")
    baseline = rank.get("baseline_anon_mib")
    if load_peak is None or baseline is None:
        return [(WHOLE_PART, total)]
    loaded = min(total, max(0.0, load_peak - baseline))
    return [(LOAD_PART, loaded), (TRAIN_PART, total - loaded)]


def planned_parts(record: Mapping) -> list[tuple[str, float]] | None:
    """The planner's estimate for the record's set-up by term (MiB per process); None when the
    planner cannot rebuild it here (no model directory on this machine, a set-up it does not model)."""
    try:
        inputs = plan_input_for(dict(record), shape_from_hf_config(record["env"]["model"]["path"]))
        plan = estimate(inputs)
    except (KeyError, TypeError, ValueError, OSError, UserError):
        return None
    parts = [(name, sum(plan.gpu_bytes.get(k, 0) for k in keys) / MIB) for name, keys in ESTIMATE_PARTS.items()]
    if record["spec"].get("device") != "cuda":  # on the CPU the host side lives in the same memory
        host = (plan.cpu_bytes.get("total", 0) - plan.cpu_bytes.get("process_baseline", 0)) / inputs.world_size
        parts.append((HOST_PART, host / MIB))
    return [(name, mib) for name, mib in parts if mib > 0]


def peak_bars_input(groups: dict[tuple, list[dict]], keys: Sequence[str]) -> tuple | None:
    """(title, draw function, kwargs, caption), or None when no cell measured anonymous memory."""
    cells, firsts = [], []
    for key, group in groups.items():
        ok = sorted((r for r in group if r["status"] == "ok"), key=lambda r: str(r.get("cell", {}).get("seed")))
        record = next((r for r in ok if measured_parts(r)), None)
        if record is None:
            continue
        cells.append({"label": group_label(key, keys, group), "measured": measured_parts(record),
                      "estimate": planned_parts(record)})
        firsts.append(record)
    if not cells:
        return None
    _add_runtime_term(cells, firsts)
    caption = MEASURED_CAPTION + (PLANNED_CAPTION if any(c["estimate"] for c in cells) else NO_PLAN_CAPTION)
    return TITLE, figure_memory.peak_bars, {"cells": cells, "xlabel": "MiB above the post-import baseline "
                                            "(largest rank)"}, caption


def _add_runtime_term(cells: list[dict], records: Sequence[Mapping]) -> None:
    """Each framework's runtime term, measured − estimated on its `baseline` lever, added to its estimates."""
    runtime = {}
    for cell, record in zip(cells, records):
        if record.get("cell", {}).get("lever") == "baseline" and cell["estimate"]:
            gap = sum(m for _, m in cell["measured"]) - sum(m for _, m in cell["estimate"])
            runtime[record.get("cell", {}).get("framework")] = max(0.0, gap)
    for cell, record in zip(cells, records):
        term = runtime.get(record.get("cell", {}).get("framework"))
        if cell["estimate"] and term:
            cell["estimate"] = [*cell["estimate"], (RUNTIME_PART, term)]
