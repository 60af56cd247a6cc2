"""Meters that run inside a worker: peak memory, a memory timeline, step throughput, MFU, and their own cost.

CPU memory, two figures from one read of /proc/self/statm (resident and shared pages):
- anonymous memory = resident - shared = the kernel's RssAnon (shared = RssFile + RssShmem since
  Linux 4.5): heap, tensors, Python objects, allocator caches; shared memory (/dev/shm, tensors a
  DataLoader worker shares) is left out with the file pages. This is the tracked figure. It holds
  what training allocates and nothing of where the libraries live: RSS also counts the file-backed
  pages of shared libraries and mapped files, which moved by 12-21% between two checkouts of the
  same commit on the same machine. USS (Private_Clean + Private_Dirty from smaps_rollup) was not
  chosen: it still counts private file-backed pages (relocated library data), and reading it walks
  every mapping (thousands in a torch process) on each sample, where statm is one short read.
- RSS (resident set), kept as the secondary figure and cross-checked with the kernel's high-water
  mark (ru_maxrss = VmHWM), which catches spikes shorter than a sample; the high-water mark is reset
  at the start of training (`/proc/self/clear_refs` = 5) so the figure covers training only.
The kernel keeps no high-water mark for anonymous memory: its peak is the sampled one (every 10 ms,
plus one sample at each phase change and at the end), enough for what lives through a training step.
GPU memory: torch.cuda max allocated / reserved per device, reset at each phase change.

Phases: "load" (from `watch()`, after imports, through model loading and set-up), "train" (from
`start()`, the adapter's on_train_begin, to `stop()`); the eval worker meters its own process as
"eval". Per phase the meter keeps the peak of each figure, and a downsampled series of all of them
(harness.run.memory_timeline), which the runner stores beside the record.
"""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time

from harness.run.memory_timeline import TIMELINE_MAX_POINTS, MemoryTimeline

MIB = 1024 * 1024


def _statm_pages(raw: bytes | str) -> tuple[int, int]:
    """(resident, shared) pages from the text of /proc/self/statm."""
    fields = raw.split()
    return int(fields[1]), int(fields[2])


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:  # cheaper than psutil: one read, no object
        return _statm_pages(f.read())[0] * os.sysconf("SC_PAGE_SIZE")


def current_anon_bytes() -> int:
    """Resident anonymous memory (RssAnon): resident minus file-backed and shared-memory pages."""
    with open("/proc/self/statm") as f:
        resident, shared = _statm_pages(f.read())
    return (resident - shared) * os.sysconf("SC_PAGE_SIZE")


def ru_maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:  # not Linux, or not permitted: ru_maxrss then covers the whole process
        return False


def seconds_since_process_start() -> float | None:
    """How long this process has run (its start time in /proc/self/stat against the boot clock), so a
    timeline starts where the process did, imports included; None where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            # the command name (field 2) may hold spaces: count fields after its closing parenthesis
            after_name = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(after_name[19])  # field 22, starttime, in clock ticks since boot
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, AttributeError):
        return None


class MemoryMeter:
    """Samples this process's memory on a thread. `watch("load")` starts sampling (after imports),
    `start()` begins training (peaks before it do not count in the figures `stop()` returns),
    `stop()` returns the peaks, the per-phase peaks and the timeline. The eval worker calls
    `start("eval")` alone."""

    def __init__(self, interval_s: float = 0.01, max_points: int = TIMELINE_MAX_POINTS):
        self.interval_s = interval_s
        self.page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm") as f:
            resident, shared = _statm_pages(f.read())
        self.baseline = resident * self.page
        self.baseline_anon = (resident - shared) * self.page
        self.peak, self.peak_anon = self.baseline, self.baseline_anon  # of the current phase
        self.samples = 0
        self.sampling_s = 0.0
        self.hwm_reset = False
        self.phase: str | None = None
        self.phase_peaks: dict[str, dict] = {}
        self.timeline = MemoryTimeline(max_points)
        self._lock = threading.Lock()  # the sampler and a phase change never interleave
        self._stop = threading.Event()
        self._thread = None
        self._thread_started = None
        self._fd = None
        self._cuda_devices = 0
        since = seconds_since_process_start()
        self._t0 = time.perf_counter() - (since if since is not None else 0.0)

    def watch(self, phase: str = "load") -> None:
        """Start sampling now, in `phase` (model loading and set-up before training)."""
        with self._lock:
            self._open()
            self.phase = phase
            self._sample()
        self._start_thread()

    def start(self, phase: str = "train") -> None:
        """Call at the start of training (or of the evaluation): the peaks `stop()` reports cover
        this phase only. Closes the previous phase with its own peaks."""
        with self._lock:
            self._open()
            if self.phase is not None:
                self._sample()
                self._close_phase()
            self.hwm_reset = reset_high_water_mark()
            resident, shared = self._read()
            self.peak, self.peak_anon = resident * self.page, (resident - shared) * self.page
            self.phase = phase
            self._reset_gpu_peaks()
            self._sample()
        self._start_thread()

    def _open(self) -> None:
        if self._fd is None:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY)  # kept open: one pread per sample
            self._cuda_devices = _cuda_device_count()

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread_started = time.perf_counter()
            self._thread = threading.Thread(target=self._run, name="lorabench-memory", daemon=True)
            self._thread.start()

    def _read(self) -> tuple[int, int]:
        return _statm_pages(os.pread(self._fd, 256, 0))

    def _sample(self) -> None:
        """One sample into the peaks and the timeline (the caller holds the lock)."""
        resident, shared = self._read()
        rss, anon = resident * self.page, (resident - shared) * self.page
        if rss > self.peak:
            self.peak = rss
        if anon > self.peak_anon:
            self.peak_anon = anon
        self.timeline.add(time.perf_counter() - self._t0, self.phase, anon, rss, self._gpu_now())
        self.samples += 1

    def _run(self) -> None:
        t0 = time.thread_time()  # this thread's CPU time (wake-ups included): what it takes from training
        while not self._stop.is_set():
            time.sleep(self.interval_s)
            with self._lock:
                self._sample()
        self.sampling_s = time.thread_time() - t0

    def _gpu_now(self) -> list[tuple[int, int]]:
        if not self._cuda_devices:
            return []
        import torch

        # 0 until this process has initialised CUDA (the query never initialises it itself)
        return [(torch.cuda.memory_allocated(d), torch.cuda.memory_reserved(d)) for d in range(self._cuda_devices)]

    def _reset_gpu_peaks(self) -> None:
        if self._cuda_devices:
            import torch

            if torch.cuda.is_initialized():
                for d in range(self._cuda_devices):
                    torch.cuda.reset_peak_memory_stats(d)

    def _close_phase(self) -> None:
        self.phase_peaks[self.phase] = {"peak_anon_mib": self.peak_anon / MIB, "peak_rss_mib": self.peak / MIB,
                                        "gpu": self._gpu()}

    def stop(self) -> dict:
        self._stop.set()
        if self._thread:
            self._thread.join()
        with self._lock:
            if self._fd is not None:
                self._sample()
                self._close_phase()
                os.close(self._fd)
                self._fd = None
        wall = time.perf_counter() - (self._thread_started or time.perf_counter())
        hwm = ru_maxrss_bytes()
        peak = max(self.peak, hwm if self.hwm_reset else self.peak)
        return {
            "baseline_rss_mib": self.baseline / MIB,
            "peak_rss_mib": peak / MIB,
            "peak_rss_above_baseline_mib": (peak - self.baseline) / MIB,
            "sampled_peak_rss_mib": self.peak / MIB,
            "ru_maxrss_mib": hwm / MIB,
            "hwm_reset": self.hwm_reset,
            "baseline_anon_mib": self.baseline_anon / MIB,
            "peak_anon_mib": self.peak_anon / MIB,
            "peak_anon_above_baseline_mib": (self.peak_anon - self.baseline_anon) / MIB,
            "rss_samples": self.samples,
            # The sampler's own CPU time as a share of the wall time it ran (<= 2% is the promise).
            "meter_overhead_fraction": self.sampling_s / wall if wall else 0.0,
            "gpu": self._gpu(),
            "phase_peaks": self.phase_peaks,
            "timeline": self.timeline.points(),
        }

    def _gpu(self) -> list[dict]:
        if not self._cuda_devices:
            return []
        import torch

        return [{"device": d, "name": torch.cuda.get_device_name(d),
                 "max_allocated_mib": torch.cuda.max_memory_allocated(d) / MIB,
                 "max_reserved_mib": torch.cuda.max_memory_reserved(d) / MIB}
                for d in range(self._cuda_devices)]


def _cuda_device_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def warmup_steps(n_steps: int) -> int:
    """Steps excluded from throughput: the first ones pay for lazy init, allocator growth, caches."""
    return min(max(1, n_steps // 10), 5) if n_steps > 2 else 0


def throughput(steps: list[dict]) -> dict:
    """Steady-state samples/s and tokens/s over the steps after warm-up; median and IQR step time."""
    skip = warmup_steps(len(steps))
    steady = steps[skip:] or steps
    seconds = sum(s["seconds"] for s in steady)
    times = sorted(s["seconds"] for s in steady)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3 if times else [0.0] * 3
    return {
        "warmup_steps_excluded": skip,
        "train_samples_per_s": sum(s["samples"] for s in steady) / seconds if seconds else 0.0,
        "train_tokens_per_s": sum(s["tokens"] for s in steady) / seconds if seconds else 0.0,
        "step_time_s_median": statistics.median(times) if times else 0.0,
        "step_time_s_iqr": q[2] - q[0],
    }


def matmul_peak_gflops(seconds: float = 1.0, n: int = 1024, threads: int | None = None) -> float:
    """The machine's own fp32 matmul peak (GFLOP/s), measured, for MFU. Best of a few timed runs.

    `threads`: measure with that many threads (a lane's cores), so MFU compares a cell with the peak of
    the share of the machine it ran on."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b
        best = 0.0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
        return best
    finally:
        torch.set_num_threads(before)


def lora_train_flops_per_token(total_params: int, trainable_params: int) -> float:
    """FLOPs per token of a LoRA step: forward 2N, backward 2N for activation gradients, plus 2N_t
    for the weight gradients of the trainable parameters only (frozen weights get none)."""
    return 4.0 * total_params + 2.0 * trainable_params


def mfu(tokens_per_s: float, total_params: int, trainable_params: int, peak_gflops: float | None) -> float | None:
    if not peak_gflops:
        return None
    return tokens_per_s * lora_train_flops_per_token(total_params, trainable_params) / (peak_gflops * 1e9)
