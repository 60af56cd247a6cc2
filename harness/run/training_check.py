"""Did training happen? The adapter moved away from its initial value, and gradients were alive.

Throughput figures have been published for runs whose gradients were all zero; a run can also
"succeed" with a learning rate of 0 or a frozen adapter. Every run's record therefore carries how far
each LoRA module moved from its initial tensors (the norm of the change, A and B together) and the
fraction of optimizer steps whose gradient norm was finite and non-zero; a run that did not train is
recorded as failed with the reason.
"""

from __future__ import annotations

import math
from pathlib import Path

from adapters.lora_setup import normalize_key  # the key form of the initial snapshots

MIN_LIVE_GRADIENT_FRACTION = 0.5  # below this, most steps updated nothing (a few skipped fp16 steps are normal)


class SavedAdapterMismatch(Exception):
    """The saved adapter does not hold the tensors that were trained."""


def _module_of(key: str) -> str:
    for marker in (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B", ".lora_magnitude_vector"):
        if marker in key:
            return key.split(marker)[0]
    return key.rsplit(".", 1)[0]


def adapter_change(initial_file: Path, adapter_dir: Path) -> dict:
    """Norm of (trained - initial) per LoRA module, over the tensors both files hold."""
    from safetensors.torch import load_file

    initial = {normalize_key(k): v for k, v in load_file(str(initial_file)).items()}
    final = {normalize_key(k): v for k, v in load_file(str(Path(adapter_dir) / "adapter_model.safetensors")).items()}
    squared: dict[str, float] = {}
    for key in sorted(set(initial) & set(final)):
        if "lora_" not in key:
            continue
        if final[key].shape != initial[key].shape:  # e.g. a ZeRO-3 shard saved instead of the gathered tensor
            raise SavedAdapterMismatch(f"the saved adapter's {key} has shape {tuple(final[key].shape)}, "
                                       f"the trained one {tuple(initial[key].shape)}")
        delta = (final[key].float() - initial[key].float()).norm().item()
        squared[_module_of(key)] = squared.get(_module_of(key), 0.0) + delta ** 2
    norms = {module: math.sqrt(value) for module, value in squared.items()}
    moved = [m for m, n in norms.items() if n > 0]
    return {"lora_modules": len(norms), "lora_modules_moved": len(moved),
            "max_change_norm": max(norms.values(), default=0.0), "min_change_norm": min(norms.values(), default=0.0),
            "change_norm_per_module": norms}


def gradient_health(steps: list[dict]) -> dict:
    """Fraction of steps whose logged gradient norm is finite and non-zero (steps without one are skipped)."""
    known = [s["grad_norm"] for s in steps if s.get("grad_norm") is not None]
    live = [g for g in known if math.isfinite(g) and g > 0]
    return {"steps_with_grad_norm": len(known),
            "live_gradient_fraction": len(live) / len(known) if known else None}


def check(initial_file: Path, adapter_dir: Path, steps: list[dict]) -> tuple[dict, str | None]:
    """(the record's `training_check` block, the reason the run did not train or None)."""
    try:
        block = {**adapter_change(initial_file, adapter_dir), **gradient_health(steps)}
    except SavedAdapterMismatch as exc:
        return gradient_health(steps), f"the saved adapter is not the trained model: {exc}"
    if block["lora_modules"] and not block["lora_modules_moved"]:
        return block, f"adapters did not change: all {block['lora_modules']} LoRA modules equal their initial value"
    fraction = block["live_gradient_fraction"]
    if fraction is not None and fraction < MIN_LIVE_GRADIENT_FRACTION:
        return block, (f"gradients were zero or not finite in {1 - fraction:.0%} of the steps "
                       f"({block['steps_with_grad_norm']} logged)")
    return block, None
