"""A run can be reproduced outside lorabench: the saved `swift sft` command line gives the same losses."""

import json
import os
import shlex
import subprocess
import sys

import pytest
import yaml

from harness.cli import main
from harness.results.store import load_records, resolve_sidecar

pytestmark = pytest.mark.integration


def test_swift_command_line_reproduces_the_first_losses(tmp_path, tiny_model_dir, mini_dataset):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "repro", "defaults": {
        "framework": "swift", "model": str(tiny_model_dir), "dataset": "synthdocs-mini", "task": "extract",
        "train": {"steps": 3, "batch_size": 2, "grad_accum": 1, "max_train_samples": 8}, "eval": {"enabled": False}}}))
    results = tmp_path / "results"
    assert main(["run", str(suite), "--results", str(results)]) == 0
    (record,) = load_records(results)
    train = record["train"]
    assert not os.path.isabs(train["adapter_dir"])  # relative to the record: a moved directory still works
    assert (resolve_sidecar(record, train["adapter_dir"]) / "adapter_model.safetensors").is_file()
    args = json.loads(resolve_sidecar(record, train["framework_args"]).read_text())
    assert args["max_steps"] == 3 and args["tuner_type"] == "lora"
    cmd = shlex.split(resolve_sidecar(record, train["command_line"]).read_text())
    assert cmd[:2] == ["swift", "sft"]
    out = tmp_path / "rerun"
    cmd[cmd.index("--output_dir") + 1] = str(out)
    cmd[0] = os.path.join(os.path.dirname(sys.executable), "swift")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29563", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    logged = [json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines() if line.strip()]
    losses = [row["loss"] for row in logged if "loss" in row][:3]
    recorded = [s["loss"] for s in train["steps"]][:3]
    assert len(losses) == 3
    assert max(abs(a - b) for a, b in zip(losses, recorded)) <= 1e-5, (losses, recorded)
