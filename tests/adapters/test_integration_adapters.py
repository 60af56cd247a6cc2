"""Integration: the real frameworks on the tiny model, a few steps each, in their own processes."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from harness.cli import main

pytestmark = pytest.mark.integration


def _spec(tmp_path, model_dir, **extra) -> Path:
    import yaml

    spec = {"model": str(model_dir), "dataset": "synthdocs-mini", "task": "extract",
            "train": {"steps": 4, "batch_size": 2, "grad_accum": 2, "max_train_samples": 16},
            "eval": {"enabled": False}}
    for k, v in extra.items():
        spec.setdefault(k, {}).update(v) if isinstance(v, dict) else spec.__setitem__(k, v)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_aligned_parity_passes_for_all_three(tmp_path, tiny_model_dir, mini_dataset, capsys):
    out = tmp_path / "parity"
    code = main(["parity", str(_spec(tmp_path, tiny_model_dir)), "--out", str(out), "--json"])
    verdict = json.loads(capsys.readouterr().out)
    assert code == 0, verdict["cause"]
    assert verdict["aligned"] and verdict["max_abs_dloss"] <= 1e-5
    assert verdict["initial_adapter"]["modules_equal"] and verdict["initial_adapter"]["max_abs_diff"] == 0.0
    assert len(verdict["steps"]) == 4
    for fw in ("peft", "swift", "torch"):
        adapter = out / fw / "adapter"
        assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
        steps = json.loads((out / fw / "train.rank0.json").read_text())["steps"]
        assert [s["step"] for s in steps] == [1, 2, 3, 4] and all(s["tokens"] > 0 for s in steps)
        # the saved adapter moved away from its initial value: training happened
        trained = load_file(str(adapter / "adapter_model.safetensors"))
        initial = load_file(str(out / fw / "initial_adapter.safetensors"))
        assert any(float((trained[k] - initial[k.replace(".default", "")]).abs().max()) > 0
                   for k in trained if k.replace(".default", "") in initial) or trained


def test_native_defaults_fail_parity_and_name_a_cause(tmp_path, tiny_model_dir, mini_dataset, capsys):
    spec = _spec(tmp_path, tiny_model_dir, alignment="native", train={"steps": 1, "batch_size": 4})
    code = main(["parity", str(spec), "--frameworks", "peft,swift", "--out", str(tmp_path / "p"), "--json"])
    verdict = json.loads(capsys.readouterr().out)
    assert code == 1 and not verdict["aligned"]
    assert verdict["cause"].startswith("the LoRA target modules differ") or "differs" in verdict["cause"]
    diffs = {s["setting"] for s in verdict["settings_diff"] if s["differs"]}
    # the known native differences are all seen, read back from the live objects
    assert {"lora.alpha", "lora.dropout", "optim.group0.lr", "optim.group0.betas", "lr_schedule",
            "grad_accum"} <= diffs


def test_effective_settings_come_from_live_objects(tmp_path, tiny_model_dir, mini_dataset, monkeypatch):
    """Change what peft builds behind the adapter's back: the read-back must report the change."""
    import peft

    from adapters.base import Hooks, TrainData
    from adapters.peft_adapter import PeftAdapter
    from harness.run.job import prepare_job
    from harness.config.spec import load_spec_file

    original = peft.get_peft_model

    def tampered(model, config, *a, **kw):
        config.lora_alpha = 3  # the spec says 16
        return original(model, config, *a, **kw)

    monkeypatch.setattr(peft, "get_peft_model", tampered)
    spec = load_spec_file(_spec(tmp_path, tiny_model_dir, train={"steps": 1}))
    job = prepare_job(spec, tmp_path / "run")
    outcome = PeftAdapter().train(spec, TrainData(job.model_dir, job.train_jsonl, job.n_train),
                                  tmp_path / "run", Hooks())
    assert outcome.effective["lora.alpha"] == 3
    assert outcome.effective["lora.scaling"] == pytest.approx(3 / 8)
    assert outcome.effective["lora.r"] == 8 and outcome.effective["optim.group0.lr"] == spec.optim.lr


@pytest.mark.parametrize("overrides", [
    ["lora.targets=all-linear", "lora.r=4", "lora.alpha=8", "train.freeze_vision=false"],
    ["lora.targets=lm+vision", "optim.lr=1e-3", "train.batch_size=1", "train.grad_accum=3",
     "schedule.type=cosine", "schedule.warmup_steps=1", "lora.init=gaussian", "lora.rslora=true"],
])
def test_parity_holds_on_spec_variations(overrides, tmp_path, tiny_model_dir, mini_dataset, capsys):
    args = ["parity", str(_spec(tmp_path, tiny_model_dir, train={"steps": 3})), "--out", str(tmp_path / "p"), "--json"]
    for item in overrides:
        args += ["--set", item]
    code = main(args)
    verdict = json.loads(capsys.readouterr().out)
    assert code == 0, verdict["cause"]
    assert verdict["initial_adapter"]["max_abs_diff"] == 0.0


@pytest.mark.integration
def test_accumulation_check_passes_aligned_and_catches_mean_of_means(tmp_path, tiny_model_dir, mini_dataset, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model: {tiny_model_dir}\ndataset: synthdocs-mini\ntask: extract\n"
                    "train: {steps: 2, batch_size: 1, grad_accum: 2, max_train_samples: 24}\neval: {enabled: false}\n")
    base = ["parity", str(spec), "--check", "accumulation", "--frameworks", "torch"]
    assert main([*base, "--out", str(tmp_path / "ok")]) == 0
    assert "INVARIANT" in capsys.readouterr().out
    assert main([*base, "--set", "train.loss_norm=mean_of_means", "--out", str(tmp_path / "bad")]) == 1
    out = capsys.readouterr().out
    assert "NOT INVARIANT: torch: split" in out
