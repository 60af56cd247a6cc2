"""Held-out loss (harness.run.heldout): per answer token, the same number a trainer's loss gives."""

import math

from harness.run.heldout import heldout_loss


def test_heldout_loss_is_the_training_loss_on_the_answer(tiny_model_dir, mini_dataset):
    import torch
    from PIL import Image

    from adapters.chat_data import ChatCollator, read_jsonl
    from harness.data.samples import load_samples
    from harness.eval.generation import load_model

    model, processor = load_model(tiny_model_dir)
    path = mini_dataset / "test.extract.jsonl"
    samples = load_samples(path, task="extract")[:2]
    rows = [{**row, "images": [str(s.image)]} for row, s in zip(read_jsonl(path), samples)]  # paths resolved
    images = [Image.open(s.image).convert("RGB") for s in samples]
    system = "You are a helpful assistant."
    got = heldout_loss(model, processor, samples, images, system=system, answer_prefix="template")
    assert got["n"] == 2 and got["tokens"] > 0 and math.isfinite(got["loss"]) and got["loss"] > 0

    # what a trainer computes with the answer-only label mask: the mean over the answer tokens of each sample
    collate = ChatCollator(processor, system, "answer", 4096)
    total = 0.0
    for row in rows:
        batch = collate([row])
        with torch.inference_mode():
            loss = float(model(**batch).loss)
        total += loss * int((batch["labels"][:, 1:] != -100).sum())
    assert abs(got["loss"] - total / got["tokens"]) < 1e-4
