"""The embedded tiny MiniCPM-V: a MiniCPM-V-4.6-architecture checkpoint built from a config, offline.

transformers' `MiniCPMV4_6ForConditionalGeneration` with every part of the real model, made tiny: a
SigLIP-style vision encoder, the window-attention merger, the downsampling merger into the language
model, and a Qwen3.5 text backbone with full attention in every layer (the real model mixes in
linear-attention layers; full attention keeps the tiny one on plain PyTorch kernels). Same character
tokenizer as the tiny Qwen2-VL, with MiniCPM-V's special tokens, and MiniCPM-V's own processor.

The reading geometry is the tiny Qwen2-VL's: 8 px patches, merged 2 x 2 (MiniCPM-V's own merge
kernel) into one language-model token per 16 px cell of the page grid, one character each; the
forge's reading head reads the merger's output. (A first build used 16 px patches merged 1 x 4, four
characters a token: after 1,800 steps it read at CER 0.85, where the tiny Qwen2-VL, one character a
token, read at 0.15 after 2,000.)

It runs in MiniCPM-V 4.6's "4x" downsample mode (`downsample_mode` in config.json and in the image
processor), which skips the window-attention merger: the downsampling merger alone makes the 2 x 2
merge. Why not "16x": outside flash attention, transformers runs the window merger's
attention one 2 x 2 window at a time, about 3,000 attention calls a batch, 18 s a step on 2 CPU
cores, against about 1 s without it. The window merger's weights are in the checkpoint, unused in
this mode, as in the real model's 4x mode. ms-swift's `minicpmv4_6` template reads the mode from the
`DOWNSAMPLE_MODE` environment variable (default 16x) rather than from the checkpoint; the swift
adapter sets it from config.json.

MiniCPM-V's image processor resizes every image (without slicing) to an area of
`scale_resolution`^2, whatever its size. A 640 x 128 canvas is a fixed point of that resize at
scale_resolution 286 (the processor rounds sides to multiples of 4 patches, 32 px), so pages are
padded with white to the canvas (`IMAGE_CANVAS`, recorded in lorabench.json) and never rescaled: the
dataset's pages are 4 to 8 rows of 16 px.
"""

from __future__ import annotations

import dataclasses

from harness.archs import MINICPMV4_6
from harness.chat import chat_template
from harness.data.pages import ROW_PX
from harness.tinymodel import architecture as tiny_qwen
# the family API build.py calls, shared with the tiny Qwen2-VL
from harness.tinymodel.architecture import alphabet_from_texts, param_counts, save_checkpoint  # noqa: F401

IMAGE_CANVAS = (640, 128)  # width, height in px: 8 rows of the 16 px grid
# The forge's curriculum (pages of 1-2 rows) starts on a 2-row canvas, fed at that size: the vision
# tower takes any size, only the processor's resize fixes the area, and `curriculum_canvas` passes the
# resolution that keeps 640 x 32 unscaled. A batch then holds as many text lines as the tiny
# Qwen2-VL's (18-36, against 4-8 on the 8-row canvas). Measured on the language model's loss per
# answer line: on the 8-row canvas from the start it learnt to copy a page's first line and never the
# second (chance, ln 80 = 4.4, through step 2,200); on the 2-row canvas the second line fell to
# 1.1-2.0 nats a character by step 1,200 and the read loss to 0.05 by step 1,600. Moving to the
# 8-row canvas costs about 200 steps of 1-2-row pages to re-learn (loss 5.0 -> 0.38: the vision
# tower's position embeddings stretch over each image, so a row looks different on a taller
# image); a switch straight to full pages lost the second line again. So the curriculum's last
# CANVAS_CURRICULUM_STEPS steps are on the 8-row canvas.
CURRICULUM_ROWS = 2
CANVAS_CURRICULUM_STEPS = 300
SCALE_RESOLUTION = 286  # int(286 / sqrt(5)) = 127 -> 128, 635 -> 640 after rounding to 64 px: the identity
DOWNSAMPLE_MODE = "4x"
SPECIAL_TOKENS = (  # ids 0..12, in this order
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<image>", "</image>",
    "<slice>", "</slice>", "<image_id>", "</image_id>", "<think>", "</think>",
)
# The tokenizer attributes MiniCPMV4_6Processor reads (the real checkpoint's tokenizer_config names them).
EXTRA_SPECIAL_TOKENS = {
    "image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "image_start_token": "<image>",
    "image_end_token": "</image>", "slice_start_token": "<slice>", "slice_end_token": "</slice>",
    "image_id_start_token": "<image_id>", "image_id_end_token": "</image_id>",
}


@dataclasses.dataclass(frozen=True)
class TinyMiniCPMVPreset:
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    vision_intermediate: int = 256  # the window merger's MLP is 4x this wide
    patch_size: int = 8  # 2 x 2 patches per cell of the page grid
    position_grid: int = 40  # vision position embeddings: a 40 x 40 grid, stretched over each image
    hidden_size: int = 192
    layers: int = 3
    heads: int = 6
    kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 512


PRESETS = {"tiny": TinyMiniCPMVPreset()}


def build_tokenizer(alphabet: list[str]):
    return tiny_qwen.build_tokenizer(alphabet, SPECIAL_TOKENS, EXTRA_SPECIAL_TOKENS, chat_template(MINICPMV4_6))


def build_processor(tokenizer, preset: TinyMiniCPMVPreset):
    from transformers import MiniCPMV4_6ImageProcessor, MiniCPMV4_6Processor, MiniCPMV4_6VideoProcessor

    common = dict(patch_size=preset.patch_size, scale_resolution=SCALE_RESOLUTION, slice_mode=False,
                  downsample_mode=DOWNSAMPLE_MODE, max_slice_nums=1)
    return MiniCPMV4_6Processor(
        image_processor=MiniCPMV4_6ImageProcessor(**common),
        video_processor=MiniCPMV4_6VideoProcessor(**common),
        tokenizer=tokenizer, chat_template=chat_template(MINICPMV4_6),
    )


def build_config(tokenizer, preset: TinyMiniCPMVPreset):
    from transformers import MiniCPMV4_6Config

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return MiniCPMV4_6Config(
        vision_config=dict(
            hidden_size=preset.vision_hidden, intermediate_size=preset.vision_intermediate,
            num_hidden_layers=preset.vision_layers, num_attention_heads=preset.vision_heads,
            patch_size=preset.patch_size, image_size=preset.patch_size * preset.position_grid,
            window_kernel_size=(2, 2),
        ),
        text_config=dict(
            model_type="qwen3_5_text", vocab_size=len(tokenizer), hidden_size=preset.hidden_size,
            intermediate_size=preset.intermediate_size, num_hidden_layers=preset.layers,
            num_attention_heads=preset.heads, num_key_value_heads=preset.kv_heads, head_dim=preset.head_dim,
            layer_types=["full_attention"] * preset.layers, max_position_embeddings=4096,
            tie_word_embeddings=False, bos_token_id=None, eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        insert_layer_id=1, image_size=SCALE_RESOLUTION, downsample_mode=DOWNSAMPLE_MODE, merge_kernel_size=(2, 2),
        # tie_word_embeddings False: as MiniCPM-V 4.6 (its own lm_head)
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"], tie_word_embeddings=False,
    )


def build_untrained(alphabet: list[str], preset: TinyMiniCPMVPreset, seed: int):
    """(model, processor) with freshly initialised weights, deterministic for `seed`."""
    from transformers import MiniCPMV4_6ForConditionalGeneration

    tokenizer = build_tokenizer(alphabet)
    processor = build_processor(tokenizer, preset)
    return tiny_qwen.instantiate(MiniCPMV4_6ForConditionalGeneration, build_config(tokenizer, preset), seed), processor


def unscaled_resolution(image_processor, size: tuple[int, int]) -> int:
    """The `scale_resolution` at which the processor's resize keeps an image of `size` (width, height)
    as it is; ValueError when no integer resolution does."""
    width, height = size
    guess = int((width * height) ** 0.5)
    for resolution in range(max(1, guess - 8), guess + 9):
        if image_processor.find_best_resize((height, width), resolution, image_processor.patch_size,
                                            allow_upscale=True) == (height, width):
            return resolution
    raise ValueError(f"no scale_resolution keeps a {width}x{height} image unscaled")


def small_canvas_steps(curriculum_steps: int) -> int:
    """How many of the curriculum's first steps run on the small canvas (the rest on IMAGE_CANVAS)."""
    return max(0, curriculum_steps - CANVAS_CURRICULUM_STEPS)


def curriculum_canvas(processor, curriculum_steps: int) -> tuple[tuple[int, int], dict, int]:
    """The forge curriculum's small canvas, the processor kwargs that feed it unscaled, and the last
    step on it (the curriculum's remaining steps are on IMAGE_CANVAS)."""
    size = (IMAGE_CANVAS[0], CURRICULUM_ROWS * ROW_PX)
    kwargs = {"scale_resolution": unscaled_resolution(processor.image_processor, size)}
    return size, kwargs, small_canvas_steps(curriculum_steps)
