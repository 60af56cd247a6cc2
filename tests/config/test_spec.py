"""Run specs and suites: validation with named keys, merging, stable hashes, matrix expansion."""

import pytest

from harness.errors import UserError
from harness.config.spec import DEFAULTS, make_spec, parse_set, spec_hash
from harness.config.suite import load_suite


def test_defaults_validate_and_hash_is_stable():
    a, b = make_spec(), make_spec({})
    assert a == b and spec_hash(a) == spec_hash(b)
    assert spec_hash(make_spec({"lora": {"r": 4}})) != spec_hash(a)


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(UserError, match=r"unknown key 'lora.alfa' \(did you mean 'alpha'\?\)"):
        make_spec({"lora": {"alfa": 3}})
    with pytest.raises(UserError, match="unknown key 'optimiser'"):
        make_spec({"optimiser": {}})


@pytest.mark.parametrize("override, message", [
    ({"framework": "keras"}, "framework must be one of peft, swift, llamafactory, torch"),
    ({"lora": {"r": 0}}, "lora.r must be an integer >= 1"),
    ({"lora": {"targets": "everything"}}, "lora.targets must be one of"),
    ({"train": {"precision": "fp8"}}, "train.precision must be one of"),
    ({"optim": {"betas": [0.9]}}, "optim.betas must be a list of two numbers"),
    ({"distributed": {"zero_stage": 4}}, "distributed.zero_stage must be one of"),
    ({"distributed": {"offload_params": True, "zero_stage": 2}}, "offload_params needs zero_stage 3"),
    ({"train": "fast"}, "'train' must be a mapping"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        make_spec(override)


def test_merge_keeps_untouched_defaults():
    spec = make_spec({"optim": {"lr": 1e-3}})
    assert spec.optim.lr == 1e-3 and list(spec.optim.betas) == DEFAULTS["optim"]["betas"]


def test_parse_set_builds_nested_overrides():
    assert parse_set(["lora.r=16", "train.steps=5", "alignment=native"]) == {
        "lora": {"r": 16}, "train": {"steps": 5}, "alignment": "native"}
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse_set(["lora.r"])


def _suite(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_suite_matrix_include_exclude_only(tmp_path):
    path = _suite(tmp_path, """
name: t
defaults: {train: {steps: 3}}
matrix: {framework: [peft, swift], seed: [0, 1]}
include: [{framework: torch}]
exclude: [{framework: swift, seed: 1}]
cells: {"framework=torch": {train: {steps: 1}}}
""")
    name, cells = load_suite(path)
    assert name == "t"
    keys = [c.key for c in cells]
    assert {"framework": "swift", "seed": 1} not in keys and {"framework": "torch", "seed": 0} in keys
    assert len(cells) == 4
    torch_cell = next(c for c in cells if c.key["framework"] == "torch")
    assert torch_cell.spec.train.steps == 1
    peft1 = next(c for c in cells if c.key == {"framework": "peft", "seed": 1})
    assert peft1.spec.train.seed == 1 and peft1.spec.train.data_seed == 1
    assert peft1.run_id == f"t-{peft1.spec_hash[:10]}"
    # stable across loads; --only filters
    assert [c.spec_hash for c in load_suite(path)[1]] == [c.spec_hash for c in cells]
    assert [c.key for c in load_suite(path, only=["framework=peft"])[1]] == [
        {"framework": "peft", "seed": 0}, {"framework": "peft", "seed": 1}]
    # --set holds for every cell, the one the suite gives its own steps too
    assert {c.spec.train.steps for c in load_suite(path, overrides=["train.steps=5"])[1]} == {5}


def test_suite_rejects_unknown_keys(tmp_path):
    with pytest.raises(UserError, match="unknown suite key 'matrx'"):
        load_suite(_suite(tmp_path, "matrx: {}\n"))
    with pytest.raises(UserError, match="unknown key 'train.stpes'"):
        load_suite(_suite(tmp_path, "defaults: {train: {stpes: 3}}\n"))


def test_shipped_suites_load(repo_root):
    for path in sorted((repo_root / "harness" / "suites").glob("*.yaml")):
        if path.name.startswith("parity"):  # run specs for `lorabench parity`, not suites
            make_spec(__import__("yaml").safe_load(path.read_text()))
        else:
            name, cells = load_suite(path)
            assert cells, path


def test_exponent_without_dot_is_a_number():
    """PyYAML reads `1e-3` as a string (YAML 1.1); users mean a number."""
    assert make_spec(parse_set(["optim.lr=1e-3"])).optim.lr == 1e-3
    assert make_spec({"optim": {"lr": "2e-4"}, "train": {"steps": "7"}}).train.steps == 7
    with pytest.raises(UserError, match="optim.lr must be a number"):
        make_spec({"optim": {"lr": "fast"}})


def test_torch_reference_reads_its_settings_from_the_live_objects():
    """Tamper with the live objects and the read-back follows them, not the spec."""
    import torch
    from transformers import get_scheduler

    from adapters.torch_adapter import TrainerOrderSampler, reference_settings, schedule_of

    model = torch.nn.Linear(4, 4).to(torch.bfloat16)  # the spec may say fp32: the model is what trains
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=3, num_training_steps=10)
    assert schedule_of(scheduler) == ("cosine", 3)
    assert schedule_of(get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=10)) == ("linear", 0)
    assert schedule_of(get_scheduler("constant", optimizer)) == ("constant", 0)
    sampler = TrainerOrderSampler(8, 2, data_seed=7)
    next(iter(sampler))

    from harness.archs import MINICPMV4_6
    from harness.chat import prompt_arch

    class Collator:
        system, label_mask, arch = None, "all", prompt_arch(MINICPMV4_6, "none")

    steps = [{"step": 1, "loss": 1.0, "lr": 1e-3, "samples": 4}]
    got = reference_settings(model, scheduler, sampler, Collator(), steps, ["a", "b"], [2, 2], "tokens")
    assert got["precision"] == "bf16" and got["system_prompt"] == "none" and got["label_mask"] == "all"
    assert got["answer_prefix"] == "none"  # read from the collator's prompt format
    assert got["grad_accum"] == 2 and got["batch_size"] == 2 and got["global_batch"] == 4
    assert got["lr_schedule"] == "cosine" and got["warmup_steps"] == 3 and got["data_seed"] == 7
