"""Tiny random checkpoints of every family in harness.archs, and the worker tests/adapters/test_archs.py runs.

Each checkpoint is built from a config written here (1-2 layers, hidden sizes 32-64), with a
character-level tokenizer, the family's own processor and a chat template, saved as a normal Hugging
Face checkpoint directory that AutoProcessor / AutoModelForImageTextToText load offline. No
lorabench.json is written: these are "user" checkpoints, which ms-swift must handle with its own
model type and template for the family (lorabench registers its own type only for the embedded tiny
Qwen2-VL).

Token ids. ms-swift's Qwen-VL templates hard-code Qwen's real ids (`Qwen2VLTemplate.image_token_id =
151655`, `video_token_id = 151656`, swift/template/templates/qwen.py), so the Qwen tokenizers here put
Qwen's special tokens at their real ids (151643 <|endoftext|> ... 151656 <|video_pad|>, the values of
Qwen2VLConfig / Qwen3VLConfig's defaults) after the characters and unreachable placeholder tokens;
the vocabulary is just above them and the hidden size tiny. MiniCPM-V's templates read ids from the
tokenizer, so MiniCPM-V keeps the embedded tiny MiniCPM-V's small tokenizer.

Run as a script, it is one worker process for one framework over all families:
    python tests/arch_models.py peft ROOT [FAMILY...]   # builds the checkpoints and rows (ROOT/build.json),
                                                        # then the module-name facts and one PEFT step each
    python tests/arch_models.py swift ROOT [FAMILY...]  # swift's own maps, one ms-swift step each
(ms-swift patches transformers when imported: it never shares a process with PEFT.) Each writes
ROOT/<framework>.json; a family that fails records its error instead of stopping the others.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARCH_NAMES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "minicpmv4_6", "minicpmv4_7")

# Qwen's special tokens at their ids in the real Qwen2/2.5/3-VL vocabularies. The ones that matter are
# in the sources: image 151655 / video 151656 (swift's Qwen2VLTemplate, Qwen3VLConfig's defaults), vision
# start 151652 / end 151653 (Qwen3VLConfig), im_start 151644 / im_end 151645 (Qwen3OmniMoe's config);
# the grounding tokens in between complete Qwen's block of specials and are never used here.
QWEN_SPECIAL = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647, "<|box_start|>": 151648, "<|box_end|>": 151649, "<|quad_start|>": 151650,
    "<|quad_end|>": 151651, "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655, "<|video_pad|>": 151656,
}

# The training rows: two short answers of different lengths (so one row is padded), small images.
ROWS = (("What is written?", "cat 12"), ("Read the page.", "a dog ran"))
IMAGE_SIZE = (96, 64)  # width, height: 6 merged tokens on Qwen's 28 / 32 px grids


def _alphabet():
    from harness.tinymodel.architecture import alphabet_from_texts

    return alphabet_from_texts([])


def qwen_tokenizer(arch):
    """Characters at ids 0.., placeholders up to 151642, Qwen's special tokens at their real ids."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    from harness.chat import chat_template
    from harness.tinymodel.architecture import UNK

    vocab = {UNK: 0}
    for ch in _alphabet():
        vocab.setdefault(ch, len(vocab))
    first_special = min(QWEN_SPECIAL.values())
    for i in range(len(vocab), first_special):
        vocab[f"<|lorabench_unused_{i}|>"] = i  # never produced: BPE without merges reads characters only
    vocab.update(QWEN_SPECIAL)
    assert sorted(vocab.values()) == list(range(len(vocab)))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.decoder = decoders.Fuse()
    specials = [t for t in QWEN_SPECIAL if t != "<|endoftext|>"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=UNK, pad_token="<|endoftext|>", eos_token="<|im_end|>",
        additional_special_tokens=specials, model_max_length=4096, padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = chat_template(arch)
    return tok


def _qwen_text(tok, **extra):
    ids = QWEN_SPECIAL
    # hidden 32: the 151,657-token embedding (tied with the output layer) is most of the model
    return dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], **extra},
                bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])


def _qwen_ids():
    return dict(image_token_id=QWEN_SPECIAL["<|image_pad|>"], video_token_id=QWEN_SPECIAL["<|video_pad|>"],
                vision_start_token_id=QWEN_SPECIAL["<|vision_start|>"],
                vision_end_token_id=QWEN_SPECIAL["<|vision_end|>"])


def build_qwen2_vl():
    import transformers as tf

    from harness import archs

    tok = qwen_tokenizer(archs.QWEN2_VL)
    config = tf.Qwen2VLConfig(
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        text_config=_qwen_text(tok), tie_word_embeddings=True, **_qwen_ids())
    model = tf.Qwen2VLForConditionalGeneration(config)
    processor = tf.Qwen2VLProcessor(image_processor=tf.Qwen2VLImageProcessor(**_qwen_pixels(14)),
                                    video_processor=tf.Qwen2VLVideoProcessor(**_qwen_pixels(14)), tokenizer=tok,
                                    chat_template=tok.chat_template)
    return model, processor


def build_qwen2_5_vl():
    import transformers as tf

    from harness import archs

    tok = qwen_tokenizer(archs.QWEN2_5_VL)
    config = tf.Qwen2_5_VLConfig(
        # window_size 56 px = 2 x 2 merged tokens; block 1 attends in full, block 0 in windows
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        text_config=_qwen_text(tok), tie_word_embeddings=True, **_qwen_ids())
    model = tf.Qwen2_5_VLForConditionalGeneration(config)
    processor = tf.Qwen2_5_VLProcessor(image_processor=tf.Qwen2VLImageProcessor(**_qwen_pixels(14)),
                                       video_processor=tf.Qwen2VLVideoProcessor(**_qwen_pixels(14)), tokenizer=tok,
                                       chat_template=tok.chat_template)
    return model, processor


def build_qwen3_vl():
    import transformers as tf

    from harness import archs

    tok = qwen_tokenizer(archs.QWEN3_VL)
    text = _qwen_text(tok, mrope_interleaved=True)
    text["head_dim"] = 16
    config = tf.Qwen3VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[0]),
        text_config=text, tie_word_embeddings=True, **_qwen_ids())
    model = tf.Qwen3VLForConditionalGeneration(config)
    processor = tf.Qwen3VLProcessor(image_processor=tf.Qwen2VLImageProcessor(**_qwen_pixels(16)),
                                    video_processor=tf.Qwen3VLVideoProcessor(**_qwen_pixels(16)), tokenizer=tok,
                                    chat_template=tok.chat_template)
    return model, processor


def _qwen_pixels(patch: int) -> dict:
    """4 to 16 merged tokens an image."""
    factor = patch * 2
    return dict(patch_size=patch, merge_size=2, temporal_patch_size=2,
                size={"shortest_edge": factor * factor * 4, "longest_edge": factor * factor * 16})


# MiniCPM-V: every image is resized to an area of SCALE^2 with sides rounded to 4 patches (56 px):
# 112 x 112 px, 8 x 8 patches: 16 language-model tokens in "4x" mode, 4 in "16x".
MINICPMV_PATCH = 14
MINICPMV_SCALE = 112


def build_minicpmv(version: str):
    import transformers as tf

    from harness.tinymodel import minicpmv

    tok = minicpmv.build_tokenizer(_alphabet())  # MiniCPM-V's special tokens and extra_special_tokens mapping
    ids = {t: tok.convert_tokens_to_ids(t) for t in minicpmv.SPECIAL_TOKENS}
    # 4.6 in "4x" mode (no window merger, as the embedded tiny MiniCPM-V), 4.7 in the default "16x"
    mode = "4x" if version == "4_6" else "16x"
    common = dict(patch_size=MINICPMV_PATCH, scale_resolution=MINICPMV_SCALE, slice_mode=False,
                  downsample_mode=mode, max_slice_nums=1)
    kwargs = dict(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=MINICPMV_PATCH, image_size=MINICPMV_PATCH * 8, window_kernel_size=(2, 2)),
        text_config=dict(model_type="qwen3_5_text", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                         layer_types=["full_attention"] * 2, max_position_embeddings=2048,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        insert_layer_id=0, image_size=MINICPMV_SCALE, downsample_mode=mode, merge_kernel_size=(2, 2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"], tie_word_embeddings=False,
    )
    if version == "4_6":
        config = tf.MiniCPMV4_6Config(**kwargs)
        model = tf.MiniCPMV4_6ForConditionalGeneration(config)
        processor_cls = tf.MiniCPMV4_6Processor
    else:
        # canvas M-RoPE pins these markers (MiniCPMV4_7Config: "required for image or video inputs")
        config = tf.MiniCPMV4_7Config(**kwargs, image_start_id=ids["<image>"], image_end_id=ids["</image>"],
                                      slice_start_id=ids["<slice>"], slice_end_id=ids["</slice>"],
                                      newline_id=tok.convert_tokens_to_ids("\n"))
        model = tf.MiniCPMV4_7ForConditionalGeneration(config)
        processor_cls = tf.MiniCPMV4_7Processor
    processor = processor_cls(image_processor=tf.MiniCPMV4_6ImageProcessor(**common),
                              video_processor=tf.MiniCPMV4_6VideoProcessor(**common), tokenizer=tok,
                              chat_template=tok.chat_template)
    return model, processor


BUILDERS = {
    "qwen2_vl": build_qwen2_vl, "qwen2_5_vl": build_qwen2_5_vl, "qwen3_vl": build_qwen3_vl,
    "minicpmv4_6": lambda: build_minicpmv("4_6"), "minicpmv4_7": lambda: build_minicpmv("4_7"),
}


def model_dir(root: Path, name: str) -> Path:
    # a neutral name: swift must find the model type from config.json, not from a hub model's name
    return root / "models" / f"tiny-{name}"


def build(root: Path) -> dict:
    """Every checkpoint and the training rows under `root`; returns {family: dir} plus 'train_jsonl'."""
    import torch
    from PIL import Image, ImageDraw

    out = {}
    for name in ARCH_NAMES:
        path = model_dir(root, name)
        if not (path / "config.json").is_file():
            torch.manual_seed(0)
            model, processor = BUILDERS[name]()
            model.generation_config.eos_token_id = model.config.get_text_config().eos_token_id
            model.generation_config.pad_token_id = model.config.get_text_config().pad_token_id
            path.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(path, safe_serialization=True)
            processor.save_pretrained(path)
        out[name] = str(path)
    rows = []
    for i, (prompt, answer) in enumerate(ROWS):
        image = Image.new("RGB", IMAGE_SIZE, "white")
        ImageDraw.Draw(image).text((4, 20 + 8 * i), answer, fill="black")
        image_path = root / "images" / f"row{i}.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        image.save(image_path)
        rows.append({"id": f"row{i}", "messages": [{"role": "user", "content": "<image>" + prompt},
                                                   {"role": "assistant", "content": answer}],
                     "images": [str(image_path.resolve())]})
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out["train_jsonl"] = str(train)
    return out


def train_spec(path: str) -> dict:
    """One step on both rows, LoRA on the language model's and the vision tower's Linear layers.

    (The vision tower stays frozen: with `train.freeze_vision: false` its modules are trained in full as
    `modules_to_save`, and PEFT never puts LoRA inside a module to save, so no vision target would be left
    to compare.)"""
    from harness.config.spec import make_spec

    return make_spec({"model": path, "dataset": "synthdocs-mini", "task": "extract",
                      "lora": {"targets": "lm+vision-linear"},
                      "train": {"steps": 1, "batch_size": 2, "grad_accum": 1, "max_length": 1024},
                      "eval": {"enabled": False}})


def module_facts(path: str, train_jsonl: str) -> dict:
    """Names the test checks the presets against, read from the loaded model (no framework involved)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from adapters import chat_data, lora_setup
    from harness import archs, chat, lora_targets

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(path)
    arch = archs.for_model(model)
    tok = processor.tokenizer
    rows = chat_data.read_jsonl(Path(train_jsonl))
    batch = chat_data.ChatCollator(processor, arch.default_system, "answer", 1024, arch)(rows)
    answers = [len(tok(chat.build_answer(r["messages"][1]["content"]), add_special_tokens=False).input_ids)
               for r in rows]
    return {
        "arch": arch.name,
        "model_class": type(model).__name__,
        "processor_class": type(processor).__name__,
        "modules": [n for n, _ in model.named_modules()],
        "linears": [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)],
        "params": [n for n, _ in model.named_parameters()],
        "presets": {p: lora_targets.resolve_targets(model, p) for p in lora_targets.TARGET_PRESETS},
        "vision_full": lora_setup.vision_modules_to_save(model),
        "image_token_id": tok.convert_tokens_to_ids(arch.image_token),
        "config_image_token_id": model.config.image_token_id,
        # what the swift adapter resolves on a meta-device copy built from config.json alone
        "swift_adapter_targets": _swift_adapter_targets(path, train_jsonl),
        "collator": {"supervised": [int((row != -100).sum()) for row in batch["labels"]], "answers": answers,
                     "image_tokens": int((batch["input_ids"] == model.config.image_token_id).sum()),
                     "first_mask_column": batch["attention_mask"][:, 0].tolist()},
    }


def _swift_adapter_targets(path: str, train_jsonl: str) -> list[str]:
    """The targets the swift adapter passes (resolved on a meta-device copy, as it resolves them)."""
    from adapters.lora_setup import meta_targets  # imports no swift

    return meta_targets(train_spec(path), Path(path))[0]


def swift_meta(name: str) -> dict:
    """ms-swift's own map for the family: its model type's module keys and its template's chat settings."""
    from swift.model import MODEL_MAPPING
    from swift.template import TEMPLATE_MAPPING

    model_arch = MODEL_MAPPING[name].model_arch
    meta = TEMPLATE_MAPPING[name]
    return {"language_model": list(model_arch.language_model), "vision_tower": list(model_arch.vision_tower),
            "aligner": list(model_arch.aligner), "default_system": meta.default_system,
            "is_thinking": meta.is_thinking, "non_thinking_prefix": meta.non_thinking_prefix,
            "template_cls": meta.template_cls.__name__,
            "image_token_id": getattr(meta.template_cls, "image_token_id", None)}


def _error(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}"[:2000] + where


def train_one(framework: str, root: Path, name: str, paths: dict) -> dict:
    import math
    import time

    import adapters
    from adapters.base import Hooks, TrainData

    out_dir = root / "runs" / framework / name
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = train_spec(paths[name])
    data = TrainData(Path(paths[name]), Path(paths["train_jsonl"]), len(ROWS))
    t0 = time.perf_counter()
    outcome = adapters.get(framework).train(spec, data, out_dir, Hooks())
    losses = [s["loss"] for s in outcome.steps]
    used = {}
    if (out_dir / "sft_args.json").is_file():  # the model type and template swift resolved
        sft_args = json.loads((out_dir / "sft_args.json").read_text())
        used = {"model_type": sft_args.get("model_type"), "template": sft_args.get("template")}
    return {"ok": True, "steps": len(outcome.steps), "losses": losses, "swift_used": used,
            "finite": bool(losses) and all(math.isfinite(x) for x in losses),
            "effective": {k: v for k, v in outcome.effective.items() if isinstance(v, (int, float, str, bool))
                          or v is None},
            "adapter_saved": (outcome.adapter_dir / "adapter_model.safetensors").is_file(),
            "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str]) -> int:
    command, root = argv[0], Path(argv[1])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root.mkdir(parents=True, exist_ok=True)
    if command == "peft":
        (root / "build.json").write_text(json.dumps(build(root), indent=1))
    paths = json.loads((root / "build.json").read_text())
    result = {}
    for name in argv[2:] or ARCH_NAMES:
        entry: dict = {}
        try:
            if command == "peft":
                entry["facts"] = module_facts(paths[name], paths["train_jsonl"])
            else:
                entry["swift_meta"] = swift_meta(name)
            entry.update(train_one(command, root, name, paths))
        except Exception as exc:  # recorded: the test decides what a failure means
            entry.update(ok=False, error=_error(exc))
            traceback.print_exc()
        result[name] = entry
    (root / f"{command}.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
