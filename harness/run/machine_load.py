"""What else the machine was doing while a cell ran, so a timing taken under load is marked as such.

A cell's speed on a 2-core machine halves when another CPU-bound process runs beside it, and nothing
in the timing itself says so. The runner reads the machine's CPU counters (/proc/stat) and its own
CPU time (itself and every worker it waited for: `getrusage` SELF + CHILDREN) at the start and end
of each cell. What the machine spent beyond the cell's own processes is other processes' CPU time;
steal is what the hypervisor gave to other guests. Both are fractions of the cores × wall time.

A cell is `loaded` when other processes took more than LOADED_OTHER_CPU of the machine, or steal more
than LOADED_STEAL: reports mark its speed, and regress does not call its speed a change.
"""

from __future__ import annotations

import os
import resource
import time

# Above these fractions of the machine's CPU time a cell's timing is marked as taken under load. An
# idle machine of this kind measured 0.00-0.02 of other CPU (the shell, the editor, the sampler of
# another tool); one CPU-bound process beside a cell on 2 cores is about 0.4-0.5.
LOADED_OTHER_CPU = 0.10
LOADED_STEAL = 0.05


def _proc_stat(cpus: list[int] | None = None) -> tuple[float, float] | None:
    """(busy, steal) CPU seconds since boot, of the whole machine or of the cores `cpus`; None where
    /proc/stat is missing."""
    wanted = {"cpu"} if cpus is None else {f"cpu{c}" for c in cpus}
    busy = steal = 0.0
    found = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                fields = line.split()
                if not fields or fields[0] not in wanted:
                    continue
                ticks = [int(x) for x in fields[1:]] + [0] * 8
                user, nice, system, _idle, _iowait, irq, softirq, stolen = ticks[:8]
                busy += user + nice + system + irq + softirq
                steal += stolen
                found += 1
    except (OSError, ValueError):
        return None
    if found != len(wanted):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return busy / hz, steal / hz


def _own_cpu_s() -> float:
    """CPU seconds of this process and of every child it has waited for (the cell's workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class LoadWatch:
    """Start before a cell's first worker, `stop()` after its last: the load on the cell's cores.

    `cpus`: the cores a cell was pinned to (a lane); None for the whole machine. In a lane, the cell's
    own CPU time is what its workers used (`stop(own_cpu_s=...)`); the other lanes' cells count as other
    processes only where they ran on this cell's cores, which pinning prevents.
    """

    def __init__(self, cpus: list[int] | None = None):
        self.cpus = list(cpus) if cpus else None
        self._t0 = time.perf_counter()
        self._stat0 = _proc_stat(self.cpus)
        self._own0 = _own_cpu_s()
        self._loadavg0 = _loadavg()

    def stop(self, own_cpu_s: float | None = None) -> dict:
        wall = time.perf_counter() - self._t0
        stat1 = _proc_stat(self.cpus)
        own = (_own_cpu_s() - self._own0) if own_cpu_s is None else own_cpu_s
        cores = len(self.cpus) if self.cpus else (os.cpu_count() or 1)
        out = {"cores": cores, "cpus": self.cpus, "wall_s": round(wall, 3), "loadavg_1m_start": self._loadavg0,
               "loadavg_1m_end": _loadavg(), "other_cpu_fraction": None, "steal_fraction": None,
               "own_cpu_s": round(own, 3), "loaded": None,
               "thresholds": {"other_cpu_fraction": LOADED_OTHER_CPU, "steal_fraction": LOADED_STEAL}}
        if self._stat0 is None or stat1 is None or wall <= 0:
            return out  # no counters here: the load is unknown, not zero
        capacity = wall * cores
        busy = stat1[0] - self._stat0[0]
        other = max(0.0, busy - own)
        out["other_cpu_fraction"] = round(min(1.0, other / capacity), 4)
        out["steal_fraction"] = round(min(1.0, (stat1[1] - self._stat0[1]) / capacity), 4)
        out["loaded"] = out["other_cpu_fraction"] > LOADED_OTHER_CPU or out["steal_fraction"] > LOADED_STEAL
        return out

