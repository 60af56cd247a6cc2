"""Every family of harness.archs on a tiny random checkpoint built here: the map resolves, and both frameworks train.

tests/arch_models.py builds, from configs written there, a Qwen2-VL, Qwen2.5-VL, Qwen3-VL, MiniCPM-V 4.6
and MiniCPM-V 4.7 checkpoint (1-2 layers, hidden sizes 32-64; Qwen's special tokens at their real ids,
which ms-swift's Qwen templates hard-code), then trains one LoRA step on each through lorabench's PEFT
adapter, all five in one worker process, and through its ms-swift adapter in a second one (importing
swift patches transformers globally). The tests read what the workers recorded:
- the LoRA target presets resolve from the module names through the one map (`lm-linear`: the language
  model only; `lm+vision-linear`: also every vision-tower Linear, never the projector), and
  `vision_modules_to_save` names existing modules that `arch.vision_full` matches and that cover the
  tower's weights;
- harness.archs agrees with ms-swift's own map (module keys, default system, answer prefix);
- each step ran with a finite loss, and PEFT and swift report the same LoRA targets (count and sha) and the
  same first loss.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import arch_models
from harness import archs

pytestmark = pytest.mark.integration

HELPER = Path(arch_models.__file__).resolve()
ARCH = {a.name: a for a in archs.ARCHS}
NAMES = arch_models.ARCH_NAMES
MODEL_CLASS = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
               "qwen3_vl": "Qwen3VLForConditionalGeneration", "minicpmv4_6": "MiniCPMV4_6ForConditionalGeneration",
               "minicpmv4_7": "MiniCPMV4_7ForConditionalGeneration"}
QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def test_every_family_of_the_map_is_covered():
    assert set(NAMES) == set(ARCH) and set(MODEL_CLASS) == set(ARCH)


def _run_worker(framework: str, root: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(HELPER), framework, str(root)], cwd=str(HELPER.parent.parent),
                          env=env, capture_output=True, text=True, timeout=600)
    out = root / f"{framework}.json"
    assert proc.returncode == 0 and out.is_file(), f"{framework} worker failed:\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("archs")


@pytest.fixture(scope="module")
def peft_runs(root) -> dict:
    """Builds the checkpoints, records their module names, trains one PEFT step each (one process)."""
    return _run_worker("peft", root)


@pytest.fixture(scope="module")
def swift_runs(root, peft_runs) -> dict:
    """One ms-swift step on each checkpoint the PEFT worker built (a process of its own)."""
    return _run_worker("swift", root)


def _facts(peft_runs, name) -> dict:
    entry = peft_runs[name]
    assert "facts" in entry, f"{name}: the checkpoint did not load: {entry.get('error')}"
    return entry["facts"]


def _sha(names) -> str:  # as adapters.readback.model_settings writes lora.targets_sha
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_loads_as_its_family(name, peft_runs):
    facts = _facts(peft_runs, name)
    assert facts["arch"] == name and facts["model_class"] == MODEL_CLASS[name]
    # the processor expands the family's image token, the one the model's config reads
    assert facts["image_token_id"] == facts["config_image_token_id"]
    if name in QWEN:
        assert facts["image_token_id"] == 151655  # Qwen's real id: swift's Qwen2VLTemplate hard-codes it


@pytest.mark.parametrize("name", NAMES)
def test_target_presets_resolve_from_the_module_names(name, peft_runs):
    arch, facts = ARCH[name], _facts(peft_runs, name)
    linears, presets = facts["linears"], facts["presets"]
    lm, lm_vision = presets["lm-linear"], presets["lm+vision-linear"]

    assert lm and lm == [n for n in linears if n.startswith(arch.lm_prefix)]  # every LM Linear, nothing else
    assert "lm_head" not in lm_vision and presets["every-linear"] == [n for n in linears if n != "lm_head"]

    projector = [n for n in linears if arch.is_projector(n)]
    tower = [n for n in linears if arch.is_vision(n) and not arch.is_projector(n)]
    assert projector, f"no Linear under {arch.projector_prefixes}: the projector prefixes name nothing"
    assert tower, f"no Linear under {arch.vision_prefix}: the vision prefix names nothing"
    assert set(lm) < set(lm_vision)
    assert sorted(set(lm_vision) - set(lm)) == sorted(tower)  # the whole tower, no projector module
    assert not [n for n in lm_vision if arch.is_projector(n)]
    # the swift adapter resolves the same names on a meta-device copy built from config.json alone
    assert facts["swift_adapter_targets"] == lm_vision


@pytest.mark.parametrize("name", NAMES)
def test_vision_modules_to_save_are_the_tower(name, peft_runs):
    arch, facts = ARCH[name], _facts(peft_runs, name)
    full = facts["vision_full"]
    assert full, f"{arch.vision_full!r} matches no module"
    assert set(full) <= set(facts["modules"])
    assert all(re.fullmatch(arch.vision_full, n) for n in full)
    assert all(n.startswith(arch.vision_prefix) and not arch.is_projector(n) for n in full)
    # together they hold every weight of the vision tower, and none of the projector's
    tower_params = [p for p in facts["params"] if arch.is_vision(p) and not arch.is_projector(p)]
    assert tower_params and all(any(p.startswith(m + ".") for m in full) for p in tower_params)


@pytest.mark.parametrize("name", NAMES)
def test_collator_supervises_the_answer_only(name, peft_runs):
    collator = _facts(peft_runs, name)["collator"]
    assert collator["supervised"] == collator["answers"]  # the answer + <|im_end|> + newline, per row
    assert collator["image_tokens"] > 0 and collator["first_mask_column"] == [1, 1]  # right padding


def _check_step(name, run, facts) -> None:
    arch = ARCH[name]
    assert run["steps"] == 1 and run["finite"], run["losses"]
    assert run["adapter_saved"]
    effective = run["effective"]
    lm_vision = facts["presets"]["lm+vision-linear"]
    assert effective["lora.n_targets"] == len(lm_vision)
    assert effective["lora.targets_sha"] == _sha(lm_vision)
    assert effective["lora.targets_vision"] == sum(1 for n in lm_vision if arch.is_vision(n)) > 0


@pytest.mark.parametrize("name", NAMES)
def test_peft_trains_one_step(name, peft_runs):
    run = peft_runs[name]
    assert run["ok"], run.get("error")
    _check_step(name, run, _facts(peft_runs, name))


@pytest.mark.parametrize("name", NAMES)
def test_swift_trains_one_step(name, peft_runs, swift_runs):
    run = swift_runs[name]
    assert run["ok"], run.get("error")
    # swift's own model type and template for the family, never lorabench's embedded-model registration
    assert run["swift_used"] == {"model_type": ARCH[name].swift_template, "template": ARCH[name].swift_template}
    _check_step(name, run, _facts(peft_runs, name))


@pytest.mark.parametrize("name", NAMES)
def test_frameworks_agree(name, peft_runs, swift_runs):
    peft, swift = peft_runs[name], swift_runs[name]
    assert peft["ok"] and swift["ok"], (peft.get("error"), swift.get("error"))
    for key in ("lora.n_targets", "lora.targets_sha", "lora.targets_vision", "trainable_params"):
        assert peft["effective"][key] == swift["effective"][key], key
    # LoRA B starts at zero, so the first loss is the base model's on the same rows: equal only when
    # both frameworks encode the same tokens and pixels (the chat format of harness.archs = swift's template)
    assert peft["losses"][0] == pytest.approx(swift["losses"][0], abs=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_map_matches_swifts_own(name, swift_runs):
    """harness.archs against swift's model type (module keys) and template meta for the family."""
    arch, meta = ARCH[name], swift_runs[name]["swift_meta"]
    assert [k for k in meta["language_model"] if k != "lm_head"] == [arch.lm_prefix.rstrip(".")]
    assert meta["vision_tower"] == [arch.vision_prefix.rstrip(".")]
    assert sorted(meta["aligner"]) == sorted(p.rstrip(".") for p in arch.projector_prefixes)
    assert meta["default_system"] == arch.default_system
    assert arch.answer_prefix == (meta["non_thinking_prefix"] if meta["is_thinking"] else "")
    if name in QWEN:
        assert meta["image_token_id"] == 151655
