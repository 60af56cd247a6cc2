"""The `lora.targets` presets and how each resolves to module names on a model.

The spec validates against the preset names and the adapters resolve them on the live model, so both
read this one module. Each preset says which Linear layers it covers, so none reads like PEFT's
`all-linear` (which includes the vision tower) or ms-swift's (which, with freeze_vit, does not).
"""

from __future__ import annotations

import re

from harness import archs
from harness.errors import UserError

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
        raise UserError(f"lora.targets {wanted} matches no Linear module of the model")
    return chosen


def targets_regex(names: list[str]) -> str:
    """A full-match regex for exactly these module names (PEFT `target_modules` str, swift `target_regex`)."""
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"
