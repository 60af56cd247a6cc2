"""A stand-in framework for testing the harness: a few steps of a tiny torch module, in seconds.

It follows the adapter protocol exactly (per-step records through the hooks, read-back settings,
a PEFT-format adapter on disk) but never imports transformers or peft, so the runner's paths —
records, failures, timeouts, resume, reports — are tested without a real framework
(`make test-fast`). What it trains is the `lora_A` matrix of one LoRA module on the language
model's first query projection, against a fixed random target; `lora_B` is saved as zeros, so the
saved adapter loads onto the real base model and leaves its outputs unchanged.

It reads the model's config.json like a framework would, so a broken checkpoint fails here too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from adapters import chat_data, lora_setup, readback
from adapters.base import Hooks, TrainData, TrainOutcome
from harness.errors import UserError
from harness.run_spec import Spec

TARGET = "model.language_model.layers.0.self_attn.q_proj"  # a module every Qwen2-VL-style model has


class DummyAdapter:
    name = "dummy"

    def train(self, spec: Spec, data: TrainData, out_dir: Path, hooks: Hooks) -> TrainOutcome:
        import torch

        t0 = time.perf_counter()
        t, o = spec.train, spec.optim
        if spec.distributed.world_size > 1 or spec.distributed.zero_stage is not None:
            raise UserError("the dummy adapter runs one process without DeepSpeed")
        config = json.loads((data.model_dir / "config.json").read_text())
        text = config.get("text_config") or config
        hidden = int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        q_out = heads * int(text.get("head_dim") or hidden // heads)
        rows = chat_data.read_jsonl(data.train_jsonl)
        torch.manual_seed(t.seed)
        lora_a = torch.nn.Linear(hidden, spec.lora.r, bias=False)
        target = torch.randn(spec.lora.r)
        optimizer = torch.optim.AdamW(lora_a.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                      weight_decay=o.weight_decay)
        effective = {"trainable_params": lora_a.weight.numel(), "total_params": lora_a.weight.numel(),
                     **readback.optimizer_settings(optimizer)}
        from safetensors.torch import save_file

        initial = out_dir / "initial_adapter.safetensors"
        initial_tensors = _tensors(lora_a, q_out, spec.lora.r)
        save_file(initial_tensors, str(initial))
        effective["lora.init_sha"] = lora_setup.tensors_checksum(initial_tensors)

        hooks.on_train_begin()
        steps, first_step_at = [], time.perf_counter()
        for step in range(1, t.steps + 1):
            t_step = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            batch = [rows[(step * t.batch_size + i) % len(rows)] for i in range(t.batch_size)]
            # one feature vector per sample from its target text: deterministic, cheap, different lengths
            x = torch.stack([_features(r["messages"][-1]["content"], hidden) for r in batch])
            loss = ((lora_a(x) - target) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(lora_a.parameters(), 1.0)
            optimizer.step()
            tokens = sum(len(r["messages"][-1]["content"]) for r in batch)
            record = {"step": step, "loss": float(loss), "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens,
                      "samples": len(batch), "seconds": time.perf_counter() - t_step}
            steps.append(record)
            hooks.on_step(record)
        t_end = time.perf_counter()
        _save_adapter(out_dir / "adapter", _tensors(lora_a, q_out, spec.lora.r), spec)
        effective.update(system_prompt=t.system_prompt, seed=t.seed, precision="fp32",
                         batch_size=t.batch_size, grad_accum=1, global_batch=t.batch_size)
        return TrainOutcome(adapter_dir=out_dir / "adapter", initial_adapter=initial, steps=steps,
                            effective=effective, setup_s=first_step_at - t0, train_s=t_end - first_step_at)


def _features(text: str, size: int):
    import torch

    codes = torch.tensor([ord(c) % size for c in text] or [0])
    return torch.bincount(codes, minlength=size).float() / max(1, len(text))


def _tensors(lora_a, q_out: int, r: int) -> dict:
    """The adapter's tensors under PEFT's key names (lora_B zeros: the adapter changes nothing)."""
    import torch

    prefix = f"base_model.model.{TARGET}"
    return {f"{prefix}.lora_A.weight": lora_a.weight.detach().clone().contiguous(),
            f"{prefix}.lora_B.weight": torch.zeros(q_out, r)}


def _save_adapter(adapter_dir: Path, tensors: dict, spec: Spec) -> None:
    from safetensors.torch import save_file

    adapter_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(adapter_dir / "adapter_model.safetensors"))
    (adapter_dir / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": None, "r": spec.lora.r, "lora_alpha": spec.lora.alpha,
        "lora_dropout": 0.0, "target_modules": TARGET.replace(".", r"\."), "bias": "none",
        "base_model_name_or_path": None, "inference_mode": True, "fan_in_fan_out": False, "modules_to_save": None,
    }, indent=1))
