"""The native defaults table against the installed releases' own argument dataclasses, field by field."""

import json
import subprocess
import sys

import pytest

from harness.config.native_defaults import ARG_DEFAULTS, NATIVE_FACTORS, drift, installed_defaults
from harness.config.profiles import PROFILES


def _dotted(settings: dict, key: str):
    value = settings
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


@pytest.mark.parametrize("framework", ["peft", "swift", "llamafactory"])
def test_the_profile_says_what_the_framework_fields_say(framework):
    profile = PROFILES[f"{framework}-default"]
    for arg in ARG_DEFAULTS[framework]:
        if arg.profile_key:
            assert _dotted(profile, arg.profile_key) == arg.value, f"{arg.owner}.{arg.field} vs {arg.profile_key}"


def test_the_ablation_factors_say_what_the_framework_fields_say():
    for framework in ("peft", "swift"):
        table = {a.profile_key: a.value for a in ARG_DEFAULTS[framework] if a.profile_key}
        for key in ("lora.alpha", "lora.dropout", "optim.weight_decay", "optim.betas.1", "schedule.type"):
            factor = {"lora.alpha": "alpha", "lora.dropout": "dropout", "optim.weight_decay": "weight_decay",
                      "optim.betas.1": "beta2", "schedule.type": "scheduler"}[key]
            assert _dotted(NATIVE_FACTORS[factor][framework], key) == table[key], (framework, key)


def test_a_moved_or_removed_default_is_named_with_both_values():
    installed = {f"{a.owner}.{a.field}": a.value for a in ARG_DEFAULTS["peft"]}
    assert drift("peft", installed) == []
    installed["peft:LoraConfig.lora_alpha"] = 16
    del installed["transformers:TrainingArguments.warmup_steps"]
    assert drift("peft", installed) == [
        "transformers:TrainingArguments.warmup_steps: gone from the installed release (the table has 0, "
        "transformers 5.19 + peft 0.20)",
        "peft:LoraConfig.lora_alpha: installed default 16, the table has 8 (transformers 5.19 + peft 0.20)"]


def test_the_installed_transformers_and_peft_declare_the_tables_defaults():
    assert drift("peft", installed_defaults("peft")) == []


@pytest.mark.integration
def test_the_installed_ms_swift_declares_the_tables_defaults():
    """ms-swift imported in its own process (~10 s: it patches transformers globally)."""
    pytest.importorskip("swift")
    code = ("import json; from harness.config.native_defaults import installed_defaults as d; "
            "print(json.dumps(d('swift')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert drift("swift", json.loads(done.stdout.strip().splitlines()[-1])) == []
