"""Run specs: one frozen, validated, hashable description of a training run.

A spec is built from defaults (`DEFAULTS`, the JSON form of `harness.run_spec.Spec()`) + a
suite's defaults + a matrix cell + CLI overrides, merged section by section in JSON form, checked,
and handed out as a typed `Spec`. Unknown keys are rejected with the dotted key and the valid ones, so a
misspelt setting never silently falls back to a default. `spec_hash` is the sha256 of the canonical
JSON: it names the run's record and decides what `--resume` skips.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
import sys
from pathlib import Path

import yaml

import adapters
from harness.lora_targets import RENAMED_TARGET_PRESETS, TARGET_PRESETS  # noqa: F401 (the presets' one home)
from harness.config.envs import FRAMEWORK_ENV, check_env
from harness.config.profiles import PROFILES, apply_profile
from harness.run_spec import DEFAULTS, OPTIONAL, Spec
from harness.errors import UserError

INITS = ("kaiming", "gaussian", "pissa", "olora")
SCHEDULES = ("constant", "linear", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
LOSS_NORMS = ("tokens", "mean_of_means")
DATA_ORDERS = ("sampler", "swift_shuffle")
SYSTEM_PROMPTS = ("default", "none")
LABEL_MASKS = ("answer", "all")  # loss on the answer only, or on every non-pad, non-image token
ANSWER_PREFIXES = ("template", "none")
ALIGNMENTS = ("aligned", "native", *PROFILES)
# Keys added after records existed: while a key holds this value, spec_hash leaves it out, so a spec
# that does not use it keeps the hash (and the run id) it had before the key existed.
# A key path of one name is a top-level key.
HASH_NEUTRAL: dict[tuple[str, ...], object] = {("lora", "modules_to_save"): [], ("train", "answer_prefix"): "template",
                                               ("env",): None}


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(sorted(valid))})"


def merge(base: dict | Spec, override: dict | Spec, where: str = "", source: str = "spec") -> dict:
    """Deep-merge `override` into a copy of `base` (JSON form); a key not in `base` is a UserError."""
    base, override = _json_form(base), _json_form(override)
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        dotted = f"{where}{key}"
        known = {*base, *OPTIONAL} if not where else base
        if key not in known:
            raise UserError(f"{source}: unknown key {dotted!r}{_suggest(key, known)}")
        if key not in base:  # an optional top-level key (env): a plain value
            out[key] = value
            continue
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"{source}: {dotted!r} must be a mapping, got {type(value).__name__}")
            out[key] = merge(base[key], value, f"{dotted}.", source)
        elif isinstance(base[key], list) and _is_element_override(value):
            out[key] = _set_elements(base[key], value, dotted, source)
        else:
            out[key] = _number_if_numeric(base[key], value)
    return out


def _is_element_override(value) -> bool:
    """{index: value}: what `--set optim.betas[1]=0.95` (or adam_beta2=0.95) parses to."""
    return isinstance(value, dict) and bool(value) and all(isinstance(k, int) for k in value)


def _set_elements(items: list, elements: dict, dotted: str, source: str) -> list:
    out = list(items)
    for index, value in elements.items():
        if not 0 <= index < len(out):
            raise UserError(f"{source}: {dotted}[{index}]: {dotted} has {len(out)} elements")
        out[index] = _number_if_numeric(out[index], value)
    return out


def _number_if_numeric(default, value):
    """YAML 1.1 reads `1e-3` (no dot) as a string: take it as the number the user meant."""
    if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if isinstance(default, int) and number.is_integer() and "." not in value \
            and "e" not in value.lower() else number
    return value


def _check_choice(value, choices, key, source):
    if value not in choices:
        raise UserError(f"{source}: {key} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _check_number(value, key, source, *, low=None, integer=False, allow_none=False):
    if value is None and allow_none:
        return
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or (low is not None and value < low):
        kind = "an integer" if integer else "a number"
        bound = f" >= {low}" if low is not None else ""
        raise UserError(f"{source}: {key} must be {kind}{bound}, got {value!r}")


def validate_spec(spec: dict, source: str = "spec") -> dict:
    """Check types and choices of a fully merged spec; returns it unchanged."""
    _check_choice(spec["framework"], tuple(adapters.REGISTRY), "framework", source)
    _check_choice(spec["alignment"], ALIGNMENTS, "alignment", source)
    _check_choice(spec["task"], ("transcribe", "extract"), "task", source)
    lora, optim, sched, train, dist = spec["lora"], spec["optim"], spec["schedule"], spec["train"], spec["distributed"]
    if isinstance(lora["targets"], str):
        _check_choice(lora["targets"], TARGET_PRESETS, "lora.targets", source)
    elif not (isinstance(lora["targets"], list) and lora["targets"]
              and all(isinstance(t, str) for t in lora["targets"])):
        raise UserError(f"{source}: lora.targets must be one of {', '.join(TARGET_PRESETS)} or a list of module names")
    _check_number(lora["r"], "lora.r", source, low=1, integer=True)
    _check_number(lora["alpha"], "lora.alpha", source, low=0)
    _check_number(lora["dropout"], "lora.dropout", source, low=0)
    _check_choice(lora["init"], INITS, "lora.init", source)
    _check_number(optim["lr"], "optim.lr", source, low=0)
    if not (isinstance(optim["betas"], (list, tuple)) and len(optim["betas"]) == 2):
        raise UserError(f"{source}: optim.betas must be a list of two numbers, got {optim['betas']!r}")
    _check_number(optim["eps"], "optim.eps", source, low=0)
    _check_number(optim["weight_decay"], "optim.weight_decay", source, low=0)
    _check_choice(sched["type"], SCHEDULES, "schedule.type", source)
    _check_number(sched["warmup_steps"], "schedule.warmup_steps", source, low=0, integer=True)
    for key in ("steps", "batch_size", "grad_accum", "max_length"):
        _check_number(train[key], f"train.{key}", source, low=1, integer=True)
    _check_number(train["max_train_samples"], "train.max_train_samples", source, low=1, integer=True, allow_none=True)
    _check_choice(train["loss_norm"], LOSS_NORMS, "train.loss_norm", source)
    _check_choice(train["precision"], PRECISIONS, "train.precision", source)
    _check_choice(train["data_order"], DATA_ORDERS, "train.data_order", source)
    _check_choice(train["system_prompt"], SYSTEM_PROMPTS, "train.system_prompt", source)
    _check_choice(train["label_mask"], LABEL_MASKS, "train.label_mask", source)
    _check_choice(train["answer_prefix"], ANSWER_PREFIXES, "train.answer_prefix", source)
    if not (isinstance(lora["modules_to_save"], list) and all(isinstance(m, str) for m in lora["modules_to_save"])):
        raise UserError(f"{source}: lora.modules_to_save must be a list of module names, "
                        f"got {lora['modules_to_save']!r}")
    if lora["targets"] == "lm+vision-linear" and not train["freeze_vision"]:
        raise UserError(f"{source}: lora.targets=lm+vision-linear with train.freeze_vision=false: the vision tower "
                        "is then trained in full and neither PEFT nor swift puts LoRA inside a module trained in "
                        "full; use lora.targets=lm-linear (the tower still trains in full)")
    aligned = spec["alignment"] != "native"
    if aligned and train["label_mask"] == "all" and spec["framework"] == "swift":
        raise UserError(f"{source}: train.label_mask=all cannot run on swift (its templates supervise the answer only)")
    if aligned and train["label_mask"] == "all" and spec["framework"] == "llamafactory":
        raise UserError(f"{source}: train.label_mask=all cannot run on llamafactory (its train_on_prompt also "
                        "supervises the image pad tokens, which label_mask=all leaves out)")
    if aligned and train["data_order"] == "swift_shuffle" and spec["framework"] != "swift":
        raise UserError(f"{source}: train.data_order=swift_shuffle is swift's own pre-shuffle: framework swift only")
    _check_number(dist["world_size"], "distributed.world_size", source, low=1, integer=True)
    if dist["zero_stage"] is not None:
        _check_choice(dist["zero_stage"], (0, 1, 2, 3), "distributed.zero_stage", source)
    if dist["offload_params"] and dist["zero_stage"] != 3:
        raise UserError(f"{source}: distributed.offload_params needs zero_stage 3")
    if (dist["offload_optimizer"]) and dist["zero_stage"] in (None, 0):
        raise UserError(f"{source}: distributed.offload_optimizer needs zero_stage 1, 2 or 3")
    _check_choice(spec["device"], ("cpu", "cuda"), "device", source)
    if spec.get("env") is not None:
        check_env(spec["env"], spec["framework"], source)
    return spec


def _json_form(spec: dict | Spec) -> dict:
    return spec.to_dict() if isinstance(spec, Spec) else spec


def make_spec(*overrides: dict | Spec, source: str = "spec") -> Spec:
    """DEFAULTS, then each override in turn (suite defaults, matrix cell, --set ...), validated.

    An old `lora.targets` preset name becomes its new one (one warning per name and process), so
    both names give the same spec and hash."""
    spec = copy.deepcopy(DEFAULTS)
    for override in overrides:
        spec = merge(spec, override, source=source)
    spec["lora"]["targets"] = _renamed_preset(spec["lora"]["targets"], source)
    if spec.get("env") is None and spec["framework"] in FRAMEWORK_ENV:
        spec["env"] = FRAMEWORK_ENV[spec["framework"]]  # a framework outside the main environment: its own set
    _check_choice(spec["alignment"], ALIGNMENTS, "alignment", source)
    return Spec.from_dict(validate_spec(apply_profile(spec, merge), source))


_warned_presets: set[str] = set()


def _renamed_preset(targets, source: str):
    if not (isinstance(targets, str) and targets in RENAMED_TARGET_PRESETS):
        return targets
    new = RENAMED_TARGET_PRESETS[targets]
    if targets not in _warned_presets:
        _warned_presets.add(targets)
        print(f"lorabench: warning: {source}: lora.targets {targets!r} is now called {new!r} "
              "(the old name still works)", file=sys.stderr)
    return new


def spec_hash(spec: dict | Spec) -> str:
    """sha256 of the canonical JSON form; keys at their HASH_NEUTRAL value are left out."""
    spec = copy.deepcopy(_json_form(spec))
    for path, neutral in HASH_NEUTRAL.items():
        *sections, key = path
        holder = spec.get(sections[0], {}) if sections else spec
        if holder.get(key, neutral) == neutral:
            holder.pop(key, None)
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def load_spec_file(path: str | Path) -> Spec:
    """A single run spec (YAML with any subset of DEFAULTS' keys)."""
    return make_spec(load_yaml(path), source=str(path))


# Hugging Face TrainingArguments / PEFT / ms-swift argument names accepted by `--set`, and the
# lorabench keys they set. Only names whose meaning is the same here: `seed` sets the data order
# too, as Hugging Face's seed does when data_seed is not given (give data_seed after it to differ).
SET_ALIASES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("optim.lr",),
    "weight_decay": ("optim.weight_decay",),
    "adam_beta1": ("optim.betas[0]",),
    "adam_beta2": ("optim.betas[1]",),
    "adam_epsilon": ("optim.eps",),
    "gradient_accumulation_steps": ("train.grad_accum",),
    "per_device_train_batch_size": ("train.batch_size",),
    "max_steps": ("train.steps",),
    "lr_scheduler_type": ("schedule.type",),
    "warmup_steps": ("schedule.warmup_steps",),
    "lora_rank": ("lora.r",),
    "lora_alpha": ("lora.alpha",),
    "lora_dropout": ("lora.dropout",),
    "target_modules": ("lora.targets",),
    "seed": ("train.seed", "train.data_seed"),
    "data_seed": ("train.data_seed",),
    "max_length": ("train.max_length",),
    "gradient_checkpointing": ("train.grad_checkpointing",),
}

# Familiar names that look like an alias but mean something else here: the line says what to use.
NOT_ALIASES = {
    "freeze_vit": "ms-swift's freeze_vit=false puts LoRA on the vision tower: use "
                  "lora.targets=lm+vision-linear (train.freeze_vision=false trains the tower's full weights)",
    "bf16": "use train.precision=bf16",
    "fp16": "use train.precision=fp16",
    "warmup_ratio": "use schedule.warmup_steps (a number of steps)",
}

_INDEXED_KEY = re.compile(r"^(?P<key>[^\[\]]+)\[(?P<index>\d+)\]$")


def parse_set(assignments: list[str], source: str = "--set") -> dict:
    """['lora.r=16', 'learning_rate=1e-4', 'optim.betas[1]=0.95'] -> nested override dict.

    Values are parsed as YAML scalars. A key may be a Hugging Face / ms-swift name from
    SET_ALIASES, and may end in `[i]` to set one element of a list (as adam_beta1/2 do).
    """
    out: dict = {}
    for item in assignments or []:
        if "=" not in item:
            raise UserError(f"{source}: expected KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        key, value = key.strip(), yaml.safe_load(raw)
        if key in NOT_ALIASES:
            raise UserError(f"{source}: {key!r} has no lorabench equivalent with the same meaning: "
                            f"{NOT_ALIASES[key]}")
        if key == "target_modules":
            value = _target_modules(value, source)
        for dotted in SET_ALIASES.get(key, (key,)):
            out = deep_update(out, nested(dotted, value))
    return out


def _target_modules(value, source: str):
    """ms-swift's `target_modules` value as lora.targets: a list of names ("q_proj,v_proj" too)."""
    if value == "all-linear":
        raise UserError(f"{source}: target_modules=all-linear means the language model's linears in "
                        "ms-swift and every linear in PEFT: say lora.targets=lm-linear or "
                        "lora.targets=every-linear")
    if isinstance(value, str) and "," in value:
        return [name.strip() for name in value.split(",") if name.strip()]
    if isinstance(value, str) and value not in TARGET_PRESETS and value not in RENAMED_TARGET_PRESETS:
        return [value]  # one module name
    return value


def nested(dotted: str, value) -> dict:
    """'train.steps', 5 -> {'train': {'steps': 5}}; 'optim.betas[1]', 0.95 -> {'optim': {'betas': {1: 0.95}}}"""
    parts = dotted.split(".")
    indexed = _INDEXED_KEY.match(parts[-1])
    if indexed:
        parts[-1] = indexed["key"]
        value = {int(indexed["index"]): value}
    for part in reversed(parts):
        value = {part: value}
    return value


def deep_update(a: dict, b: dict) -> dict:
    """A copy of `a` with `b` merged in, section by section (no validation: see `merge`)."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        elif _is_element_override(v) and isinstance(out.get(k), list):
            out[k] = [v.get(i, item) for i, item in enumerate(out[k])]  # betas=[..] then adam_beta2=..
        else:
            out[k] = v
    return out

