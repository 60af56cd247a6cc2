"""The LoRA adapter as both Trainer-based adapters build and snapshot it: the PEFT config from the
spec, the modules trained in full, and the LoRA tensors under framework-neutral names (the initial
snapshot that parity compares, with its checksum)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from harness import archs
from harness.errors import UserError
from harness.lora_targets import targets_regex
from harness.run_spec import Spec


PEFT_INIT = {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}


def full_modules(model, spec: Spec) -> list[str]:
    """Modules trained in full (PEFT's and swift's `modules_to_save`): the vision tower when
    `train.freeze_vision` is false, and `lora.modules_to_save` (exact names or dotted suffixes)."""
    names = [n for n, _ in model.named_modules() if n]
    chosen = [] if spec.train.freeze_vision else vision_modules_to_save(model)
    for wanted in spec.lora.modules_to_save:
        hits = [n for n in names if n == wanted or n.endswith("." + wanted)]
        if not hits:
            raise UserError(f"lora.modules_to_save {wanted!r} matches no module of the model")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def vision_modules_to_save(model) -> list[str]:
    """The vision tower without its projector, as whole modules: trained in full when
    `train.freeze_vision` is false (PEFT's and swift's `modules_to_save`, so both do the same)."""
    return archs.for_model(model).vision_full_modules(n for n, _ in model.named_modules())


def lora_config(spec: Spec, target_names: list[str], modules_to_save: list[str] | None = None):
    from peft import LoraConfig

    lora = spec.lora
    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=targets_regex(target_names), init_lora_weights=PEFT_INIT[lora.init],
        use_rslora=lora.rslora, bias="none", task_type="CAUSAL_LM", modules_to_save=modules_to_save or None,
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


def meta_targets(spec: Spec, model_dir: Path) -> tuple[list[str], list[str]]:
    """LoRA targets and fully trained modules for a framework that builds the model itself, resolved on
    a meta-device copy (no weights loaded, no RNG consumed, so its own seeded init is untouched)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from harness.lora_targets import resolve_targets

    config = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return resolve_targets(model, spec.lora.targets), full_modules(model, spec)
