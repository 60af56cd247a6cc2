"""The chat format every framework is aligned to (Qwen2-VL's), built as plain strings.

One function builds the prompt for training, evaluation and generation, so a prediction never
depends on which framework trained the adapter. It matches Qwen2-VL's chat template and ms-swift's
`qwen2_vl` template: a default system prompt, `<image>` in the user turn replaced by
`<|vision_start|><|image_pad|><|vision_end|>` (the processor expands the pad to one token per
merged patch), and the answer closed by `<|im_end|>`.
"""

from __future__ import annotations

DEFAULT_SYSTEM = "You are a helpful assistant."
IMAGE_PLACEHOLDER = "<image>"
VISION_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
END = "<|im_end|>"

SPECIAL_TOKENS = (  # ids 0..6 in the embedded tokenizer, in this order
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
)

# Qwen2-VL's Jinja chat template (same rendering as build_prompt), saved with the embedded processor
# so `processor.apply_chat_template` works for users too.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_prompt(user_text: str, system: str | None = DEFAULT_SYSTEM) -> str:
    """Everything up to and including `<|im_start|>assistant\\n`; `<image>` marks the picture.

    `user_text` without `<image>` gets the picture in front (our data puts it first).
    `system=None` or "" drops the system turn (swift's `--system ''` does the same).
    """
    if IMAGE_PLACEHOLDER not in user_text:
        user_text = IMAGE_PLACEHOLDER + user_text
    user_text = user_text.replace(IMAGE_PLACEHOLDER, VISION_BLOCK)
    head = f"<|im_start|>system\n{system}{END}\n" if system else ""
    return f"{head}<|im_start|>user\n{user_text}{END}\n<|im_start|>assistant\n"


def build_answer(target: str) -> str:
    """The supervised part: the answer and its end marker (ms-swift also supervises the '\\n')."""
    return f"{target}{END}\n"
