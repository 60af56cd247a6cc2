"""Model shapes for the memory planner: a model's architecture as numbers, no weights needed.

A `Shape` holds, per tower (vision, projector, language model), the LoRA-targetable linear layers of
one block, the other parameters, and the image-token rule. Shipped shapes are JSON files in
`harness/planner/shapes/` (`load_shape`, `builtin_shape`); a local Hugging Face checkpoint directory
(its `config.json`: Qwen2-VL, Qwen2.5-VL, Qwen3-VL, MiniCPM-V 4.6 and 4.7; e.g. the embedded tiny model)
becomes a Shape through `harness.planner.hf_shape.shape_from_hf_config`, which builds the model on
the meta device and reads every count off it. The shipped files are that function's output for their source configs.

Units: counts are parameters.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

from harness.errors import UserError

SHAPES_DIR = Path(__file__).with_name("shapes")
BUILTIN_SHAPES = ("minicpm-v-2_6", "minicpm-v-4_6", "minicpm-v-4_7-1b", "qwen2-vl-7b", "qwen2-vl-2b", "qwen3-vl-2b")
TARGET_SETS = ("lm", "lm-attention", "lm+vision", "all-linear")
# lorabench's `lora.targets` presets -> the planner's target sets; SPEC_TARGETS also reads the old names
TARGET_PRESETS = {"lm-linear": "lm", "lm-attention": "lm-attention", "lm+vision-linear": "lm+vision",
                  "every-linear": "all-linear"}
SPEC_TARGETS = {**TARGET_PRESETS, **{name: name for name in TARGET_SETS}}
# the target sets that put LoRA on the language model alone
LM_ONLY_TARGETS = ("lm", "lm-attention")
# `lm-attention`: the language model's attention projections (MiniCPM-V's official LoRA regex); a hybrid
# LM's linear-attention layers have none of these names
ATTENTION_PROJECTION = re.compile(r"(^|\.)self_attn\.(q|k|v|o)_proj$")


def lm_lora_filter(targets: str):
    """Which of the language model's linears a target set puts LoRA on: None for all of them."""
    if targets == "lm-attention":
        return lambda linear: bool(ATTENTION_PROJECTION.search(linear.name))
    return None


@dataclasses.dataclass(frozen=True)
class Linear:
    """One nn.Linear: `in_features -> out_features`, with or without bias."""

    name: str
    in_features: int
    out_features: int
    bias: bool

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)

    def lora_params(self, r: int) -> int:
        """LoRA adds A (r x in) and B (out x r): r * (in + out) parameters."""
        return r * (self.in_features + self.out_features)


@dataclasses.dataclass(frozen=True)
class Tower:
    """One part of the model: `layers` identical blocks plus parts outside the blocks.

    params = layers * (sum(block_linears) + block_other_params) + sum(linears) + other_params.
    `block_linears` and `block_other_params` are what every block has; `linears` are the other
    Linear layers of the tower (outside the blocks, e.g. Qwen2-VL's merger MLP, or in some blocks
    only, e.g. the two attention kinds of a hybrid LM); `other_params` are everything else
    (embeddings, lm_head, norms, patch conv, ...). The width fields feed the activation formula; a
    projector leaves them 0.
    """

    hidden: int = 0
    layers: int = 0
    intermediate: int = 0
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    block_linears: tuple[Linear, ...] = ()
    block_other_params: int = 0
    linears: tuple[Linear, ...] = ()
    other_params: int = 0
    largest_module_params: int = 0  # the biggest single module ZeRO-3 must gather at once

    @property
    def params(self) -> int:
        return (self.layers * (sum(l.params for l in self.block_linears) + self.block_other_params)
                + sum(l.params for l in self.linears) + self.other_params)

    def lora_linears(self, only=None) -> tuple[tuple[Linear, ...], tuple[Linear, ...]]:
        """(block linears, other linears) that get LoRA: all, or those `only(linear)` selects."""
        if only is None:
            return self.block_linears, self.linears
        return tuple(filter(only, self.block_linears)), tuple(filter(only, self.linears))

    def lora_params(self, r: int, only=None) -> int:
        """LoRA on every Linear of the tower, or on those `only(linear)` selects."""
        block, other = self.lora_linears(only)
        return self.layers * sum(l.lora_params(r) for l in block) + sum(l.lora_params(r) for l in other)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        """Width of the attention's queries and output: heads x head_dim (the hidden size unless the
        config sets head_dim apart)."""
        return self.heads * self.head_dim if self.heads and self.head_dim else self.hidden


@dataclasses.dataclass(frozen=True)
class ImageTokens:
    """How many LM tokens an image costs, and how many ViT patches stand behind them.

    mode "slices" (MiniCPM-V): each slice of up to patches_per_slice patches becomes tokens_per_slice
    resampler queries; the ViT attends within a slice. mode "merge" (Qwen2-VL): merge x merge patches
    become one token; the ViT attends over the whole image.
    """

    mode: str
    default_per_sample: int
    tokens_per_slice: int = 0
    patches_per_slice: int = 0
    max_slices: int = 0
    spatial_merge: int = 0
    formula: str = ""

    def vision_groups(self, image_tokens: int) -> tuple[int, int]:
        """-> (patches per attention group, groups per sample) for `image_tokens` LM tokens."""
        if image_tokens <= 0:
            return 0, 0
        if self.mode == "slices":
            return self.patches_per_slice, math.ceil(image_tokens / self.tokens_per_slice)
        return image_tokens * self.spatial_merge**2, 1


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    vision: Tower
    projector: Tower
    language_model: Tower
    vocab: int
    tied_embeddings: bool
    image_tokens: ImageTokens
    source: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def total_params(self) -> int:
        return self.vision.params + self.projector.params + self.language_model.params

    @property
    def largest_module_params(self) -> int:
        return max(self.vision.largest_module_params, self.projector.largest_module_params,
                   self.language_model.largest_module_params)

    def lora_params(self, targets: str, r: int) -> int:
        """LoRA parameters for a target set (see TARGET_SETS):
        lm: every Linear of the language model (q,k,v,o,gate,up,down of each block; ms-swift's
        all-linear); lm-attention: its attention projections q,k,v,o only; lm+vision: plus every
        Linear of the vision tower (not the projector);
        all-linear: plus the projector's linears (PEFT's all-linear: every nn.Linear but lm_head)."""
        if targets not in TARGET_SETS:
            raise ValueError(f"targets must be one of {', '.join(TARGET_SETS)}, got {targets!r}")
        n = self.language_model.lora_params(r, lm_lora_filter(targets))
        if targets in ("lm+vision", "all-linear"):
            n += self.vision.lora_params(r)
        if targets == "all-linear":
            n += self.projector.lora_params(r)
        return n


def _linear_from_json(d: dict) -> Linear:
    return Linear(d["name"], int(d["in"]), int(d["out"]), bool(d["bias"]))


def _linear_to_json(l: Linear) -> dict:
    return {"name": l.name, "in": l.in_features, "out": l.out_features, "bias": l.bias}


_TOWER_INTS = ("hidden", "layers", "intermediate", "heads", "kv_heads", "head_dim",
               "block_other_params", "other_params", "largest_module_params")


def _tower_from_json(d: dict, where: str) -> Tower:
    unknown = set(d) - set(_TOWER_INTS) - {"block_linears", "linears", "params", "note"}
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    tower = Tower(**{k: int(d.get(k, 0)) for k in _TOWER_INTS},
                  block_linears=tuple(_linear_from_json(x) for x in d.get("block_linears", ())),
                  linears=tuple(_linear_from_json(x) for x in d.get("linears", ())))
    # The stated total is a checksum on the hand-written parts: they must add up.
    if "params" in d and int(d["params"]) != tower.params:
        raise UserError(f"{where}: params says {d['params']} but the parts add up to {tower.params}")
    return tower


def _tower_to_json(t: Tower, note: str = "") -> dict:
    d = {k: getattr(t, k) for k in _TOWER_INTS if getattr(t, k)}
    d["block_linears"] = [_linear_to_json(l) for l in t.block_linears]
    d["linears"] = [_linear_to_json(l) for l in t.linears]
    d["params"] = t.params
    if note:
        d["note"] = note
    return d


def shape_from_dict(d: dict, where: str = "shape") -> Shape:
    """Build a Shape from the JSON layout of harness/planner/shapes/*.json; errors name `where` and the key."""
    try:
        lm = d["language_model"]
        return Shape(
            name=str(d["name"]),
            vision=_tower_from_json(d["vision"], f"{where}: vision"),
            projector=_tower_from_json(d["projector"], f"{where}: projector"),
            language_model=_tower_from_json({k: v for k, v in lm.items()
                                             if k not in ("vocab", "tied_embeddings")},
                                            f"{where}: language_model"),
            vocab=int(lm["vocab"]),
            tied_embeddings=bool(lm["tied_embeddings"]),
            image_tokens=ImageTokens(**d["image_tokens"]),
            source=d.get("source", {}),
        )
    except KeyError as exc:
        raise UserError(f"{where}: missing key {exc.args[0]!r}") from None
    except TypeError as exc:  # ImageTokens(**...) with an unknown key
        raise UserError(f"{where}: {exc}") from None


def shape_to_dict(shape: Shape, notes: dict | None = None) -> dict:
    """The inverse of `shape_from_dict` (what the shipped JSON files hold)."""
    notes = notes or {}
    lm = _tower_to_json(shape.language_model, notes.get("language_model", ""))
    lm.update(vocab=shape.vocab, tied_embeddings=shape.tied_embeddings)
    return {
        "name": shape.name,
        "source": shape.source,
        "total_params": shape.total_params,
        "vision": _tower_to_json(shape.vision, notes.get("vision", "")),
        "projector": _tower_to_json(shape.projector, notes.get("projector", "")),
        "language_model": lm,
        "image_tokens": dataclasses.asdict(shape.image_tokens),
    }


def load_shape(path: str | Path) -> Shape:
    """Load a shape JSON file; a missing or malformed file raises UserError naming it."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such shape file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    shape = shape_from_dict(d, str(path))
    if "total_params" in d and int(d["total_params"]) != shape.total_params:
        raise UserError(f"{path}: total_params says {d['total_params']} but the towers add up "
                        f"to {shape.total_params}")
    return shape


def builtin_shape(name: str) -> Shape:
    if name not in BUILTIN_SHAPES:
        raise UserError(f"unknown model {name!r}; valid names: {', '.join(BUILTIN_SHAPES)} "
                        "(or a path to a shape JSON or to a Hugging Face model directory)")
    return load_shape(SHAPES_DIR / f"{name}.json")


def qwen2_vl_image_tokens(height_px: int, width_px: int, min_pixels: int = 56 * 56,
                          max_pixels: int = 1280 * 28 * 28, factor: int = 28) -> int:
    """LM tokens for one image in Qwen2-VL: (H/28) * (W/28) after the processor's `smart_resize`
    (round H and W to multiples of 28, then scale into [min_pixels, max_pixels] keeping aspect).
    The default max_pixels is the model card's recommended 1280*28*28 (the processor allows more)."""
    h = max(factor, round(height_px / factor) * factor)
    w = max(factor, round(width_px / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height_px * width_px / max_pixels)
        h = math.floor(height_px / beta / factor) * factor
        w = math.floor(width_px / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height_px * width_px))
        h = math.ceil(height_px * beta / factor) * factor
        w = math.ceil(width_px * beta / factor) * factor
    return (h // factor) * (w // factor)
