"""Integration: LLaMA-Factory through its own pipeline, in its release set's environment (created once with
uv, reused offline after), against PEFT on the tiny model, a few steps each."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from adapters.lora_setup import normalize_key
from harness.cli import main
from harness.config.native_defaults import drift

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llamafactory_env():
    from harness.config.envs import FRAMEWORK_ENV, load_env
    from harness.run.environments import ensure

    return ensure(load_env(FRAMEWORK_ENV["llamafactory"]))


def _spec(tmp_path, model_dir, **train) -> Path:
    spec = {"model": str(model_dir), "dataset": "synthdocs-mini", "task": "extract", "optim": {"lr": 5e-3},
            "train": {"steps": 2, "batch_size": 2, "grad_accum": 1, "max_train_samples": 8, **train},
            "eval": {"enabled": False}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_llamafactory_trains_aligned_with_peft_and_reads_back_what_was_asked(
        tmp_path, tiny_model_dir, mini_dataset, llamafactory_env, capsys):
    out = tmp_path / "parity"
    code = main(["parity", str(_spec(tmp_path, tiny_model_dir)), "--frameworks", "peft,llamafactory",
                 "--out", str(out), "--json"])
    verdict = json.loads(capsys.readouterr().out)
    assert code == 0, verdict["cause"]
    assert verdict["initial_adapter"]["modules_equal"] and verdict["initial_adapter"]["max_abs_diff"] == 0.0
    assert verdict["max_abs_dloss"] <= 1e-5 and len(verdict["steps"]) == 2
    run = out / "llamafactory"
    record = json.loads((run / "train.rank0.json").read_text())
    # trained in its own release set, not the main environment's
    assert record["packages"]["llamafactory"] == "0.9.5" and record["packages"]["transformers"] != "5.19.0"
    effective = record["effective"]
    assert effective["lora.r"] == 8 and effective["lora.alpha"] == 16 and effective["optim.group0.lr"] == 5e-3
    assert effective["grad_accum"] == 1 and effective["global_batch"] == 2 and effective["label_mask"] == "answer"
    assert effective["loss_norm"] == "tokens" and effective["llamafactory.template"] == "qwen2_vl"
    # a PEFT adapter, trained away from its initial tensors
    trained = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 8
    initial = load_file(str(run / "initial_adapter.safetensors"))  # framework-neutral names
    trained = {normalize_key(k): v for k, v in trained.items()}
    assert set(trained) == set(initial)
    assert any(float((trained[k] - initial[k]).abs().max()) > 0 for k in trained)
    # what a user runs to reproduce it, and LLaMA-Factory's own resolution of the arguments
    assert (run / "llamafactory_train.sh").read_text().startswith("llamafactory-cli train ")
    assert yaml.safe_load((run / "llamafactory_train.yaml").read_text())["template"] == "qwen2_vl"
    resolved = json.loads((run / "llamafactory_args.json").read_text())
    assert resolved["FinetuningArguments"]["lora_rank"] == 8 and resolved["DataArguments"]["template"] == "qwen2_vl"


def test_a_learning_rate_passed_to_llamafactory_only_is_caught_by_parity(
        tmp_path, tiny_model_dir, mini_dataset, llamafactory_env, capsys, monkeypatch):
    plant = tmp_path / "plant"
    plant.mkdir()
    # imported at interpreter start-up in every worker: doubles the lr the adapter hands LLaMA-Factory
    (plant / "sitecustomize.py").write_text(
        "import adapters.llamafactory_adapter as lf\n"
        "_args = lf.train_args\n"
        "def planted(*a, **kw):\n"
        "    out = _args(*a, **kw)\n"
        "    out['learning_rate'] *= 2\n"
        "    return out\n"
        "lf.train_args = planted\n")
    monkeypatch.setenv("PYTHONPATH", str(plant))
    code = main(["parity", str(_spec(tmp_path, tiny_model_dir)), "--frameworks", "peft,llamafactory",
                 "--out", str(tmp_path / "p"), "--json"])
    verdict = json.loads(capsys.readouterr().out)
    assert code == 1 and not verdict["aligned"]
    assert verdict["cause"].startswith("setting 'optim.group0.lr' differs")
    assert "llamafactory=0.01" in verdict["cause"]


def test_under_accumulation_parity_names_llamafactorys_loss_normalisation(
        tmp_path, tiny_model_dir, mini_dataset, llamafactory_env, capsys):
    code = main(["parity", str(_spec(tmp_path, tiny_model_dir, grad_accum=2, batch_size=1)),
                 "--frameworks", "peft,llamafactory", "--out", str(tmp_path / "p"), "--json"])
    verdict = json.loads(capsys.readouterr().out)
    assert code == 1
    assert verdict["cause"] == "setting 'loss_norm' differs: peft=tokens, llamafactory=mean_of_means"


def test_the_installed_llamafactory_declares_the_tables_defaults(llamafactory_env):
    """Read in LLaMA-Factory's own environment: the main one does not install it."""
    code = ("import json; from harness.config.native_defaults import installed_defaults as d; "
            "print(json.dumps(d('llamafactory')))")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([str(llamafactory_env.python), "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=root, env={"PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert drift("llamafactory", json.loads(done.stdout.strip().splitlines()[-1])) == []
