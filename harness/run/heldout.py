"""Held-out loss: the trained model's cross-entropy on the test split's answers, framework-neutral.

Computed in the eval worker on the model it evaluates (base + the saved adapter, merged), with the
prompt the run trained with (system prompt, answer prefix) built by harness.chat, so every framework's
adapter is scored by the same code. Only the answer and its end marker are scored (what ms-swift
supervises, and what the default label mask trains), averaged per token over the whole split: one
number that a long answer does not outweigh per sample, comparable between arms of an ablation.
"""

from __future__ import annotations

from typing import Sequence


def heldout_loss(model, processor, samples: Sequence, images: Sequence, *, system, answer_prefix: str,
                 device: str = "cpu") -> dict:
    """{"loss": mean cross-entropy per answer token, "tokens": answer tokens scored, "n": samples}.

    One sample per forward pass: no padding, so no padding convention of any framework enters."""
    import inspect

    import torch

    from harness import archs
    from harness.chat import build_answer, build_prompt, prompt_arch, resolve_system

    arch = prompt_arch(archs.for_model(model), answer_prefix)
    system = resolve_system(system, arch)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    takes_mm_token_types = "mm_token_type_ids" in inspect.signature(base.forward).parameters
    tok = processor.tokenizer
    total, tokens = 0.0, 0
    for sample, image in zip(samples, images):
        answer = build_answer(sample.target)
        n_answer = len(tok(answer, add_special_tokens=False).input_ids)
        text = build_prompt(sample.prompt, system=system, arch=arch) + answer
        enc = processor(text=[text], images=[image], return_tensors="pt", return_mm_token_type_ids=True).to(device)
        if not takes_mm_token_types:
            enc.pop("mm_token_type_ids", None)
        with torch.inference_mode():
            logits = model(**enc).logits[0, -n_answer - 1:-1].float()
        targets = enc["input_ids"][0, -n_answer:]
        total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        tokens += n_answer
    return {"loss": total / tokens if tokens else None, "tokens": tokens, "n": len(samples)}
