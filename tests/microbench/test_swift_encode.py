"""ms-swift's template encoding of the same rows (its own Qwen2-VL template subclass)."""

import pytest


@pytest.fixture(scope="module")
def template(model_dir):
    from adapters.swift_model import MODEL_TYPE, register

    register()
    from swift.model import get_model_processor
    from swift.template import get_template

    model, processor = get_model_processor(str(model_dir), model_type=MODEL_TYPE, download_model=False)
    tpl = get_template(processor)
    tpl.model = model  # the collator computes mrope positions with the model's get_rope_index
    tpl.set_mode("train")
    return tpl


def test_encode_batch_swift(benchmark, template, rows):
    def encode():
        return template.data_collator([template.encode({"messages": r["messages"], "images": r["images"]})
                                       for r in rows[:8]])

    batch = benchmark(encode)
    assert batch["input_ids"].shape[0] == 8
