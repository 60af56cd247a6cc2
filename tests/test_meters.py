"""Meters: the memory peak sees a short spike, throughput excludes warm-up, measuring is cheap."""

import time

import numpy as np
import pytest

from harness.run.meters import MemoryMeter, lora_train_flops_per_token, mfu, throughput, warmup_steps


def test_memory_meter_catches_a_short_spike():
    meter = MemoryMeter()
    meter.start()
    spike = np.ones(200 * 1024 * 1024 // 8)  # 200 MiB, touched, then freed at once
    del spike
    time.sleep(0.05)
    out = meter.stop()
    assert out["peak_rss_above_baseline_mib"] >= 150, out  # the kernel's high-water mark saw it
    assert out["ru_maxrss_mib"] >= out["sampled_peak_rss_mib"] - 1
    assert out["hwm_reset"] is True
    assert out["meter_overhead_fraction"] < 0.02


def test_meter_overhead_on_a_busy_loop():
    meter = MemoryMeter()
    meter.start()
    end = time.perf_counter() + 0.5
    x = 0
    while time.perf_counter() < end:
        x += 1
    out = meter.stop()
    assert out["rss_samples"] >= 2  # the sampler ran (how often depends on the machine's load)
    assert out["meter_overhead_fraction"] < 0.02


def test_throughput_excludes_warmup_steps():
    steps = [{"step": i, "samples": 8, "tokens": 800, "seconds": 5.0 if i == 1 else 1.0} for i in range(1, 11)]
    out = throughput(steps)
    assert out["warmup_steps_excluded"] == warmup_steps(10) == 1
    assert out["train_samples_per_s"] == pytest.approx(8.0)
    assert out["train_tokens_per_s"] == pytest.approx(800.0)
    assert out["step_time_s_median"] == pytest.approx(1.0)


def test_mfu_formula():
    # 1000 tokens/s x (4 x 1e6 + 2 x 1e4) FLOPs per token = 4.02 GFLOP/s against a 40.2 GFLOP/s peak
    assert lora_train_flops_per_token(10**6, 10**4) == 4.02e6
    assert mfu(1000.0, 10**6, 10**4, 40.2) == pytest.approx(0.1)
    assert mfu(1000.0, 10**6, 10**4, None) is None
