"""`--set` with Hugging Face / ms-swift names, list elements, and the renamed lora.targets presets."""

import pytest

from harness.cli import main
from harness.config import spec as spec_module
from harness.config.spec import SET_ALIASES, make_spec, parse_set, spec_hash
from harness.config.suite import load_suite
from harness.dotted import get
from harness.errors import UserError


@pytest.mark.parametrize("assignment, key, expected", [
    ("learning_rate=1e-4", "optim.lr", 1e-4),
    ("weight_decay=0.1", "optim.weight_decay", 0.1),
    ("adam_beta1=0.8", "optim.betas", [0.8, 0.999]),
    ("adam_beta2=0.95", "optim.betas", [0.9, 0.95]),
    ("adam_epsilon=1e-6", "optim.eps", 1e-6),
    ("gradient_accumulation_steps=4", "train.grad_accum", 4),
    ("per_device_train_batch_size=1", "train.batch_size", 1),
    ("max_steps=7", "train.steps", 7),
    ("lr_scheduler_type=cosine", "schedule.type", "cosine"),
    ("warmup_steps=3", "schedule.warmup_steps", 3),
    ("lora_rank=32", "lora.r", 32),
    ("lora_alpha=64", "lora.alpha", 64),
    ("lora_dropout=0.05", "lora.dropout", 0.05),
    ("target_modules=q_proj,v_proj", "lora.targets", ["q_proj", "v_proj"]),
    ("target_modules=[q_proj, k_proj]", "lora.targets", ["q_proj", "k_proj"]),
    ("target_modules=q_proj", "lora.targets", ["q_proj"]),
    ("data_seed=5", "train.data_seed", 5),
    ("max_length=512", "train.max_length", 512),
    ("gradient_checkpointing=true", "train.grad_checkpointing", True),
])
def test_hugging_face_and_swift_names_set_the_lorabench_key(assignment, key, expected):
    spec = make_spec(parse_set([assignment]))
    assert get(spec.to_dict(), key) == expected  # the JSON form: lists as written


def test_an_alias_and_its_lorabench_key_give_the_same_run():
    by_alias = make_spec(parse_set(["learning_rate=2e-4", "adam_beta2=0.95", "lora_rank=4"]))
    by_key = make_spec(parse_set(["optim.lr=2e-4", "optim.betas=[0.9, 0.95]", "lora.r=4"]))
    assert spec_hash(by_alias) == spec_hash(by_key)


def test_seed_sets_the_data_order_too_unless_data_seed_follows():
    spec = make_spec(parse_set(["seed=3"]))
    assert (spec.train.seed, spec.train.data_seed) == (3, 3)
    spec = make_spec(parse_set(["seed=3", "data_seed=9"]))
    assert (spec.train.seed, spec.train.data_seed) == (3, 9)


def test_one_list_element_can_be_set_after_the_whole_list():
    spec = make_spec(parse_set(["optim.betas=[0.8, 0.9]", "adam_beta2=0.95"]))
    assert spec.optim.betas == (0.8, 0.95)
    assert make_spec(parse_set(["optim.betas[0]=0.5"])).optim.betas == (0.5, 0.999)
    with pytest.raises(UserError, match=r"optim.betas\[2\]: optim.betas has 2 elements"):
        make_spec(parse_set(["optim.betas[2]=0.5"]), source="--set")


def test_every_alias_points_at_a_real_key():
    spec = make_spec()
    for keys in SET_ALIASES.values():
        for key in keys:
            get(spec, key.split("[")[0])  # KeyError if the table names a missing key


@pytest.mark.parametrize("assignment, message", [
    ("freeze_vit=false", "'freeze_vit' has no lorabench equivalent with the same meaning: ms-swift's"),
    ("bf16=true", "use train.precision=bf16"),
    ("target_modules=all-linear", "target_modules=all-linear means the language model's linears in ms-swift"),
    ("learning_rate=fast", "optim.lr must be a number"),
])
def test_names_with_another_meaning_are_refused_with_what_to_use(assignment, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_spec(parse_set([assignment]))


def test_aliases_work_through_lorabench_run_set(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nmatrix: {framework: [peft]}\n")
    name, cells = load_suite(suite, overrides=["learning_rate=3e-4", "max_steps=4"])
    assert cells[0].spec.optim.lr == 3e-4 and cells[0].spec.train.steps == 4
    assert main(["run", str(suite), "--set", "freeze_vit=false", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorabench: error: --set: 'freeze_vit'") and err.count("\n") == 1


# ---- renamed presets ---------------------------------------------------------------------------

@pytest.mark.parametrize("old, new", [("lm", "lm-linear"), ("lm+vision", "lm+vision-linear"),
                                      ("all-linear", "every-linear")])
def test_old_preset_names_keep_working_with_one_warning(old, new, capsys, monkeypatch):
    monkeypatch.setattr(spec_module, "_warned_presets", set())
    spec = make_spec({"lora": {"targets": old}}, source="suite.yaml")
    assert spec.lora.targets == new
    assert spec_hash(spec) == spec_hash(make_spec({"lora": {"targets": new}}))
    make_spec({"lora": {"targets": old}}, source="suite.yaml")  # warned once per name
    err = capsys.readouterr().err.splitlines()
    assert err == [f"lorabench: warning: suite.yaml: lora.targets {old!r} is now called {new!r} "
                   "(the old name still works)"]


def test_new_preset_names_do_not_warn(capsys):
    for name in ("lm-linear", "lm+vision-linear", "every-linear"):
        assert make_spec({"lora": {"targets": name}}).lora.targets == name
    assert capsys.readouterr().err == ""
    assert make_spec().lora.targets == "lm-linear"


def test_unknown_preset_lists_the_new_names():
    presets = "lm-linear, lm-attention, lm.vision-linear, every-linear"
    with pytest.raises(UserError, match=f"lora.targets must be one of {presets}"):
        make_spec({"lora": {"targets": "everything"}})


def test_shipped_suites_with_old_names_still_load(repo_root, monkeypatch):
    monkeypatch.setattr(spec_module, "_warned_presets", set())
    _, cells = load_suite(repo_root / "harness" / "suites" / "memory.yaml")
    assert {c.spec.lora.targets for c in cells} <= {"lm-linear", "lm+vision-linear", "every-linear"}


def test_resolve_targets_reads_old_and_new_names():
    torch = pytest.importorskip("torch")
    from harness.lora_targets import resolve_targets

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.language_model = torch.nn.Module()
            self.model.language_model.q_proj = torch.nn.Linear(2, 2)
            self.model.visual = torch.nn.Module()
            self.model.visual.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
            self.model.visual.merger = torch.nn.Module()
            self.model.visual.merger.mlp = torch.nn.Linear(2, 2)
            self.lm_head = torch.nn.Linear(2, 2)
            self.config = __import__("types").SimpleNamespace(model_type="qwen2_vl")  # the family, for the map

    model = Tiny()
    lm = ["model.language_model.q_proj"]
    assert resolve_targets(model, "lm-linear") == resolve_targets(model, "lm") == lm
    assert resolve_targets(model, "lm+vision-linear") == resolve_targets(model, "lm+vision") == \
        lm + ["model.visual.blocks.0"]
    assert resolve_targets(model, "every-linear") == resolve_targets(model, "all-linear") == \
        lm + ["model.visual.blocks.0", "model.visual.merger.mlp"]
