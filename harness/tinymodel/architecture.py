"""The embedded tiny model: a Qwen2-VL-architecture checkpoint built from a config, offline.

`build_untrained(dir, alphabet, preset)` writes a normal Hugging Face checkpoint directory (config,
safetensors, a character-level tokenizer, an image processor with small pixel limits, and the chat
template) that `Qwen2VLForConditionalGeneration.from_pretrained` and `AutoProcessor` load offline.
Pre-training lives in `harness.tinymodel.forge`.

Why character level: the vision grid puts about one character under each merged token (see
`harness.data.pages`), and a character vocabulary of ~110 keeps the output layer tiny. The alphabet is
learned from the dataset's text (plus printable ASCII so users' text never falls on <unk>).
"""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path

from harness.chat import CHAT_TEMPLATE, SPECIAL_TOKENS
from harness.data.pages import ROW_PX, TOKEN_PX

UNK = "<|unk|>"


@dataclasses.dataclass(frozen=True)
class TinyPreset:
    """Shapes of the embedded model. `tiny` (~2.2 M params) is the size that learnt to read in minutes on
    2 CPU cores."""

    vision_embed_dim: int = 128
    vision_depth: int = 3
    vision_heads: int = 4
    patch_size: int = 8
    merge_size: int = 2
    temporal_patch_size: int = 2
    hidden_size: int = 192
    layers: int = 3
    heads: int = 6
    kv_heads: int = 2
    intermediate_size: int = 512
    mrope_section: tuple = (4, 6, 6)  # sums to head_dim / 2 = 16

    def __post_init__(self):
        assert self.patch_size * self.merge_size == TOKEN_PX, "the render grid assumes 16 px tokens"


PRESETS = {"tiny": TinyPreset()}


def alphabet_from_texts(texts) -> list[str]:
    """Every character seen in `texts`, plus printable ASCII (and newline), sorted: the vocabulary."""
    chars = set(string.printable) - set("\t\r\x0b\x0c")
    for t in texts:
        chars.update(t)
    return sorted(chars)


def build_tokenizer(alphabet: list[str], special_tokens=SPECIAL_TOKENS, extra_special_tokens: dict | None = None,
                    chat_template: str = CHAT_TEMPLATE):
    """A character-level fast tokenizer with the family's special tokens at ids 0.. (Qwen2-VL's by
    default); `extra_special_tokens` names the ones a processor reads as attributes (MiniCPM-V's)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(special_tokens)}
    vocab[UNK] = len(vocab)
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    # BPE with no merges = one token per character; Fuse() decodes by plain concatenation.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.decoder = decoders.Fuse()
    extra = {"extra_special_tokens": extra_special_tokens} if extra_special_tokens else {}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=UNK, pad_token="<|endoftext|>", eos_token="<|im_end|>",
        additional_special_tokens=list(special_tokens[1:]), model_max_length=4096,
        padding_side="left", clean_up_tokenization_spaces=False, **extra,
    )
    tok.chat_template = chat_template
    return tok


def build_processor(tokenizer, preset: TinyPreset):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    # Pixel limits: 1 to 32 text rows of a 640 px page; pages are never resized inside these.
    limits = {"shortest_edge": TOKEN_PX * TOKEN_PX * 4, "longest_edge": 640 * ROW_PX * 32}
    common = dict(patch_size=preset.patch_size, merge_size=preset.merge_size,
                  temporal_patch_size=preset.temporal_patch_size, size=limits)
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**common),
        video_processor=Qwen2VLVideoProcessor(**common),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer, preset: TinyPreset):
    from transformers import Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = preset.hidden_size // preset.heads
    assert sum(preset.mrope_section) * 2 == head_dim, "mrope sections must cover head_dim / 2"
    return Qwen2VLConfig(
        vision_config=dict(
            depth=preset.vision_depth, embed_dim=preset.vision_embed_dim, hidden_size=preset.hidden_size,
            num_heads=preset.vision_heads, mlp_ratio=4, patch_size=preset.patch_size,
            spatial_merge_size=preset.merge_size, temporal_patch_size=preset.temporal_patch_size,
        ),
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=preset.hidden_size,
            intermediate_size=preset.intermediate_size, num_hidden_layers=preset.layers,
            num_attention_heads=preset.heads, num_key_value_heads=preset.kv_heads,
            max_position_embeddings=4096, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": list(preset.mrope_section)},
            bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def build_untrained(alphabet: list[str], preset: TinyPreset, seed: int):
    """(model, processor) with freshly initialised weights, deterministic for `seed`."""
    from transformers import Qwen2VLForConditionalGeneration

    tokenizer = build_tokenizer(alphabet)
    processor = build_processor(tokenizer, preset)
    return instantiate(Qwen2VLForConditionalGeneration, build_config(tokenizer, preset), seed), processor


def instantiate(model_cls, config, seed: int):
    """A model of `model_cls` with fresh weights drawn after seeding, generating until <|im_end|>."""
    import torch

    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model


def param_counts(model) -> dict[str, int]:
    """Parameters of the vision tower, the projector (merger) and the language model (harness.archs)."""
    from harness import archs

    arch = archs.for_model(model)
    counts = {"vision_tower": 0, "projector": 0, "language_model": 0}
    for name, p in model.named_parameters():
        part = "projector" if arch.is_projector(name) else "vision_tower" if arch.is_vision(name) else "language_model"
        counts[part] += p.numel()
    counts["total"] = sum(counts.values())
    return counts


def save_checkpoint(model, processor, out_dir: Path, extra: dict | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    if extra:
        (out_dir / "lorabench.json").write_text(json.dumps(extra, indent=2, sort_keys=True) + "\n")
