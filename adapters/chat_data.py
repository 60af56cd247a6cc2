"""Training rows into batches as a PEFT user writes it: the JSONL rows, the chat format the spec asks
for (system prompt, answer prefix) and the collator with its label mask."""

from __future__ import annotations

import json
from pathlib import Path

from harness import archs
from harness.chat import build_answer, build_prompt, prompt_arch
from harness.run_spec import Spec


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def chat_arch(model, spec: Spec) -> archs.Arch:
    """The model family's chat format as the spec trains it (`train.answer_prefix`)."""
    return prompt_arch(archs.for_model(model), spec.train.answer_prefix)


def system_for(spec: Spec, arch: archs.Arch = archs.DEFAULT) -> str | None:
    """The system prompt of `train.system_prompt`: "default" is the family's template default."""
    return arch.default_system if spec.train.system_prompt == "default" else None


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
