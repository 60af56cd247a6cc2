"""Lanes: cells side by side, each pinned to its own cores, through the dummy adapter (seconds)."""

import json
import os
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config.suite import load_suite, parse_lanes
from harness.errors import UserError
from harness.results.store import load_records
from harness.run.lanes import lane_cpus

FAST = {"framework": "dummy", "dataset": "synthdocs-mini", "task": "extract",
        "train": {"steps": 3, "batch_size": 2, "grad_accum": 1, "max_train_samples": 8},
        "eval": {"enabled": False}}
TWO_CORES = len(os.sched_getaffinity(0)) >= 2


@pytest.fixture
def model_dir(tmp_path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 8, "num_attention_heads": 2}}))
    return path


def _suite(tmp_path, model_dir, **doc) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "lanes", "defaults": {**FAST, "model": str(model_dir)}, **doc}))
    return path


@pytest.mark.skipif(not TWO_CORES, reason="lanes need two cores")
def test_two_lanes_pin_each_cell_to_its_own_core_and_record_it(tmp_path, model_dir, mini_dataset, capsys):
    suite = _suite(tmp_path, model_dir, matrix={"seed": [0, 1, 2]}, lanes=2)
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


def test_lanes_are_validated_with_one_line(tmp_path, model_dir, capsys):
    for bad in ("0", "two", "1.5", "-1"):
        with pytest.raises(UserError, match="lanes must be a positive whole number or 'auto'"):
            parse_lanes(bad, "--lanes")
    suite = _suite(tmp_path, model_dir, lanes="many")
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lanes must be" in err[0]


def test_auto_lanes_keep_multi_process_and_gpu_cells_on_the_whole_machine(tmp_path, model_dir):
    _, cells = load_suite(_suite(tmp_path, model_dir, matrix={"seed": [0, 1]}))
    assert lane_cpus(1, cells) is None
    if TWO_CORES:
        assert len(lane_cpus("auto", cells)) == len(os.sched_getaffinity(0)) or len(cells) < len(os.sched_getaffinity(0))
    _, multi = load_suite(_suite(tmp_path, model_dir, matrix={"seed": [0, 1]}), overrides=["distributed.world_size=2"])
    assert lane_cpus("auto", multi) is None
    if TWO_CORES:
        with pytest.raises(UserError, match="one-process CPU cells"):
            lane_cpus(2, multi)
