"""Timings taken under load are marked: the record's `load`, the cost table's ‡, and regress's "loaded".

A cell run beside a CPU-bound process (through the dummy adapter: seconds) must come out marked; the
unit tests pin the arithmetic on fixed counters, so they hold whatever the test machine is doing.
"""

import copy
import subprocess
import sys

import pytest

from harness.analysis.regress import compare_to_baseline
from harness.analysis.report import build_report
from harness.cli import main
from harness.run import machine_load
from harness.results.store import load_records

def _counters(monkeypatch, busy: list[float], own: list[float], steal=(0.0, 0.0)):
    """Make LoadWatch read `busy[i]`/`steal[i]` machine CPU seconds and `own[i]` own CPU seconds."""
    stat = iter(zip(busy, steal))
    own_iter = iter(own)
    monkeypatch.setattr(machine_load, "_proc_stat", lambda cpus=None: next(stat))
    monkeypatch.setattr(machine_load, "_own_cpu_s", lambda: next(own_iter))
    monkeypatch.setattr(machine_load.os, "cpu_count", lambda: 2)


def test_other_processes_cpu_time_is_a_fraction_of_the_machine(monkeypatch):
    _counters(monkeypatch, busy=[100.0, 130.0], own=[5.0, 25.0])
    watch = machine_load.LoadWatch()
    watch._t0 -= 20.0  # a 20 s cell on 2 cores: 40 CPU-seconds; 10 of them were not the cell's
    out = watch.stop()
    assert out["other_cpu_fraction"] == pytest.approx(10 / 40, abs=0.01)
    assert out["loaded"] is True and out["own_cpu_s"] == pytest.approx(20.0)


def test_a_cell_alone_on_the_machine_is_not_loaded(monkeypatch):
    _counters(monkeypatch, busy=[100.0, 120.5], own=[5.0, 25.0])
    watch = machine_load.LoadWatch()
    watch._t0 -= 20.0
    out = watch.stop()
    assert out["other_cpu_fraction"] < machine_load.LOADED_OTHER_CPU and out["loaded"] is False


def test_stolen_time_marks_a_cell_too(monkeypatch):
    _counters(monkeypatch, busy=[100.0, 120.0], own=[5.0, 25.0], steal=(0.0, 4.0))
    watch = machine_load.LoadWatch()
    watch._t0 -= 20.0
    out = watch.stop()
    assert out["steal_fraction"] == pytest.approx(0.1, abs=0.01) and out["loaded"] is True


def test_without_counters_the_load_is_unknown_not_zero(monkeypatch):
    monkeypatch.setattr(machine_load, "_proc_stat", lambda cpus=None: None)
    out = machine_load.LoadWatch().stop()
    assert out["other_cpu_fraction"] is None and out["loaded"] is None


def test_a_cell_beside_a_cpu_bound_process_is_marked_in_the_cost_table_and_not_regressed(
        tmp_path, dummy_suite, mini_dataset):
    suite = dummy_suite("load", matrix={"seed": [0]})
    results = tmp_path / "results"
    # one busy loop per core: whatever the cell does not use, they take
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        assert main(["run", str(suite), "--results", str(results)]) == 0
    finally:
        for b in burners:
            b.kill()
            b.wait()
    (record,) = load_records(results)
    assert record["load"]["loaded"] is True, record["load"]
    assert record["load"]["other_cpu_fraction"] > machine_load.LOADED_OTHER_CPU

    report = build_report([record])
    cost = next(t for t in report.tables if t.key == "cost")
    column = cost.header.index("samples/s")
    assert "‡" in cost.rows[0][column].mark
    assert "timed under load" in cost.caption
    memory_column = next(i for i, h in enumerate(cost.header) if "memory" in h)
    assert "‡" not in cost.rows[0][memory_column].mark  # memory is not a timing

    # the same run alone on the machine, twice as fast: not a regression, a loaded timing
    baseline = copy.deepcopy(record)
    baseline["load"]["loaded"] = False
    baseline["metrics"]["train_samples_per_s"] *= 2
    rows = compare_to_baseline([baseline], [record])["rows"]
    speed = next(r for r in rows if r["metric"] == "train_samples_per_s")
    assert speed["verdict"] == "loaded" and "under load" in speed["note"]
    record["load"]["loaded"] = False  # and unloaded on both sides, the same drop is a regression
    speed = next(r for r in compare_to_baseline([baseline], [record])["rows"] if r["metric"] == "train_samples_per_s")
    assert speed["verdict"] == "worse"
