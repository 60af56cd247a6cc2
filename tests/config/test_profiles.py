"""Named native profiles: each sets its recipe's factors, keeps everything else, and says where the
values come from; spec hashes of specs that do not use the new keys are unchanged."""

import pytest

from harness.config.profiles import HOME_FRAMEWORK, PROFILES, SOURCES
from harness.config.spec import make_spec, spec_hash
from harness.errors import UserError


@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_sets_its_factors_and_keeps_the_rest(name):
    spec = make_spec({"alignment": name, "framework": HOME_FRAMEWORK[name], "model": "tiny",
                      "train": {"steps": 40, "seed": 3, "max_train_samples": 100}})
    for section, values in PROFILES[name].items():
        for key, value in values.items():
            if key == "warmup_ratio" or (name == "swift-default" and key == "grad_accum"):
                continue
            if (section, key) == ("distributed", "zero_stage") and name == "minicpmv-official":
                continue  # fp16 + ZeRO-2 needs a GPU: dropped on the CPU (below)
            assert spec.to_dict()[section][key] == value, (section, key)
    assert (spec.train.steps, spec.train.seed, spec.train.max_train_samples) == (40, 3, 100)
    assert name in SOURCES and SOURCES[name]


def test_official_recipe_values_and_its_warmup_ratio():
    spec = make_spec({"alignment": "minicpmv-official", "train": {"steps": 250}})
    assert spec.lora.r == 64 and spec.lora.alpha == 64 and spec.lora.dropout == 0.05
    assert spec.lora.targets == "lm-attention"
    assert spec.lora.modules_to_save == ("embed_tokens", "model.merger")
    assert spec.train.freeze_vision is False  # tune_vision true: the vision tower in full
    assert (spec.optim.lr, spec.optim.weight_decay, spec.optim.betas) == (1e-6, 0.1, (0.9, 0.95))
    assert (spec.schedule.type, spec.schedule.warmup_steps) == ("cosine", 3)  # ceil(0.01 x 250)
    assert spec.train.answer_prefix == "none" and spec.train.system_prompt == "none"
    assert "ead51cde2ac30c1dcd8a65efedfba9dc6272cb22" in SOURCES["minicpmv-official"]


def test_official_recipe_keeps_zero2_on_a_gpu_only():
    assert make_spec({"alignment": "minicpmv-official", "device": "cuda"}).distributed.zero_stage == 2
    assert make_spec({"alignment": "minicpmv-official"}).distributed.zero_stage is None


def test_swift_default_accumulation_follows_swifts_rule():
    assert make_spec({"alignment": "swift-default", "framework": "swift"}).train.grad_accum == 16
    two = make_spec({"alignment": "swift-default", "framework": "swift", "distributed": {"world_size": 2}})
    assert two.train.grad_accum == 8  # ceil(16 / (1 x 2))


def test_settings_a_framework_cannot_take_are_named():
    with pytest.raises(UserError, match="swift_shuffle"):
        make_spec({"alignment": "swift-default", "framework": "peft"})
    with pytest.raises(UserError, match="label_mask=all cannot run on swift"):
        make_spec({"alignment": "peft-default", "framework": "swift"})
    with pytest.raises(UserError, match="alignment must be one of"):
        make_spec({"alignment": "official"})


def test_keys_added_later_leave_old_hashes_alone():
    plain = make_spec({"train": {"steps": 7}}).to_dict()
    stripped = {**plain, "lora": {k: v for k, v in plain["lora"].items() if k != "modules_to_save"},
                "train": {k: v for k, v in plain["train"].items() if k != "answer_prefix"}}
    assert spec_hash(plain) == spec_hash(stripped)
    used = make_spec({"train": {"steps": 7, "answer_prefix": "none"}})
    assert spec_hash(used) != spec_hash(plain)


def test_modules_to_save_must_be_names():
    with pytest.raises(UserError, match="modules_to_save"):
        make_spec({"lora": {"modules_to_save": "embed_tokens"}})


def test_profile_ablation_table_in_the_report():
    from harness.analysis.report.tables import parity_tables
    from harness.commands.parity import format_profile_ablation

    doc = {"first": "swift-default", "second": "minicpmv-official", "framework": "swift", "steps": 8,
           "first_final_loss": 2.0,
           "factors": [{"factor": "lr", "values": {"swift-default": [1e-4], "minicpmv-official": [1e-6]},
                        "max_abs_dloss": 0.5, "final_loss_gap": 0.4, "final_loss": 2.4},
                       {"factor": "label_mask", "values": {"swift-default": ["answer"], "minicpmv-official": ["all"]},
                        "error": "not expressible on swift"}],
           "totals": [{"factor": "minicpmv-official on peft", "values": None, "max_abs_dloss": 0.6,
                       "final_loss_gap": 0.5}]}
    text = format_profile_ablation(doc)
    assert "lr" in text and "1e-06" in text and "not expressible on swift" in text
    (table,) = parity_tables([{**doc, "_label": "x"}], 5)
    assert table.title.startswith("Table 5a. Why swift-default and minicpmv-official")
    assert [r[0].text for r in table.rows] == ["lr", "label_mask", "minicpmv-official on peft"]
    assert [c.text for c in table.rows[0][:3]] == ["lr", "0.0001", "1e-06"]


def test_a_factor_of_several_keys_reads_as_named_settings():
    from harness.config.profiles import factor_setting

    assert factor_setting("modules trained in full", [[], True]) == "modules_to_save none; freeze_vision true"
    assert (factor_setting("modules trained in full", [["embed_tokens", "model.merger"], False])
            == "modules_to_save embed_tokens, model.merger; freeze_vision false")
    assert factor_setting("batch x accumulation", [1, 16]) == "batch_size 1; grad_accum 16"
    assert factor_setting("betas", [[0.9, 0.95]]) == "0.9, 0.95"  # one key whose value is a list
    assert factor_setting("targets", ["lm-linear"]) == "lm-linear"
    assert factor_setting("lr", None) == "—"


def test_vision_lora_on_a_tower_trained_in_full_is_refused():
    with pytest.raises(UserError, match="neither PEFT nor swift puts LoRA inside a module trained in full"):
        make_spec({"lora": {"targets": "lm+vision-linear"}, "train": {"freeze_vision": False}})
