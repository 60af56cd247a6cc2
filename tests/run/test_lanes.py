"""Lanes: cells side by side, each pinned to its own cores, through the dummy adapter (seconds)."""

import os

import pytest

from harness.cli import main
from harness.config.suite import load_suite, parse_lanes
from harness.errors import UserError
from harness.results.store import load_records
from harness.run.lanes import lane_cpus

TWO_CORES = len(os.sched_getaffinity(0)) >= 2


@pytest.mark.skipif(not TWO_CORES, reason="lanes need two cores")
def test_two_lanes_pin_each_cell_to_its_own_core_and_record_it(tmp_path, dummy_suite, mini_dataset, capsys):
    suite = dummy_suite("lanes", matrix={"seed": [0, 1, 2]}, lanes=2)
    results = tmp_path / "results"
    assert main(["run", str(suite), "--results", str(results)]) == 0
    records = load_records(results)
    assert sorted(r["cell"]["seed"] for r in records) == [0, 1, 2] and all(r["status"] == "ok" for r in records)
    for r in records:
        assert r["env"]["lanes"] == 2
        assert len(r["load"]["cpus"]) == 1 and r["load"]["cores"] == 1
        assert r["env"]["torch_threads"] == 1  # as many threads as the lane has cores
    assert len({r["load"]["cpus"][0] for r in records}) == 2  # both lanes were used
    out = capsys.readouterr().out
    assert all(f"-> {r['run_id']} ok" in out for r in records)  # interleaved lines name their run
    # a second run finds everything finished, whatever the lanes
    assert main(["run", str(suite), "--results", str(results), "--lanes", "1"]) == 0


def test_lanes_are_validated_with_one_line(tmp_path, dummy_suite, capsys):
    for bad in ("0", "two", "1.5", "-1"):
        with pytest.raises(UserError, match="lanes must be a positive whole number or 'auto'"):
            parse_lanes(bad, "--lanes")
    suite = dummy_suite("lanes", lanes="many")
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lanes must be" in err[0]


def test_auto_lanes_keep_multi_process_and_gpu_cells_on_the_whole_machine(tmp_path, dummy_suite):
    _, cells = load_suite(dummy_suite("lanes", matrix={"seed": [0, 1]}))
    assert lane_cpus(1, cells) is None
    if TWO_CORES:
        cores = len(os.sched_getaffinity(0))
        assert len(lane_cpus("auto", cells)) == cores or len(cells) < cores
    _, multi = load_suite(dummy_suite("lanes", matrix={"seed": [0, 1]}), overrides=["distributed.world_size=2"])
    assert lane_cpus("auto", multi) is None
    if TWO_CORES:
        with pytest.raises(UserError, match="one-process CPU cells"):
            lane_cpus(2, multi)


@pytest.mark.skipif(not TWO_CORES, reason="lanes need two cores")
def test_a_cell_left_alone_keeps_its_lanes_share_of_the_cores(dummy_suite):
    """A cell resumed on its own runs on the share it had beside its neighbours, not on the whole
    machine, so its timing compares with theirs."""
    _, cells = load_suite(dummy_suite("lanes", matrix={"seed": [0]}))
    cores = sorted(os.sched_getaffinity(0))
    (lane,) = lane_cpus("auto", cells)
    assert len(lane) == 1 and lane[0] in cores
    assert lane_cpus(2, cells) == [cores[: len(cores) // 2]]
