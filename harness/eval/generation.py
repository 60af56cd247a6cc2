"""Greedy generation shared by every evaluation: one code path whatever framework trained the adapter."""

from __future__ import annotations

import inspect
from typing import Sequence

from harness.chat import TEMPLATE_DEFAULT, build_prompt, prompt_arch, resolve_system


def load_model(model_dir, adapter_dir=None, dtype="float32", device="cpu"):
    """(model, processor) from a local checkpoint, with a PEFT-format adapter merged in if given."""
    import torch
    from transformers import AutoProcessor, AutoModelForImageTextToText

    processor = AutoProcessor.from_pretrained(str(model_dir))
    processor.tokenizer.padding_side = "left"  # generation appends on the right
    model = AutoModelForImageTextToText.from_pretrained(
        str(model_dir), dtype=getattr(torch, dtype)).to(device)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.eval()
    return model, processor


def generate_answers(model, processor, images: Sequence, prompts: Sequence[str], *, system=TEMPLATE_DEFAULT,
                     answer_prefix: str = "template", max_new_tokens: int = 320, batch_size: int = 16,
                     progress=None) -> list[str]:
    """Greedy answers for (image, prompt) pairs, in order. `prompts` are user texts (`<image>` optional);
    `system` a system prompt, None for none, or TEMPLATE_DEFAULT for the model family's default;
    `answer_prefix` the run's `train.answer_prefix`."""
    import torch

    from harness import archs

    arch = prompt_arch(archs.for_model(model), answer_prefix)
    system = resolve_system(system, arch)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel's is **kwargs
    takes_mm_token_types = "mm_token_type_ids" in inspect.signature(base.forward).parameters

    tok = processor.tokenizer
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    device = next(model.parameters()).device
    # Batches of similar prompt length waste less padding; restore the order afterwards.
    order = sorted(range(len(images)), key=lambda i: (images[i].size[1], len(prompts[i])))
    by_index: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        texts = [build_prompt(prompts[i], system=system, arch=arch) for i in idx]
        enc = processor(text=texts, images=[images[i] for i in idx], padding=True, return_tensors="pt",
                        return_mm_token_type_ids=True).to(device)
        if not takes_mm_token_types:  # Qwen-VL's position ids need them; generate() refuses them elsewhere
            enc.pop("mm_token_type_ids", None)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 eos_token_id=end_id, pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        for i, row in zip(idx, new.tolist()):
            if end_id in row:
                row = row[:row.index(end_id)]
            by_index[i] = tok.decode(row, skip_special_tokens=True)
        if progress:
            progress(len(idx))
    return [by_index[i] for i in range(len(images))]
