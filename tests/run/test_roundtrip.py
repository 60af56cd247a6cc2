"""The adapter round trip: a reloaded adapter must be the trained model, and a broken save is named."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.chat import DEFAULT_SYSTEM
from harness.config.spec import make_spec
from harness.run import roundtrip
from harness.run.job_file import Job


# ---- unit: the comparisons ---------------------------------------------------------------------
def test_missing_tensors_names_absent_and_sharded_tensors():
    trainable = {"a.lora_A.weight": [4, 8], "a.lora_B.weight": [8, 4], "merger.mlp.0.weight": [16, 16]}
    saved = {"a.lora_A.weight": [4, 8], "a.lora_B.weight": [0]}
    assert roundtrip.missing_tensors(trainable, saved) == [
        "a.lora_B.weight (saved shape [0], trained [8, 4])", "merger.mlp.0.weight (not saved)"]
    assert roundtrip.missing_tensors(trainable, {**saved, "a.lora_B.weight": [8, 4],
                                                 "merger.mlp.0.weight": [16, 16]}) == []


def test_summarise_gives_each_cause():
    good = {"max_abs_logit_diff": 0.0, "tolerance": 1e-5, "missing": [], "ok": True, "merged_greedy_equal": True}
    summary, cause = roundtrip.summarise({"peft": good, "swift": dict(good)})
    assert summary["ok"] and cause is None
    bad = {**good, "max_abs_logit_diff": 3e-3, "missing": ["x.lora_B.weight (not saved)"], "merged_greedy_equal": False}
    summary, cause = roundtrip.summarise({"peft": bad, "swift": {"error": "ImportError: no swift"}})
    assert not summary["ok"]
    assert "peft loader: trained tensors missing from the saved adapter: x.lora_B.weight (not saved)" in cause
    assert "logits differ from the trained model's by 0.003" in cause
    assert "merged model's greedy answers differ" in cause
    assert "swift loader: ImportError: no swift" in cause


class _Payload:
    """What a planted probe.pt would hold: unpickling it runs os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_probe_holding_code_is_refused_without_running_it(tmp_path):
    import torch

    from harness.errors import UserError
    from harness.run.roundtrip import load_probe

    marker, probe = tmp_path / "ran", tmp_path / "probe.pt"
    torch.save({"logits": torch.zeros(1), "rows": [_Payload(marker)]}, str(probe))
    with pytest.raises(UserError, match="refused to load"):
        load_probe(probe)
    assert not marker.exists()
    torch.save({"logits": torch.zeros(2), "rows": [{"id": "a"}], "trainable": {"m.lora_A.weight": [2, 3]}},
               str(probe))
    assert load_probe(probe)["trainable"] == {"m.lora_A.weight": [2, 3]}  # tensors and plain values load


def test_report_column_counts_passed_checks():
    from harness.analysis.report.model import roundtrip_cell

    assert roundtrip_cell([{"roundtrip": {"ok": True}}, {"roundtrip": {"ok": False}}]).text == "1/2"
    assert roundtrip_cell([{"roundtrip": {"ok": True}}]).bold is False
    assert roundtrip_cell([{}, {"roundtrip": {"ok": None}}]).text == "—"


# ---- integration: a real PEFT adapter, saved, reloaded, broken ------------------------------------
def _trained_adapter(tiny_model_dir: Path, mini_dataset: Path, out: Path, full_modules: bool):
    """A PEFT model on the tiny checkpoint, one optimizer step, saved with its probe."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from adapters import chat_data, lora_setup, readback
    from harness import lora_targets

    from harness.data.samples import split_file

    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(str(tiny_model_dir))
    model = AutoModelForImageTextToText.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    spec = make_spec({"lora": {"r": 4, "alpha": 8, "dropout": 0.0, "init": "kaiming", "rslora": False}})
    unfrozen = lora_setup.vision_modules_to_save(model) if full_modules else []
    targets = lora_targets.resolve_targets(model, "lm-linear")
    model = get_peft_model(model, lora_setup.lora_config(spec, targets, unfrozen))
    rows = [json.loads(line) for line in split_file(mini_dataset, "train", "extract").read_text().splitlines()[:2]]
    for row in rows:
        row["images"] = [str(mini_dataset / row["images"][0])]
    batch = chat_data.ChatCollator(processor, DEFAULT_SYSTEM, "answer", 4096)(rows)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch).loss.backward()
    optimizer.step()
    model.save_pretrained(str(out / "adapter"))
    readback.save_probe(model, processor, rows, DEFAULT_SYSTEM, out / "probe.pt")
    return out / "adapter", out / "probe.pt"


def _drop_tensor(adapter_dir: Path, pick) -> str:
    from safetensors.torch import load_file, save_file

    path = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(str(path))
    dropped = next(k for k in sorted(tensors) if pick(k))
    del tensors[dropped]
    save_file(tensors, str(path))
    return dropped


@pytest.mark.integration
@pytest.mark.parametrize("full_modules", [False, True], ids=["lora", "lora+vision-tower-in-full"])
def test_peft_round_trip_matches_and_a_dropped_tensor_is_named(tiny_model_dir, mini_dataset, tmp_path, full_modules):
    adapter, probe = _trained_adapter(tiny_model_dir, mini_dataset, tmp_path, full_modules)
    block, merged, _ = roundtrip.peft_roundtrip(tiny_model_dir, adapter, probe)
    assert block["ok"], block
    assert block["max_abs_logit_diff"] <= 1e-5
    assert block["adapter_effect"] > 1e-4  # the check compares something that training changed
    assert block["merged_greedy_equal"] is True
    if full_modules:
        assert any(".visual." in name and "lora_" not in name for name in roundtrip.load_probe(probe)["trainable"])

    # a broken save: one trained tensor dropped from the file (a module trained in full when there is one)
    dropped = _drop_tensor(adapter, (lambda k: ".visual." in k and "lora_" not in k) if full_modules
                           else (lambda k: "lora_B" in k))
    block, _, _ = roundtrip.peft_roundtrip(tiny_model_dir, adapter, probe)
    assert not block["ok"]
    from adapters.lora_setup import normalize_key

    assert f"{normalize_key(dropped)} (not saved)" in block["missing"]
    _, cause = roundtrip.summarise({"peft": block})
    assert normalize_key(dropped) in cause


@pytest.mark.integration
def test_swift_loader_reloads_a_peft_trained_adapter(tiny_model_dir, mini_dataset, tmp_path, repo_root):
    """Cross-framework: an adapter trained outside swift loads through swift's own path, same logits."""
    adapter, probe = _trained_adapter(tiny_model_dir, mini_dataset, tmp_path, full_modules=False)
    job = Job(spec=make_spec(), run_dir=tmp_path, model_dir=tiny_model_dir, dataset_dir=mini_dataset,
              train_jsonl=tmp_path / "train.jsonl", n_train=0, eval_jsonl=tmp_path / "test.jsonl",
              deepspeed_config=None).write()
    subprocess.run([sys.executable, "-m", "harness.run.worker", "roundtrip-swift", str(job)], cwd=repo_root,
                   check=True, capture_output=True)
    block = json.loads((tmp_path / "roundtrip.swift.json").read_text())
    assert block["ok"] and block["max_abs_logit_diff"] <= 1e-5, block

    # tampered: the saved adapter is not the trained one any more
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in sorted(tensors) if "lora_B" in k)
    tensors[key] = tensors[key] * 2
    save_file(tensors, str(path))
    subprocess.run([sys.executable, "-m", "harness.run.worker", "roundtrip-swift", str(job)], cwd=repo_root,
                   check=True, capture_output=True)
    block = json.loads((tmp_path / "roundtrip.swift.json").read_text())
    assert not block["ok"] and block["max_abs_logit_diff"] > 1e-5
