"""Encoding a batch the PEFT way, one LoRA training step, and greedy generation."""

import pytest
import torch

from adapters.chat_data import ChatCollator
from adapters.lora_setup import lora_config
from harness.lora_targets import resolve_targets
from harness.config.spec import make_spec


@pytest.fixture(scope="module")
def setup(model_dir):
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model_dir))
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir))
    spec = make_spec()
    model = get_peft_model(model, lora_config(spec, resolve_targets(model, "lm")))
    return model, processor


def test_encode_batch_peft(benchmark, setup, rows):
    _, processor = setup
    collate = ChatCollator(processor, "You are a helpful assistant.", "answer", 1024)
    batch = benchmark(collate, rows[:8])
    assert batch["input_ids"].shape[0] == 8


def test_train_step_peft_batch8(benchmark, setup, rows):
    model, processor = setup
    batch = ChatCollator(processor, "You are a helpful assistant.", "answer", 1024)(rows[:8])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        return float(loss)

    assert benchmark(step) > 0


def test_generate_batch8(benchmark, setup, rows):
    from PIL import Image

    from harness.eval.generation import generate_answers

    model, processor = setup
    images = [Image.open(r["images"][0]).convert("RGB") for r in rows[:8]]
    prompts = [r["messages"][0]["content"] for r in rows[:8]]
    out = benchmark(generate_answers, model, processor, images, prompts, max_new_tokens=32, batch_size=8)
    assert len(out) == 8
