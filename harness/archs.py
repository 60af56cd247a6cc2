"""One map of the model families lorabench trains: where each keeps its language model, vision tower
and projector, and how its chat prompt writes an image. Everything that depends on the architecture
reads it from here (LoRA target presets, the modules trained in full when the vision tower is not
frozen, the prompt contract in harness.chat, the forge's reading head), keyed by `config.model_type`.

The chat formats are the ones ms-swift's templates produce, so that a PEFT run, a swift run and the
evaluation see the same tokens:
- Qwen2-VL / Qwen2.5-VL (swift `qwen2_vl`, `qwen2_5_vl`): ChatML, default system prompt
  "You are a helpful assistant.", the image as `<|vision_start|><|image_pad|><|vision_end|>`;
- Qwen3-VL (swift `qwen3_vl`): the same blocks, no default system prompt;
- MiniCPM-V 4.6 / 4.7 (swift `minicpmv4_6`, `minicpmv4_7`): ChatML without a default system prompt,
  the image as `<|image_pad|>` and a newline (the processor expands it to
  `<image_id>0</image_id><image>...</image>`), and an answer that starts after an empty thinking
  block `<think>\\n\\n</think>\\n\\n` which is not supervised (swift's `non_thinking_prefix` with the
  `ignore_empty_think` loss scale).
Module paths are those of transformers 5 (`model.language_model`, `model.visual` or
`model.vision_tower`, ...). Only names, no imports: adapters and the planner read it cheaply.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

QWEN_SYSTEM = "You are a helpful assistant."
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


@dataclasses.dataclass(frozen=True)
class Arch:
    name: str
    model_types: tuple[str, ...]  # config.model_type values of this family
    lm_prefix: str  # the language model's modules start with this
    vision_prefix: str  # the vision tower's (and, for Qwen, the projector's) modules start with this
    projector_prefixes: tuple[str, ...]  # the projector(s) from vision features to the language model
    vision_full: str  # full-match regex: the modules trained in full when `train.freeze_vision` is false
    image_block: str  # what `<image>` becomes in the prompt text, before the processor expands it
    image_token: str  # the placeholder token the processor repeats once per vision token
    default_system: str | None  # the system prompt the template adds when a row has none
    answer_prefix: str = ""  # written before every answer and not supervised
    swift_template: str = ""  # ms-swift's model type and template for this family (the swift adapter passes it)
    # LLaMA-Factory's template (data/template.py) in its release set; "" where that set cannot load the family
    # (transformers 5.6 has no MiniCPM-V 4.6 / 4.7, its minicpm_v template is MiniCPM-V 2.6's remote code)
    llamafactory_template: str = ""
    reading_features: str = ""  # module whose output the forge's reading head reads (16 px grid)

    def is_vision(self, name: str) -> bool:
        """Whether a parameter or module name belongs to the vision side (tower or projector)."""
        plain = name.replace("base_model.model.", "", 1)
        return plain.startswith(self.vision_prefix) or plain.startswith(self.projector_prefixes)

    def is_projector(self, name: str) -> bool:
        return name.replace("base_model.model.", "", 1).startswith(self.projector_prefixes)

    def vision_full_modules(self, module_names) -> list[str]:
        return [n for n in module_names if re.fullmatch(self.vision_full, n)]


_QWEN = dict(lm_prefix="model.language_model.", vision_prefix="model.visual.", image_block=QWEN_IMAGE,
             image_token="<|image_pad|>", vision_full=r"model\.visual\.(patch_embed|pos_embed|blocks\.\d+)")
QWEN2_VL = Arch("qwen2_vl", ("qwen2_vl",), projector_prefixes=("model.visual.merger.",), default_system=QWEN_SYSTEM,
                swift_template="qwen2_vl", llamafactory_template="qwen2_vl", reading_features="model.visual.merger",
                **_QWEN)
QWEN2_5_VL = Arch("qwen2_5_vl", ("qwen2_5_vl",), projector_prefixes=("model.visual.merger.",),
                  default_system=QWEN_SYSTEM, swift_template="qwen2_5_vl", llamafactory_template="qwen2_vl", **_QWEN)
QWEN3_VL = Arch("qwen3_vl", ("qwen3_vl",), default_system=None, swift_template="qwen3_vl",
                llamafactory_template="qwen3_vl",
                projector_prefixes=("model.visual.merger.", "model.visual.deepstack_merger_list."), **_QWEN)
_MINICPMV = dict(
    lm_prefix="model.language_model.", vision_prefix="model.vision_tower.", projector_prefixes=("model.merger.",),
    # the vision encoder with its window-attention merger (vit_merger); the downsampling merger is the projector.
    # The reading head reads the downsampling merger's output: one token per 16 px cell of the tiny model
    vision_full=r"model\.vision_tower\.(embeddings|encoder\.layers\.\d+|vit_merger|post_layernorm)",
    image_block="<|image_pad|>\n", image_token="<|image_pad|>", default_system=None,
    answer_prefix="<think>\n\n</think>\n\n", reading_features="model.merger")
MINICPMV4_6 = Arch("minicpmv4_6", ("minicpmv4_6",), swift_template="minicpmv4_6", **_MINICPMV)
MINICPMV4_7 = Arch("minicpmv4_7", ("minicpmv4_7",), swift_template="minicpmv4_7", **_MINICPMV)

ARCHS = (QWEN2_VL, QWEN2_5_VL, QWEN3_VL, MINICPMV4_6, MINICPMV4_7)
DEFAULT = QWEN2_VL


def for_model_type(model_type: str) -> Arch:
    for arch in ARCHS:
        if model_type in arch.model_types:
            return arch
    from harness.errors import UserError

    known = ", ".join(t for a in ARCHS for t in a.model_types)
    raise UserError(f"model type {model_type!r} is not supported (supported: {known})")


def for_config(config) -> Arch:
    return for_model_type(config.model_type)


def for_model(model) -> Arch:
    """The family of a live model (a PEFT wrapper included)."""
    while hasattr(model, "base_model") and model.base_model is not model and not hasattr(model, "config"):
        model = model.base_model
    return for_config(model.config)


def for_dir(model_dir) -> Arch:
    """The family of a checkpoint directory, from its config.json."""
    path = Path(model_dir) / "config.json"
    try:
        model_type = json.loads(path.read_text())["model_type"]
    except (OSError, ValueError, KeyError) as exc:
        from harness.errors import UserError

        raise UserError(f"{path}: cannot read the model type ({exc})") from None
    return for_model_type(model_type)
