"""The outcome ablation on the dummy adapter's real training loop: a planted factor (lr 0: nothing learnt)
ranks first, a planted no-op (LoRA dropout, which the dummy adapter ignores) is within the noise floor.

The dummy adapter trains in this process (the same `train` its worker calls; a worker process per arm
and seed would cost ~45 s for the 8 runs), and its adapter leaves the model unchanged, so the "held-out"
outcome here is each run's final training loss, read by a stand-in for the eval worker."""

import json
from types import SimpleNamespace

import pytest
import yaml

from harness.analysis.attribution import DATA_ORDER
from harness.analysis.outcome_ablation import ablate_outcome
from harness.config.spec import make_spec


def train_in_process(spec, work, **_):
    import adapters
    from adapters.base import Hooks, TrainData
    from harness.run.job import prepare_job

    job = prepare_job(spec, work)
    data = TrainData(model_dir=job.model_dir, train_jsonl=job.train_jsonl, n_samples=job.n_train,
                     deepspeed_config=job.deepspeed_config)
    outcome = adapters.get(spec.framework).train(spec, data, work, Hooks())
    (work / "train.rank0.json").write_text(json.dumps({"rank": 0, "steps": outcome.steps}))
    return {"rank": 0, "steps": outcome.steps}


def final_loss_as_outcome(spec, work, **_):
    steps = json.loads((work / "train.rank0.json").read_text())["steps"]
    return SimpleNamespace(status="ok", error_tail=None), {"heldout_loss": {"loss": steps[-1]["loss"]}, "metrics": {}}


def test_planted_factor_first_and_no_op_within_noise(tmp_path, monkeypatch, mini_dataset):
    monkeypatch.setattr("harness.analysis.outcome_ablation.run_one", train_in_process)
    monkeypatch.setattr("harness.run.train_run.evaluate", final_loss_as_outcome)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 8, "num_attention_heads": 2}}))
    base = make_spec({"framework": "dummy", "dataset": "synthdocs-mini", "task": "extract", "model": str(model),
                      "optim": {"lr": 0.05}, "train": {"steps": 3, "batch_size": 2, "max_train_samples": 8},
                      "eval": {"enabled": False}})
    mine, planted = tmp_path / "mine.yaml", tmp_path / "planted.yaml"
    mine.write_text("framework: dummy\n")
    planted.write_text(yaml.safe_dump({"framework": "dummy", "optim": {"lr": 0.0}, "lora": {"dropout": 0.1}}))
    doc = ablate_outcome(base, str(mine), str(planted), [0, 1], tmp_path / "runs", progress=lambda *_: None)
    ranked = [r["factor"] for r in doc["effects"]]
    assert ranked[0] == "lr" and set(ranked) == {"lr", "dropout", DATA_ORDER}
    rows = {r["factor"]: r for r in doc["effects"]}
    assert rows["lr"]["effect"]["heldout_loss"] > 0  # nothing learnt: a higher loss
    assert rows["lr"]["within_noise"]["heldout_loss"] is False
    assert rows["dropout"]["within_noise"]["heldout_loss"] is True
    assert doc["interaction"]["interaction"]["heldout_loss"] == pytest.approx(0.0, abs=1e-6)
