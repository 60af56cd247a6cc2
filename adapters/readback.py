"""Read back what a framework really built, from the live objects: the optimizer's groups, the LoRA
modules, trainable parameters and precision, and the probe the adapter round trip replays.
The step records and the loop's settings live in adapters.trainer_steps."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from adapters.chat_data import ChatCollator
from adapters.lora_setup import normalize_key, save_lora_state
from harness import archs
from harness.chat import answer_prefix_setting


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


def settings_at_train_begin(kw: dict, initial: Path) -> dict:
    """What a Trainer's train-begin callback (`kw`: model, optimizer, lr_scheduler) shows, read back:
    LoRA and precision, the initial LoRA tensors (saved to `initial`, with their checksum), the
    optimizer's groups and the scheduler."""
    return {**model_settings(kw["model"]), "lora.init_sha": save_lora_state(kw["model"], initial),
            **optimizer_settings(kw["optimizer"]), "scheduler": type(kw["lr_scheduler"]).__name__}


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
