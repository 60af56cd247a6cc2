"""Meters that run inside a worker: peak memory, step throughput, MFU, and their own cost.

CPU memory: RSS above the baseline measured after imports, sampled every 10 ms by a thread and
cross-checked with the kernel's high-water mark (ru_maxrss = VmHWM), which catches spikes shorter
than a sample; the high-water mark is reset at the start of training (`/proc/self/clear_refs` = 5)
so the figure covers training only (measured: psutil sampling needs <= 10 ms intervals to catch the same peaks).
GPU memory: torch.cuda max allocated / reserved, reset at the start of training, per device.
"""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time

MIB = 1024 * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:  # cheaper than psutil: one read, no object
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def ru_maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:  # not Linux, or not permitted: ru_maxrss then covers the whole process
        return False


class MemoryMeter:
    def __init__(self, interval_s: float = 0.01):
        self.interval_s = interval_s
        self.baseline = current_rss_bytes()
        self.peak = self.baseline
        self.samples = 0
        self.sampling_s = 0.0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = None
        self._started = None
        self._cuda = False

    def start(self) -> None:
        """Call at the start of training: peaks before this moment do not count."""
        self.hwm_reset = reset_high_water_mark()
        self.peak = current_rss_bytes()
        try:
            import torch

            if torch.cuda.is_available():
                self._cuda = True
                for d in range(torch.cuda.device_count()):
                    torch.cuda.reset_peak_memory_stats(d)
        except ImportError:
            pass
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="lorabench-memory", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.thread_time()  # this thread's CPU time (wake-ups included): what it takes from training
        page = os.sysconf("SC_PAGE_SIZE")
        fd = os.open("/proc/self/statm", os.O_RDONLY)  # kept open: one pread per sample
        try:
            while not self._stop.is_set():
                time.sleep(self.interval_s)
                rss = int(os.pread(fd, 64, 0).split()[1]) * page
                if rss > self.peak:
                    self.peak = rss
                self.samples += 1
        finally:
            os.close(fd)
        self.sampling_s = time.thread_time() - t0

    def stop(self) -> dict:
        self._stop.set()
        if self._thread:
            self._thread.join()
        wall = time.perf_counter() - (self._started or time.perf_counter())
        hwm = ru_maxrss_bytes()
        peak = max(self.peak, hwm if self.hwm_reset else self.peak)
        out = {
            "baseline_rss_mib": self.baseline / MIB,
            "peak_rss_mib": peak / MIB,
            "peak_rss_above_baseline_mib": (peak - self.baseline) / MIB,
            "sampled_peak_rss_mib": self.peak / MIB,
            "ru_maxrss_mib": hwm / MIB,
            "hwm_reset": self.hwm_reset,
            "rss_samples": self.samples,
            # The sampler's own CPU time as a share of the measured wall time (<= 2% is the promise).
            "meter_overhead_fraction": self.sampling_s / wall if wall else 0.0,
            "gpu": self._gpu(),
        }
        return out

    def _gpu(self) -> list[dict]:
        if not self._cuda:
            return []
        import torch

        return [{"device": d, "name": torch.cuda.get_device_name(d),
                 "max_allocated_mib": torch.cuda.max_memory_allocated(d) / MIB,
                 "max_reserved_mib": torch.cuda.max_memory_reserved(d) / MIB}
                for d in range(torch.cuda.device_count())]


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


def matmul_peak_gflops(seconds: float = 1.0, n: int = 1024) -> float:
    """The machine's own fp32 matmul peak (GFLOP/s), measured, for MFU. Best of a few timed runs."""
    import torch

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


def lora_train_flops_per_token(total_params: int, trainable_params: int) -> float:
    """FLOPs per token of a LoRA step: forward 2N, backward 2N for activation gradients, plus 2N_t
    for the weight gradients of the trainable parameters only (frozen weights get none)."""
    return 4.0 * total_params + 2.0 * trainable_params


def mfu(tokens_per_s: float, total_params: int, trainable_params: int, peak_gflops: float | None) -> float | None:
    if not peak_gflops:
        return None
    return tokens_per_s * lora_train_flops_per_token(total_params, trainable_params) / (peak_gflops * 1e9)
