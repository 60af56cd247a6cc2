"""The chat format every framework is aligned to, built as plain strings.

One function builds the prompt for training, evaluation and generation, so a prediction never
depends on which framework trained the adapter. It matches the model family's chat template and
ms-swift's template for it (harness.archs): ChatML turns, the family's default system prompt,
`<image>` in the user turn replaced by the family's image block (the processor expands its pad
token to one token per vision token), the family's unsupervised answer prefix, and the answer
closed by `<|im_end|>`. Without an `arch` it is Qwen2-VL's, the embedded tiny model's family.
"""

from __future__ import annotations

import dataclasses

from harness.archs import DEFAULT, QWEN_IMAGE, QWEN_SYSTEM, Arch, for_model_type

DEFAULT_SYSTEM = QWEN_SYSTEM
IMAGE_PLACEHOLDER = "<image>"
VISION_BLOCK = QWEN_IMAGE
END = "<|im_end|>"

SPECIAL_TOKENS = (  # ids 0..6 in the embedded tokenizer, in this order
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
)

def chat_template(arch: Arch = DEFAULT) -> str:
    """The Jinja chat template that renders as build_prompt does, saved with an embedded processor so
    `processor.apply_chat_template` works for users too."""
    system = ("{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
              f"{arch.default_system}<|im_end|>\n{{% endif %}}") if arch.default_system else ""
    image = arch.image_block.replace("\n", "\\n")
    prefix = arch.answer_prefix.replace("\n", "\\n")
    return (
        "{% for message in messages %}" + system +
        "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
        f"{{{{ '{image}' }}}}{{% elif content['type'] == 'text' %}}{{{{ content['text'] }}}}"
        "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        f"{{% if add_generation_prompt %}}<|im_start|>assistant\n{{{{ '{prefix}' }}}}{{% endif %}}"
    )


CHAT_TEMPLATE = chat_template()


class _TemplateDefault:
    def __repr__(self):
        return "TEMPLATE_DEFAULT"


# "The system prompt the model family's template adds by default" (Qwen2-VL's "You are a helpful
# assistant.", none for MiniCPM-V), for callers that do not know the family yet.
TEMPLATE_DEFAULT = _TemplateDefault()


def prompt_arch(arch: Arch, answer_prefix: str = "template") -> Arch:
    """The family's chat format with `train.answer_prefix` applied: "template" keeps the family's
    unsupervised answer prefix (MiniCPM-V's empty thinking block), "none" drops it."""
    return arch if answer_prefix == "template" else dataclasses.replace(arch, answer_prefix="")


def answer_prefix_setting(arch: Arch) -> str:
    """The `train.answer_prefix` value a prompt format corresponds to (for effective settings)."""
    return "template" if arch.answer_prefix == for_model_type(arch.model_types[0]).answer_prefix else "none"


def resolve_system(system, arch: Arch = DEFAULT) -> str | None:
    """A system prompt, with TEMPLATE_DEFAULT replaced by the family's default (None: no system turn)."""
    return arch.default_system if system is TEMPLATE_DEFAULT else system


def build_prompt(user_text: str, system: str | None = DEFAULT_SYSTEM, arch: Arch = DEFAULT) -> str:
    """Everything up to the answer (`<|im_start|>assistant\\n` and the family's answer prefix);
    `<image>` marks the picture.

    `user_text` without `<image>` gets the picture in front (our data puts it first).
    `system=None` or "" drops the system turn (swift's `--system ''` does the same).
    """
    if IMAGE_PLACEHOLDER not in user_text:
        user_text = IMAGE_PLACEHOLDER + user_text
    user_text = user_text.replace(IMAGE_PLACEHOLDER, arch.image_block)
    head = f"<|im_start|>system\n{system}{END}\n" if system else ""
    return f"{head}<|im_start|>user\n{user_text}{END}\n<|im_start|>assistant\n{arch.answer_prefix}"


def build_answer(target: str) -> str:
    """The supervised part: the answer and its end marker (ms-swift also supervises the '\\n')."""
    return f"{target}{END}\n"
