"""Several processes and DeepSpeed ZeRO on the CPU (gloo): a 2-process ZeRO-3 run per framework."""

import json

import pytest
import yaml

from harness.cli import main
from harness.planner.zero_templates import ModelSize, deepspeed_config
from harness.config.spec import make_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_deepspeed_config_is_shared_and_safe_for_several_processes():
    model = ModelSize(64, 2_200_000)  # the tiny model's hidden size and about its parameter count
    one = deepspeed_config(make_spec({"distributed": {"zero_stage": 3, "offload_optimizer": True,
                                                      "offload_params": True}}), model)
    assert one["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert one["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert one["train_batch_size"] == "auto"
    two = deepspeed_config(make_spec({"distributed": {"zero_stage": 3, "world_size": 2}}), model)
    assert "train_batch_size" not in two  # transformers would fill it while the world size is still 1
    assert deepspeed_config(make_spec(), model) is None


@pytest.mark.parametrize("framework,zero_stage,freeze_vision", [("peft", 3, False), ("swift", 3, True),
                                                                ("peft", 2, False)],
                         ids=["peft-zero3-vision-in-full", "swift-zero3", "peft-zero2-vision-in-full"])
def test_two_process_zero3(framework, zero_stage, freeze_vision, tmp_path, tiny_model_dir, mini_dataset, capsys):
    """Two processes under ZeRO: trains, meters every rank, and the saved adapter is the trained model
    (modules trained in full included: ZeRO-2 once lost them in a user's fine-tuning, ZeRO-3 saved shards)."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "zero3", "defaults": {
            "model": str(tiny_model_dir), "dataset": "synthdocs-mini", "task": "extract", "framework": framework,
            "train": {"steps": 2, "batch_size": 1, "grad_accum": 1, "max_train_samples": 8,
                      "freeze_vision": freeze_vision},
            "distributed": {"world_size": 2, "zero_stage": zero_stage}, "eval": {"enabled": False},
            "timeout_s": 900}}))
    results = tmp_path / "results"
    code = main(["run", str(suite), "--results", str(results)])
    record = json.loads(next((results / "runs").glob("zero3-*.json")).read_text())
    assert code == 0, record["error"]
    mem = record["memory"]
    assert mem["world_size"] == 2 and mem["zero_stage"] == zero_stage and len(mem["per_rank"]) == 2
    assert all(r["peak_rss_mib"] > 0 for r in mem["per_rank"])
    eff = record["effective_settings"]
    assert eff["deepspeed_zero_stage"] == zero_stage and eff["world_size"] == 2 and eff["global_batch"] == 2
    assert len(record["train"]["steps"]) == 2
    trip = record["roundtrip"]
    assert trip["ok"], trip["cause"]
    assert set(trip["loaders"]) == {"peft", "swift"} and trip["max_abs_logit_diff"] <= 1e-5
    if not freeze_vision:
        assert eff["vision_full_weights_trainable"] > 0


def test_two_process_zero3_parity_peft_swift(tmp_path, tiny_model_dir, mini_dataset, capsys):
    """Same global batch and per-token loss across ranks: peft and swift still agree step by step."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "dataset": "synthdocs-mini", "task": "extract",
        "train": {"steps": 3, "batch_size": 1, "grad_accum": 2, "max_train_samples": 16},
        "distributed": {"world_size": 2, "zero_stage": 3}, "eval": {"enabled": False}}))
    code = main(["parity", str(spec), "--frameworks", "peft,swift", "--out", str(tmp_path / "p"), "--json"])
    verdict = json.loads(capsys.readouterr().out)
    assert code == 0, verdict["cause"]
    assert verdict["initial_adapter"]["max_abs_diff"] == 0.0 and verdict["max_abs_dloss"] <= 1e-5
    settings = {s["setting"]: s["values"] for s in verdict["settings_diff"]}
    assert settings["global_batch"] == {"peft": 4, "swift": 4}  # 1 x 2 accumulation x 2 processes
