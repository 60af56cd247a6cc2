"""Helpers shared by the adapters: plain functions, no base class.

- which Linear modules get LoRA (`resolve_targets`), as one exact regex both PEFT and swift accept;
- the LoRA config (`lora_config`) and the initial-adapter snapshot (`save_lora_state`);
- the chat-format collator a PEFT user writes (`ChatCollator`);
- read-back of effective settings from the live model and optimizer.
The step records and the loop's settings live in adapters.trainer_steps.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from harness import archs
from harness.chat import answer_prefix_setting, build_answer, build_prompt, prompt_arch


# The `lora.targets` presets. Each says which Linear layers it covers, so none reads like PEFT's
# `all-linear` (which includes the vision tower) or ms-swift's (which, with freeze_vit, does not).
TARGET_PRESETS = ("lm-linear", "lm-attention", "lm+vision-linear", "every-linear")
# lm-attention: the language model's attention projections only (MiniCPM-V's official LoRA regex)
ATTENTION_PROJECTIONS = re.compile(r"\.self_attn\.(q_proj|k_proj|v_proj|o_proj)$")
# Names the presets had before; they keep working (the spec loader warns once per name).
RENAMED_TARGET_PRESETS = {"lm": "lm-linear", "lm+vision": "lm+vision-linear", "all-linear": "every-linear"}


def canonical_targets(targets):
    """A preset's current name for an old one; anything else unchanged."""
    if isinstance(targets, str):
        return RENAMED_TARGET_PRESETS.get(targets, targets)
    return targets


def resolve_targets(model, targets) -> list[str]:
    """Full names of the Linear modules that get LoRA, in model order.

    lm-linear: every Linear of the language model (ms-swift's all-linear with its default
    freeze_vit; not lm_head: the output layer);
    lm-attention: the language model's attention projections q/k/v/o (MiniCPM-V's official recipe);
    lm+vision-linear: also the vision tower's (not the projector's);
    every-linear: PEFT's all-linear, every Linear but the output layer (vision tower and projector too);
    a list: module names, or suffixes matched on dotted boundaries (e.g. "q_proj").
    The old preset names (lm, lm+vision, all-linear) mean the same as their new ones.
    """
    import torch

    targets = canonical_targets(targets)
    arch = archs.for_model(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    if targets == "lm-linear":
        return [n for n in linears if n.startswith(arch.lm_prefix)]
    if targets == "lm-attention":
        return [n for n in linears if n.startswith(arch.lm_prefix) and ATTENTION_PROJECTIONS.search(n)]
    if targets == "lm+vision-linear":
        return [n for n in linears if n.startswith(arch.lm_prefix) or
                (arch.is_vision(n) and not arch.is_projector(n))]
    if targets == "every-linear":
        return linears
    wanted = list(targets)
    chosen = [n for n in linears if any(n == t or n.endswith("." + t) for t in wanted)]
    if not chosen:
        from harness.errors import UserError

        raise UserError(f"lora.targets {wanted} matches no Linear module of the model")
    return chosen


def targets_regex(names: list[str]) -> str:
    """A full-match regex for exactly these module names (PEFT `target_modules` str, swift `target_regex`)."""
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


PEFT_INIT = {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}


def full_modules(model, spec: dict) -> list[str]:
    """Modules trained in full (PEFT's and swift's `modules_to_save`): the vision tower when
    `train.freeze_vision` is false, and `lora.modules_to_save` (exact names or dotted suffixes)."""
    names = [n for n, _ in model.named_modules() if n]
    chosen = [] if spec["train"]["freeze_vision"] else vision_modules_to_save(model)
    for wanted in spec["lora"]["modules_to_save"]:
        hits = [n for n in names if n == wanted or n.endswith("." + wanted)]
        if not hits:
            from harness.errors import UserError

            raise UserError(f"lora.modules_to_save {wanted!r} matches no module of the model")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def vision_modules_to_save(model) -> list[str]:
    """The vision tower without its projector, as whole modules: trained in full when
    `train.freeze_vision` is false (PEFT's and swift's `modules_to_save`, so both do the same)."""
    return archs.for_model(model).vision_full_modules(n for n, _ in model.named_modules())


def lora_config(spec: dict, target_names: list[str], modules_to_save: list[str] | None = None):
    from peft import LoraConfig

    lora = spec["lora"]
    return LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=targets_regex(target_names), init_lora_weights=PEFT_INIT[lora["init"]],
        use_rslora=lora["rslora"], bias="none", task_type="CAUSAL_LM", modules_to_save=modules_to_save or None,
    )


def lora_state(model) -> dict:
    """LoRA tensors keyed by module path, without framework-specific prefixes.

    Under ZeRO-3 each rank holds a shard (an empty tensor here): gather them first.
    """
    from peft import get_peft_model_state_dict

    def snapshot():
        state = get_peft_model_state_dict(model)
        return {normalize_key(k): v.detach().clone().float().contiguous() for k, v in state.items()}

    params = [p for n, p in model.named_parameters() if "lora_" in n]
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return snapshot()
    return snapshot()


def normalize_key(key: str) -> str:
    # PEFT: base_model.model.<path>.lora_A.weight; keep <path>.lora_A.weight. A module trained in
    # full lives at <path>.modules_to_save.default.<name> and is saved as <path>.<name>.
    key = key.replace("base_model.model.", "", 1) if key.startswith("base_model.model.") else key
    return key.replace(".modules_to_save.default.", ".").replace(".default.", ".")


PROBE_ROWS = 2  # training rows the round trip replays: enough to cover padding, cheap to store


def save_probe(model, processor, rows: list[dict], system: str | None, path: Path, arch=None) -> None:
    """What the adapter round trip compares a reloaded adapter with, taken from the live model.

    The trained model's logits on the first training rows (fp32, eval mode), the rows themselves,
    and the name and full shape of every tensor that was trainable. Called on every rank: under
    ZeRO-3 the forward gathers partitioned weights collectively; rank 0 writes the file.
    """
    import os

    import torch

    arch = arch or archs.for_model(model)  # the prompt format the run trained with
    collate = ChatCollator(processor, system, "answer", max_length=1 << 30, arch=arch)
    batch = collate(rows[:PROBE_ROWS])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    device = next(model.parameters()).device
    trainable = {normalize_key(n): list(getattr(p, "ds_shape", p.shape))
                 for n, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu()
    model.train(was_training)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({"inputs": inputs, "logits": logits, "trainable": trainable, "rows": rows[:PROBE_ROWS],
                    "system": system, "answer_prefix": answer_prefix_setting(arch)}, str(path))


def save_lora_state(model, path: Path) -> str:
    """Save the LoRA tensors; returns their checksum (sha256 over sorted names and bytes)."""
    from safetensors.torch import save_file

    state = lora_state(model)
    save_file(state, str(path))
    return tensors_checksum(state)


def tensors_checksum(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].cpu().numpy().tobytes())
    return h.hexdigest()


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def chat_arch(model, spec: dict) -> archs.Arch:
    """The model family's chat format as the spec trains it (`train.answer_prefix`)."""
    return prompt_arch(archs.for_model(model), spec["train"]["answer_prefix"])


def system_for(spec: dict, arch: archs.Arch = archs.DEFAULT) -> str | None:
    """The system prompt of `train.system_prompt`: "default" is the family's template default."""
    return arch.default_system if spec["train"]["system_prompt"] == "default" else None


class ChatCollator:
    """Rows of the common JSONL format -> a training batch, as a PEFT user writes it.

    `label_mask="answer"`: loss on the answer + <|im_end|> + newline (what ms-swift supervises);
    `"all"`: loss on every token but padding and image pads (the Hugging Face cookbook way).
    Right padding, like swift's training template.
    """

    def __init__(self, processor, system: str | None, label_mask: str, max_length: int,
                 arch: archs.Arch = archs.DEFAULT):
        self.processor = processor
        self.system = system
        self.label_mask = label_mask
        self.max_length = max_length
        self.arch = arch
        tok = processor.tokenizer
        self.pad_id = tok.pad_token_id
        self.image_pad_id = tok.convert_tokens_to_ids(arch.image_token)

    def __call__(self, rows: list[dict]):
        from PIL import Image

        tok = self.processor.tokenizer
        tok.padding_side = "right"
        texts, answer_lens, images = [], [], []
        for row in rows:
            user = row["messages"][0]["content"]
            answer = build_answer(row["messages"][1]["content"])
            texts.append(build_prompt(user, system=self.system, arch=self.arch) + answer)
            answer_lens.append(len(tok(answer, add_special_tokens=False).input_ids))
            images.append(Image.open(row["images"][0]).convert("RGB"))
        enc = self.processor(text=texts, images=images, padding=True, return_tensors="pt",
                             return_mm_token_type_ids=True)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        labels = ids.clone()
        labels[mask == 0] = -100
        if self.label_mask == "answer":
            for i, n in enumerate(answer_lens):
                length = int(mask[i].sum())
                labels[i, : length - n] = -100
        else:
            labels[ids == self.image_pad_id] = -100
        enc["labels"] = labels
        if ids.shape[1] > self.max_length:
            # Right truncation (swift's truncation_strategy='right'): the answer's tail goes first;
            # cutting into the image tokens would break the model, so that is an error instead.
            if bool((ids[:, self.max_length:] == self.image_pad_id).any()):
                raise ValueError(f"train.max_length {self.max_length} would cut image tokens")
            for key in ("input_ids", "attention_mask", "labels", "mm_token_type_ids"):
                if key in enc:
                    enc[key] = enc[key][:, : self.max_length]
        return dict(enc)


def optimizer_settings(optimizer) -> dict:
    while hasattr(optimizer, "optimizer"):  # accelerate / DeepSpeed wrappers
        optimizer = optimizer.optimizer
    groups = []
    for g in optimizer.param_groups:
        groups.append({"n_params": sum(p.numel() for p in g["params"]), "lr": g.get("initial_lr", g["lr"]),
                       "betas": list(g.get("betas", [])), "eps": g.get("eps"), "weight_decay": g.get("weight_decay")})
    groups = [g for g in groups if g["n_params"]]
    flags = {k: optimizer.defaults.get(k) for k in ("foreach", "fused", "amsgrad") if k in optimizer.defaults}
    out = {"optimizer": type(optimizer).__name__, "optimizer_flags": json.dumps(flags, sort_keys=True)}
    for i, g in enumerate(groups):
        for k, v in g.items():
            out[f"optim.group{i}.{k}"] = v
    out["optim.groups_with_decay"] = sum(1 for g in groups if g["weight_decay"])
    return out


def model_settings(model) -> dict:
    """LoRA and precision as built: target modules, r, alpha, scaling, dropout, trainable params."""
    import torch

    targets, r, alpha, scaling, dropout = [], set(), set(), set(), set()
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            targets.append(normalize_key(name))
            r.add(module.r["default"])
            alpha.add(module.lora_alpha["default"])
            scaling.add(round(float(module.scaling["default"]), 8))
            drop = module.lora_dropout["default"]
            dropout.add(float(drop.p) if isinstance(drop, torch.nn.Dropout) else 0.0)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    arch = archs.for_model(model)
    vision_trainable = sum(_numel(p) for n, p in trainable if arch.is_vision(n) and "lora_" not in n)
    one = lambda s: sorted(s)[0] if len(s) == 1 else sorted(s)  # noqa: E731
    return {
        "lora.n_targets": len(targets),
        "lora.targets_sha": hashlib.sha256("\n".join(sorted(targets)).encode()).hexdigest()[:16],
        "lora.targets_vision": sum(1 for t in targets if arch.is_vision(t)),
        "lora.r": one(r), "lora.alpha": one(alpha), "lora.scaling": one(scaling), "lora.dropout": one(dropout),
        "trainable_params": sum(_numel(p) for _, p in trainable),
        "total_params": sum(_numel(p) for _, p in model.named_parameters()),
        "trainable_non_lora_params": sum(_numel(p) for n, p in trainable if "lora_" not in n),
        "vision_full_weights_trainable": vision_trainable,
        "dtype": str(next(p for p in model.parameters()).dtype).replace("torch.", ""),
        "grad_checkpointing": bool(getattr(_base(model), "is_gradient_checkpointing", False)),
    }


def _numel(param) -> int:
    """Elements of a parameter; under ZeRO-3 the local tensor is an empty shard, `ds_numel` the whole."""
    return getattr(param, "ds_numel", None) or param.numel()


def _base(model):
    while hasattr(model, "base_model") and model.base_model is not model:
        model = model.base_model
    return getattr(model, "model", model)
