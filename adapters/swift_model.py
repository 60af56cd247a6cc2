"""Register the embedded tiny Qwen2-VL with ms-swift, through swift's public registration API.

Imported only inside a swift worker process (importing swift patches transformers globally).

Two things differ from swift's built-in `qwen2_vl` model type, and both are why this module exists:
- Token ids. `Qwen2VLTemplate` hard-codes `image_token_id = 151655` (Qwen's real vocabulary).
  Our tokenizer is character level, with `<|image_pad|>` at id 5; the template subclass reads the
  ids from the tokenizer instead. Padding the vocabulary to 151k would make the output layer
  dominate every step.
- Image resizing. Swift's template resizes with `qwen_vl_utils.fetch_image` to multiples of 28
  (patch 14 x merge 2). Our model's grid is 16 px (patch 8 x merge 2): the template resizes with
  the checkpoint's own image processor limits instead, so swift sees exactly the pixels the
  harness's evaluation sees.
The model arch stays swift's `qwen2_vl`, so `freeze_vit` / `freeze_aligner` know the vision tower
(`model.visual`) and projector (`model.visual.merger`).
"""

from __future__ import annotations

MODEL_TYPE = "lorabench_tiny_qwen2_vl"
TEMPLATE_TYPE = "lorabench_tiny_qwen2_vl"

_registered = False


def model_type_for(model_dir) -> str:
    """The swift model type to pass for `model_dir`: ours for the embedded tiny Qwen2-VL, else swift's
    own type for the architecture (harness.archs), named explicitly: from config.json alone swift
    cannot choose (Qwen2-VL's class is also `qwen2_gme`'s, Qwen3-VL's also `qwen3_vl_emb`'s, ...) and
    falls back to matching the directory's name against hub model ids."""
    from pathlib import Path

    from harness import archs

    arch = archs.for_dir(model_dir)
    if (Path(model_dir) / "lorabench.json").exists() and arch is archs.QWEN2_VL:
        return MODEL_TYPE
    return arch.swift_template


def template_env(model_dir) -> dict[str, str]:
    """Environment variables swift's template must see for `model_dir` to encode as the checkpoint says.

    swift's MiniCPM-V 4.6 / 4.7 templates take the visual-token downsample mode from the
    DOWNSAMPLE_MODE environment variable (default "16x") and hand it to the processor and to the
    model's forward, overriding the checkpoint's config.json. A checkpoint made for "4x" (the tiny
    MiniCPM-V) would silently train with a quarter of its image tokens; this returns the config's mode.
    """
    import json
    from pathlib import Path

    from harness import archs

    config = json.loads((Path(model_dir) / "config.json").read_text())
    if archs.for_model_type(config.get("model_type", "")) in (archs.MINICPMV4_6, archs.MINICPMV4_7):
        return {"DOWNSAMPLE_MODE": config.get("downsample_mode", "16x")}
    return {}


def resize_for_grid(image, image_processor):
    """Resize to the processor's grid (multiples of patch x merge, within its pixel limits)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    factor = image_processor.patch_size * image_processor.merge_size
    size = image_processor.size
    h, w = smart_resize(image.height, image.width, factor=factor,
                        min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    return image if (w, h) == image.size else image.resize((w, h))


def register() -> None:
    """Idempotent: registers the model type and template once per process."""
    global _registered
    if _registered:
        return
    from PIL import Image
    from swift.model import ModelGroup, ModelMeta, register_model
    from swift.model.model_arch import ModelArch
    from swift.model.register import ModelLoader
    from swift.template import register_template
    from swift.template.templates.qwen import Qwen2VLTemplate, QwenTemplateMeta

    class TinyQwen2VLLoader(ModelLoader):
        # swift's default is True; lorabench never runs repository code unless the user asks.
        default_trust_remote_code = False

        def get_model(self, model_dir, config, processor, model_kwargs):
            from transformers import Qwen2VLForConditionalGeneration

            self.auto_model_cls = self.auto_model_cls or Qwen2VLForConditionalGeneration
            return super().get_model(model_dir, config, processor, model_kwargs)

    class TinyQwen2VLTemplate(Qwen2VLTemplate):
        def init_processor(self, processor) -> None:
            super().init_processor(processor)
            if processor is not None:
                tok = processor.tokenizer
                self.image_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
                self.video_token_id = tok.convert_tokens_to_ids("<|video_pad|>")

        def replace_tag(self, media_type, index, inputs):
            if media_type != "image":
                raise ValueError(f"{MODEL_TYPE} supports images only, got {media_type}")
            image = inputs.images[index]
            if not isinstance(image, Image.Image):
                image = Image.open(image)
            inputs.images[index] = resize_for_grid(image.convert("RGB"), self.processor.image_processor)
            return ["<|vision_start|><|image_pad|><|vision_end|>"]

    register_template(QwenTemplateMeta(TEMPLATE_TYPE, template_cls=TinyQwen2VLTemplate), exist_ok=True)
    register_model(
        ModelMeta(
            MODEL_TYPE,
            [ModelGroup([])],
            TinyQwen2VLLoader,
            template=TEMPLATE_TYPE,
            model_arch=ModelArch.qwen2_vl,
            architectures=["Qwen2VLForConditionalGeneration"],
            is_multimodal=True,
            tags=["vision"],
        ),
        exist_ok=True,
    )
    _registered = True


if __name__.startswith("_swift_external_"):
    # Loaded by swift's own CLI: `swift sft --custom_register_path adapters/swift_model.py
    # --model_type lorabench_tiny_qwen2_vl --model <dir> ...` registers the model type there too.
    register()
