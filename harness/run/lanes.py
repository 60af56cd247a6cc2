"""Cells side by side: lanes, each pinned to its own cores, so a suite uses the machine without one
cell's timing depending on what runs beside it.

Measured on a 2-core CPU with the default suite's peft cell (40 steps of 4, tiny Qwen2-VL): a step takes
0.43 s with 2 threads on 2 cores, 0.59 s with 1 thread pinned to 1 core, and 0.58 s on that core while
the same cell runs on the other one. Two lanes of one core each therefore train 1.47 times as many
samples a second as one cell on both cores, and a cell's speed in a lane is its speed alone on that core:
every cell of a suite is timed on the same share of the machine, whichever cell runs beside it.

`lanes: auto` (a suite's `lanes`, or `lorabench run --lanes`) means one lane per core when every cell
to run is a one-process CPU run; a GPU or multi-process cell runs the suite in one lane, on the whole
machine.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence

# Job preparation builds datasets and fills the canvas cache: one lane at a time.
PREPARE_LOCK = threading.Lock()
_CANCEL = threading.Event()


def cancelled() -> bool:
    """Whether Ctrl-C asked the lanes to stop (their workers are then killed and recorded as cancelled)."""
    return _CANCEL.is_set()


def _available_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no pinning
        return []


def lane_cpus(lanes: int | str, cells: Sequence) -> list[list[int]] | None:
    """The cores of each lane, or None for one lane on the whole machine (no pinning).

    `lanes`: a number, or "auto" (one per core when every cell is a one-process CPU run). Lanes get
    equal shares of the cores this process may use; more lanes than cores is one per core.
    """
    one_process_cpu = all(c.spec.device == "cpu" and c.spec.distributed.world_size <= 1 for c in cells)
    cpus = _available_cpus()
    if lanes == "auto":
        lanes = len(cpus) if one_process_cpu else 1
    lanes = min(int(lanes), len(cpus))
    if lanes <= 1:
        return None
    if not one_process_cpu:
        from harness.errors import UserError

        raise UserError("lanes > 1 need one-process CPU cells: a GPU or multi-process cell needs the whole machine")
    # a lane's share of the cores follows the lanes asked for, not the cells left: a cell resumed alone
    # runs on the share its neighbours had, so its timing stays comparable with theirs
    share = len(cpus) // lanes
    return [cpus[i * share:(i + 1) * share] for i in range(min(lanes, len(cells)))]


def run_in_lanes(cells: Sequence, cpus: list[list[int]], run_one: Callable) -> list[dict]:
    """Run `run_one(cell, lane_cpus)` for every cell, `len(cpus)` at a time, in the cells' order as lanes
    free up; returns the records in the cells' order. Ctrl-C stops every lane: running cells are
    recorded as cancelled, cells not started are left to `--resume`."""
    todo: queue.Queue = queue.Queue()
    for i, cell in enumerate(cells):
        todo.put((i, cell))
    records: dict[int, dict] = {}
    errors: list[BaseException] = []
    _CANCEL.clear()

    def lane(cores: list[int]) -> None:
        while not _CANCEL.is_set():
            try:
                i, cell = todo.get_nowait()
            except queue.Empty:
                return
            try:
                records[i] = run_one(cell, cores)
            except BaseException as exc:  # a harness error in one lane stops the others too
                errors.append(exc)
                _CANCEL.set()
                return
            if records[i]["status"] == "cancelled":
                _CANCEL.set()

    threads = [threading.Thread(target=lane, args=(cores,), name=f"lane-{k}", daemon=True)
               for k, cores in enumerate(cpus)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.5)
    except KeyboardInterrupt:
        _CANCEL.set()
        for t in threads:
            t.join()
        raise
    if errors:
        raise errors[0]
    return [records[i] for i in sorted(records)]
