"""The round trip accounts for every saved key: a key renamed between releases is named, not lost.

An adapter saved under one release and loaded under another can lose a tensor without an error: PEFT
ignores a saved key that matches no module and leaves that module's adapter at its initialisation.
"""

import pytest
import torch

from harness.run import roundtrip

A = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_B.weight"
OLD_LAYOUT = A.replace("model.language_model.layers.", "model.layers.")  # as a release before the move wrote it


def _tensors():
    return {A: torch.arange(8.0).reshape(2, 4), B: torch.arange(8.0).reshape(4, 2) / 10}


def test_a_loaded_adapter_that_holds_every_saved_tensor_passes():
    check = roundtrip.loader_key_check(_tensors(), _tensors())
    assert check == {"saved": 2, "loaded": 2, "not_loaded": [], "not_filled": [], "remapped": {}}


def test_a_renamed_key_the_loader_ignored_is_named_on_both_sides():
    saved = _tensors()
    saved[OLD_LAYOUT] = saved.pop(A)
    loaded = {**_tensors(), A: torch.full((2, 4), 0.5)}  # the loader's initial value: not the trained one
    check = roundtrip.loader_key_check(saved, loaded)
    assert check["not_loaded"] == [OLD_LAYOUT] and check["not_filled"] == [A] and not check["remapped"]


def test_a_key_the_loader_mapped_onto_the_new_layout_with_its_value_is_remapped_not_lost():
    saved = _tensors()
    saved[OLD_LAYOUT] = saved.pop(A)
    check = roundtrip.loader_key_check(saved, _tensors())
    assert check["remapped"] == {OLD_LAYOUT: A} and not check["not_loaded"] and not check["not_filled"]


def test_a_value_changed_on_load_is_not_taken_for_the_saved_one():
    loaded = {**_tensors(), B: _tensors()[B].to(torch.bfloat16)}  # rounded: no longer the trained value
    check = roundtrip.loader_key_check(_tensors(), loaded)
    assert check["not_loaded"] == [B] and check["not_filled"] == [B]


def test_the_failure_names_the_renamed_key_and_the_block_fails():
    probe = {"trainable": {}}
    keys = roundtrip.loader_key_check({OLD_LAYOUT: _tensors()[A]}, {A: torch.zeros(2, 4)})
    block = roundtrip.loader_block(0.0, "bfloat16", probe, {}, keys)
    assert block["ok"] is False
    summary, cause = roundtrip.summarise({"peft": block})
    assert summary["ok"] is False
    assert f"peft loader: saved tensors it did not load: {OLD_LAYOUT}" in cause
    assert f"left at their initial value): {A}" in cause
    # with the logits inside tolerance (half precision), only the keys tell: and they do
    assert block["max_abs_logit_diff"] <= block["tolerance"]


# ---- integration: a real adapter, saved, one key renamed as another release would have written it ----
def _rename(adapter_dir, probe_path, old: str, new: str, in_probe: bool) -> None:
    """Rename one key in the saved file; with in_probe, also in the probe's list of trained tensors, as
    when the training release itself named the module so (the file agrees with the trainer)."""
    from safetensors.torch import load_file, save_file

    from adapters.lora_setup import normalize_key

    path = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(str(path))
    tensors[new] = tensors.pop(old)
    save_file(tensors, str(path))
    if in_probe:
        probe = torch.load(str(probe_path), weights_only=True)
        probe["trainable"][normalize_key(new)] = probe["trainable"].pop(normalize_key(old))
        torch.save(probe, str(probe_path))


@pytest.mark.integration
def test_a_planted_key_rename_fails_the_round_trip_naming_the_key(tiny_model_dir, mini_dataset, tmp_path):
    """One loader pass per case on the tiny model (5 s in all): the file renamed as a release with the
    pre-`language_model` layout writes it, once agreeing with the trainer's names and once not."""
    import shutil

    from tests.run.test_roundtrip import _trained_adapter

    adapter, probe = _trained_adapter(tiny_model_dir, mini_dataset, tmp_path / "trained", full_modules=False)
    block, _, _ = roundtrip.peft_roundtrip(tiny_model_dir, adapter, probe)
    assert block["ok"] and block["keys"]["not_loaded"] == [] and block["keys"]["saved"] > 0, block
    assert block["releases"]["saved_by_peft"] and block["releases"]["loaded_by"]["peft"]
    saved = sorted(roundtrip.saved_tensors(adapter))
    old = "base_model.model." + next(k for k in saved if ".language_model.layers." in k and "lora_A" in k)
    new = old.replace("model.language_model.layers.", "model.layers.")
    for in_probe in (True, False):
        case = tmp_path / f"renamed-{in_probe}"
        shutil.copytree(tmp_path / "trained", case)
        _rename(case / "adapter", case / "probe.pt", old, new, in_probe)
        block, _, _ = roundtrip.peft_roundtrip(tiny_model_dir, case / "adapter", case / "probe.pt")
        assert not block["ok"]
        assert block["keys"]["not_loaded"] == [new] and block["keys"]["not_filled"] == [old], block["keys"]
        _, cause = roundtrip.summarise({"peft": block})
        assert new in cause and "did not load" in cause
