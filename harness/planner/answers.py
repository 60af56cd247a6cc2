"""What `lorabench plan` answers from an estimate: the error band, whether it fits, the verdict line and
the largest max_length that fits.

The band comes from the planner's error on the published measurements it was not fitted on
(harness.planner.published): the measured figure lay between `estimate x low` and `estimate x high`
for every held-out row, so the verdict "fits" is given only when the band's top fits.
"""

from __future__ import annotations

import dataclasses
import functools

from harness.planner.memory import DEFAULT_BATCH_GRID, DEFAULT_MAX_LENGTH_GRID, GIB, Plan, PlanInput, estimate
from harness.planner.published import Band, validate_published


@functools.lru_cache(maxsize=1)
def held_out_band() -> Band:
    """The band from the held-out published rows (computed once per process: a few dozen estimates)."""
    return validate_published().band


def top_bytes(plan: Plan, band: Band | None = None) -> float:
    band = held_out_band() if band is None else band
    return plan.gpu_total_bytes * band.high


def fits(plan: Plan, gpu_gib: float | None = None, band: Band | None = None) -> bool:
    """True when the band's top of the per-GPU total is within `gpu_gib` (default: the plan's gpu_mem_gib).
    `band=Band()` judges the estimate itself."""
    gpu_gib = plan.inputs.gpu_mem_gib if gpu_gib is None else gpu_gib
    return top_bytes(plan, band) <= gpu_gib * GIB


def verdict(plan: Plan, gpu_gib: float | None = None, band: Band | None = None) -> str:
    """'fits on 3 x 24 GiB (headroom 5.21 GiB at the band's top)' or 'does not fit on 3 x 24 GiB (short by
    1.32 GiB at the band's top)'."""
    band = held_out_band() if band is None else band
    gpu_gib = plan.inputs.gpu_mem_gib if gpu_gib is None else gpu_gib
    margin = gpu_gib - top_bytes(plan, band) / GIB
    where = f"{plan.inputs.world_size} x {gpu_gib:g} GiB"
    at = " at the band's top" if band.high != 1.0 else ""
    if fits(plan, gpu_gib, band):
        return f"fits on {where} (headroom {margin:.2f} GiB{at})"
    return f"does not fit on {where} (short by {-margin:.2f} GiB{at})"


def plan_dict(plan: Plan, band: Band | None = None) -> dict:
    """The plan as JSON, with the band, the fit and the verdict."""
    band = held_out_band() if band is None else band
    low, high = band.range_gib(plan)
    return {**plan.to_dict(), "band_gib": [round(low, 4), round(high, 4)],
            "band_ratio": [band.low, band.high], "fits": fits(plan, band=band), "verdict": verdict(plan, band=band)}


def search_fits(inputs: PlanInput, batches=DEFAULT_BATCH_GRID, max_lengths=DEFAULT_MAX_LENGTH_GRID,
                band: Band | None = None) -> list[dict]:
    """For each micro batch size, the largest max_length on the grid whose band top fits
    inputs.gpu_mem_gib (None if even the smallest does not), with its total and headroom in GiB."""
    band = held_out_band() if band is None else band
    rows = []
    for batch in batches:
        best = None
        for max_length in sorted(max_lengths):
            plan = estimate(dataclasses.replace(inputs, micro_batch_size=batch, max_length=max_length))
            if not fits(plan, band=band):
                break  # memory grows with max_length: nothing longer fits either
            best = plan
        rows.append({"batch": batch,
                     "max_length": best.inputs.max_length if best else None,
                     "total_gib": round(best.gpu_total_gib, 2) if best else None,
                     "headroom_gib": round(inputs.gpu_mem_gib - top_bytes(best, band) / GIB, 2) if best else None})
    return rows
