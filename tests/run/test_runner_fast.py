"""The runner through the dummy adapter (no framework): records, failures, timeouts, resume, report.

Seconds per run, so `make test-fast` covers the runner; the integration tests run the same paths
with the real frameworks.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from harness.cli import main
from harness.results.store import load_records, validate_record

def test_dummy_runs_are_recorded_and_failures_do_not_stop_the_suite(tmp_path, dummy_suite, mini_dataset, capsys):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    suite = dummy_suite(matrix={"seed": [0, 1]},
                   include=[{"seed": 0, "model": str(broken)},
                            {"seed": 0, "timeout_s": 3, "train.steps": 10_000_000}])
    results = tmp_path / "results"
    assert main(["run", str(suite), "--results", str(results)]) == 1  # some runs failed, and said so
    records = load_records(results)
    assert sorted(r["status"] for r in records) == ["failed", "ok", "ok", "timeout"]
    for r in records:
        assert validate_record({k: v for k, v in r.items() if not k.startswith("_")}) == []
    ok = [r for r in records if r["status"] == "ok"]
    assert {r["cell"]["seed"] for r in ok} == {0, 1}
    assert [s["step"] for s in ok[0]["train"]["steps"]] == [1, 2, 3]
    assert ok[0]["metrics"]["final_loss"] > 0 and ok[0]["metrics"]["train_samples_per_s"] > 0
    failed = next(r for r in records if r["status"] == "failed")
    assert "exit status" in failed["error"] and "JSONDecodeError" in failed["error"]
    # a re-run retries what did not end ok, and skips the rest
    capsys.readouterr()
    main(["run", str(suite), "--results", str(results), "--dry-run"])
    assert "2 to run, 2 finished" in capsys.readouterr().out


def test_report_renders_from_dummy_records(tmp_path, dummy_suite, mini_dataset):
    suite = dummy_suite(matrix={"seed": [0, 1]})
    results = tmp_path / "results"
    assert main(["run", str(suite), "--results", str(results)]) == 0
    out = tmp_path / "report"
    assert main(["report", str(results), "--out", str(out)]) == 0
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert "dummy" in (out / "report.md").read_text()


def test_kill_minus_9_then_resume_loses_and_duplicates_nothing(tmp_path, dummy_suite, mini_dataset):
    suite = dummy_suite(matrix={"seed": [0, 1]},
                   cells={"seed=1": {"train": {"steps": 400}}})  # the second run lasts long enough to be killed
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "harness.cli", "run", str(suite), "--results", str(results)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((results / "runs").glob("fast-*.json")):
        time.sleep(0.2)
    first = sorted((results / "runs").glob("fast-*.json"))
    assert len(first) == 1, "the first run never finished"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = first[0].read_bytes()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    records = load_records(results)
    assert sorted(r["cell"]["seed"] for r in records) == [0, 1]
    assert all(r["status"] == "ok" for r in records)
    assert first[0].read_bytes() == before  # the finished record was not redone
    assert not list((results / "runs").glob("*.tmp"))


def test_a_run_that_did_not_train_is_recorded_as_failed(tmp_path, dummy_suite, mini_dataset):
    suite = dummy_suite(matrix={"seed": [0]}, include=[{"seed": 1, "optim.lr": 0.0}])
    results = tmp_path / "results"
    assert main(["run", str(suite), "--results", str(results)]) == 1
    by_seed = {r["cell"]["seed"]: r for r in load_records(results)}
    trained, frozen = by_seed[0], by_seed[1]
    assert trained["status"] == "ok"
    assert trained["training_check"]["lora_modules_moved"] == trained["training_check"]["lora_modules"] == 1
    assert trained["training_check"]["live_gradient_fraction"] == 1.0
    assert frozen["status"] == "failed"
    assert frozen["error"] == "training check: adapters did not change: all 1 LoRA modules equal their initial value"
    assert frozen["training_check"]["max_change_norm"] == 0.0


def test_training_check_names_dead_gradients(tmp_path):
    import torch
    from safetensors.torch import save_file

    from harness.run import training_check

    a = {"base_model.model.m.lora_A.weight": torch.ones(2, 3), "base_model.model.m.lora_B.weight": torch.zeros(3, 2)}
    save_file(a, str(tmp_path / "initial.safetensors"))
    (tmp_path / "adapter").mkdir()
    save_file({**a, "base_model.model.m.lora_B.weight": torch.full((3, 2), 0.5)},
              str(tmp_path / "adapter" / "adapter_model.safetensors"))
    steps = [{"step": i, "grad_norm": g} for i, g in enumerate([0.0, float("nan"), 1.0, 0.0], start=1)]
    block, reason = training_check.check(tmp_path / "initial.safetensors", tmp_path / "adapter", steps)
    assert block["max_change_norm"] == pytest.approx(0.5 * 6 ** 0.5)
    assert block["live_gradient_fraction"] == 0.25
    assert reason == "gradients were zero or not finite in 75% of the steps (4 logged)"


def test_training_check_names_a_saved_tensor_that_is_not_the_trained_one(tmp_path):
    """A deliberately broken save (a ZeRO-3 shard instead of the gathered tensor) is caught and named."""
    import torch
    from safetensors.torch import save_file

    from harness.run import training_check

    key = "base_model.model.m.lora_A.weight"
    save_file({key: torch.ones(2, 3)}, str(tmp_path / "initial.safetensors"))
    (tmp_path / "adapter").mkdir()
    save_file({key: torch.ones(0, 3)}, str(tmp_path / "adapter" / "adapter_model.safetensors"))
    _, reason = training_check.check(tmp_path / "initial.safetensors", tmp_path / "adapter", [])
    assert reason == ("the saved adapter is not the trained model: the saved adapter's m.lora_A.weight "
                      "has shape (0, 3), the trained one (2, 3)")


def test_a_model_that_does_not_exist_is_named_before_anything_runs(tmp_path, dummy_suite, capsys):
    suite = dummy_suite()
    for extra in (["--dry-run"], []):
        assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--set", "model=nonexistent/model",
                     *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lorabench: error: model 'nonexistent/model': not an embedded model") \
            and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
